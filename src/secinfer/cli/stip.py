"""STIP commands: ``secinfer stip transform | provision | serve | query``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stip", help="permutation-protected transformer inference (STIP)")
    s = p.add_subparsers(dest="stip_command", required=True, metavar="STEP")

    t = s.add_parser("transform", help="owner: permute a Hugging Face model's weights")
    t.add_argument("--model", required=True, type=Path, help="local Hugging Face model folder")
    t.add_argument("--class", dest="model_class", default=None,
                   help="transformers class (default: the config's first architecture)")
    t.add_argument("--cloud-out", required=True, type=Path, help="folder for the cloud")
    t.add_argument("--key-out", required=True, type=Path, help="folder for the user")
    t.add_argument("--force", action="store_true", help="overwrite existing artifacts")
    t.set_defaults(handler=_transform)

    v = s.add_parser("provision",
                     help="send (owner) or receive (cloud, user) the artifacts over TLS")
    _party(v)
    v.add_argument("--cloud-dir", type=Path, help="owner: the cloud's folder to send")
    v.add_argument("--key-dir", type=Path, help="owner: the user's folder to send")
    v.add_argument("--out", type=Path, help="cloud/user: folder to receive into")
    v.set_defaults(handler=_provision)

    r = s.add_parser("serve", help="cloud: serve the transformed model to the user over TLS")
    _party(r)
    r.add_argument("--model", required=True, type=Path, help="the cloud's folder")
    r.add_argument("--sessions", type=int, default=None, help="stop after N sessions")
    r.set_defaults(handler=_serve)

    q = s.add_parser("query", help="user: embed, permute, send, un-permute")
    _party(q)
    q.add_argument("--key", required=True, type=Path, help="the user's key folder")
    q.add_argument("--cloud", type=int, default=None, help="the cloud's party id (default: role)")
    q.add_argument("--input-ids", default=None, help="comma-separated token ids")
    q.add_argument("--text", default=None, help="text to tokenize with --tokenizer")
    q.add_argument("--tokenizer", type=Path, default=None, help="local tokenizer folder")
    q.add_argument("--generate", type=int, default=0, help="causal LM: greedy new tokens")
    q.add_argument("--out", type=Path, default=None, help="safetensors file for the output")
    q.set_defaults(handler=_query)


def _party(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", required=True, type=Path)
    p.add_argument("--id", type=int, default=None, help="this party's id (default: by role)")


def _role_id(topology: Any, given: int | None, role: str) -> int:
    if given is not None:
        return given
    found = topology.by_role(role)
    if not found:
        raise ValueError(f"the topology has no party with role {role!r}; pass its id")
    return int(found[0].id)


def _transform(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    from secinfer.models.hf import spec_for
    from secinfer.stip.transform import transform_model, write_cloud, write_key

    config = transformers.AutoConfig.from_pretrained(str(args.model), local_files_only=True)
    name = args.model_class or (config.architectures or [None])[0]
    if name is None:
        raise ValueError("the config names no architecture; pass --class")
    spec = spec_for(name)
    model = getattr(transformers, spec.model_class).from_pretrained(
        str(args.model), local_files_only=True, dtype="float32").eval()
    cloud, cloud_cfg, key = transform_model(model)
    write_cloud(args.cloud_out, spec.model_class, cloud, cloud_cfg, overwrite=args.force)
    write_key(args.key_out, key, overwrite=args.force)
    print(f"transformed {spec.model_class} ({spec.task}); cloud: {args.cloud_out}; "
          f"key: {args.key_out} (give the key only to the user)")
    return 0


def _provision(args: argparse.Namespace) -> int:
    from secinfer.net import Session, Topology
    from secinfer.stip.provision import run

    topo = Topology.load(args.topology)
    pid = _role_id(topo, args.id, "owner")
    kwargs = {"cloud_dir": args.cloud_dir, "key_dir": args.key_dir, "out_dir": args.out}
    with Session.connect(topo, pid) as session:
        res = run(session, **{k: str(v) for k, v in kwargs.items() if v is not None})
    print(f"party {pid} ({topo.party(pid).role}): provisioned "
          f"{res['bytes'].tolist()} bytes")
    return 0


def _serve(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from secinfer.net import Topology
    from secinfer.stip.cloud import load_cloud
    from secinfer.stip.protocol import serve

    topo = Topology.load(args.topology)
    pid = _role_id(topo, args.id, "cloud")
    cloud = load_cloud(args.model)
    print(f"stip serve: {cloud.spec.model_class} on {topo.party(pid).name}", flush=True)
    n = serve(topo, pid, cloud, max_sessions=args.sessions,
              log=lambda m: print(m, flush=True))
    print(f"stip serve: stopped after {n} sessions", flush=True)
    return 0


def _query(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from secinfer.net import Topology
    from secinfer.stip.protocol import SessionLink, dial_cloud
    from secinfer.stip.transform import load_key
    from secinfer.stip.user import StipUser

    topo = Topology.load(args.topology)
    pid = _role_id(topo, args.id, "user")
    cloud_id = _role_id(topo, args.cloud, "cloud")
    key = load_key(args.key)
    tok = None
    if args.text is not None:
        if args.tokenizer is None:
            raise ValueError("--text needs --tokenizer")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(args.tokenizer), local_files_only=True)
        ids = torch.tensor([tok(args.text)["input_ids"]], dtype=torch.int64)
    elif args.input_ids:
        ids = torch.tensor([[int(v) for v in args.input_ids.split(",")]], dtype=torch.int64)
    else:
        raise ValueError("give --input-ids or --text")
    with dial_cloud(topo, cloud_id, user_id=pid) as session:
        link = SessionLink(session, cloud_id)
        user = StipUser(key, link)
        out: dict[str, torch.Tensor] = {}
        if key.task == "causal_lm":
            if args.generate < 1:
                out["logits"] = user.last_logits(ids)
            else:
                out["tokens"] = user.generate(ids, args.generate)
        elif key.task == "classify":
            out["logits"] = user.classify(ids)
        elif key.task == "encoder":
            out["last_hidden_state"] = user.encode(ids)[0]
        else:
            out["text_features"] = user.text_features(ids)
        link.close()
    summary: dict[str, Any] = {k: list(v.shape) for k, v in out.items()}
    if "tokens" in out:
        summary["tokens"] = out["tokens"][0].tolist()
        if tok is not None:
            summary["text"] = tok.decode(out["tokens"][0])
    if "logits" in out:
        summary["argmax"] = out["logits"].argmax(-1).tolist()
    summary["cloud_compute_s"] = round(link.cloud_seconds, 6)
    print(json.dumps(summary))
    if args.out:
        save_file({k: v.contiguous() for k, v in out.items()}, str(args.out))
    return 0
