"""``secinfer tee ...``: the enclave split (TSQP) from the command line.

    secinfer tee provision --out DIR [--weights DIR/float.safetensors] [--reduce-range R]
    secinfer tee enclave   --topology T --id 0 --bundle DIR/enclave [--dataset fmnist]
    secinfer tee device    --topology T --id 1 --bundle DIR/device [--fault noise]

The research runs (training, the r-sweep, the test set through the split, the fault campaign,
stealing) are ``secinfer experiments tee ...`` (see :mod:`secinfer.cli.experiments`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    tee = sub.add_parser("tee", help="enclave-split inference of quantized CNNs (TSQP)")
    tee.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads (1 is fastest on a shared, busy machine)")
    cmds = tee.add_subparsers(dest="tee_command", required=True, metavar="TEE_COMMAND")

    p = cmds.add_parser("provision", help="quantize, draw secrets, write enclave/device bundles")
    p.add_argument("--weights", type=Path, default=None,
                   help="float state dict (default: the shipped fmnist_cnn weights, or the "
                        "--model factory's own)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--reduce-range", type=int, default=0)
    p.add_argument("--qat-epochs", type=int, default=0, help="QAT epochs (0: PTQ only)")
    p.add_argument("--no-permute", action="store_true", help="keep channel order (for ablation)")
    p.add_argument("--model", default=None,
                   help="a user model ('module:function', 'zoo:NAME' or an .onnx file) "
                        "instead of the shipped Fashion-MNIST CNN; needs --input-shape and "
                        "--calibration")
    p.add_argument("--input-shape", default=None, help="e.g. 1,28,28 (with --model)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="safetensors with tensor 'x': the owner's quantization samples")
    p.add_argument("--data", type=Path, default=None,
                   help="safetensors with 'x' and 'y': report float and int8 accuracy on it")
    p.set_defaults(handler=_provision)

    for role in ("enclave", "device"):
        p = cmds.add_parser(role, help=f"run the {role} party over the topology's TLS links")
        p.add_argument("--topology", type=Path, required=True)
        p.add_argument("--id", type=int, required=True)
        p.add_argument("--peer", type=int, default=1 if role == "enclave" else 0)
        p.add_argument("--bundle", type=Path, required=True, help="bundle folder")
        p.add_argument("--out", type=Path, default=None, help="safetensors result file")
        if role == "enclave":
            p.add_argument("--dataset", default=None, help="'fmnist' (test split)")
            p.add_argument("--inputs", default=None, help="safetensors file with tensor 'x'")
            p.add_argument("--limit", type=int, default=None)
            p.add_argument("--batch", type=int, default=32)
            p.add_argument("--triples", type=int, default=2)
            p.add_argument("--checksums", type=int, default=2)
        else:
            p.add_argument("--fault", default="none")
            p.add_argument("--target", default="one")
            p.add_argument("--rate", type=float, default=1.0)
        p.set_defaults(handler=_party, role=role)


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _provision(args: argparse.Namespace) -> int:
    _threads(args)
    if args.model is not None:
        return _provision_model(args)
    from secinfer.tee.fmnist import provision_fmnist

    print(json.dumps(provision_fmnist(args.weights, args.out, args.reduce_range,
                                      args.qat_epochs, not args.no_permute), indent=1))
    return 0


def _provision_model(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file

    from secinfer.cli.cnn import _shape, load_model
    from secinfer.tee.from_plan import provision_model

    if args.input_shape is None or args.calibration is None:
        raise ValueError("--model needs --input-shape and --calibration")
    if args.qat_epochs:
        raise ValueError("--qat-epochs is for the shipped Fashion-MNIST model only")
    cal = load_file(str(args.calibration))
    if "x" not in cal:
        raise ValueError(f"{args.calibration}: no tensor named 'x'")
    data = None
    if args.data is not None:
        t = load_file(str(args.data))
        if "x" not in t:
            raise ValueError(f"{args.data}: no tensor named 'x'")
        data = (t["x"], t.get("y"))
    model = load_model(args.model, args.weights)
    print(json.dumps(provision_model(model, _shape(args.input_shape), args.out, cal["x"], data,
                                     args.reduce_range, not args.no_permute), indent=1))
    return 0


def _party(args: argparse.Namespace) -> int:
    _threads(args)
    from secinfer.net.programs import save_result
    from secinfer.net.session import Session
    from secinfer.net.topology import Topology
    from secinfer.tee import programs

    topo = Topology.load(args.topology)
    with Session.connect(topo, args.id, peers=[args.peer]) as s:
        if args.role == "enclave":
            res = programs.enclave(s, str(args.bundle), inputs=args.inputs, dataset=args.dataset,
                                   limit=args.limit, batch=args.batch, triples=args.triples,
                                   checksums=args.checksums, peer=args.peer)
            st = res["stats"].tolist()
            print(f"enclave: {st[0]} batches, {st[1]} layer calls, {st[2]} triples checked, "
                  f"{st[3]} failed, {st[6]} item checksums, {st[7]} failed, {st[4]} alarms")
            if "labels" in res:
                acc = float((res["logits"].argmax(1) == res["labels"]).double().mean()) * 100
                print(f"enclave: accuracy {acc:.2f}% on {len(res['labels'])} queries")
        else:
            res = programs.device(s, str(args.bundle), args.fault, args.target, args.rate,
                                  peer=args.peer)
            print(f"device: served {int(res['served'])} layer calls")
        print(s.cost_table())
        report = s.report()
    if args.out:
        save_result(res, args.out, report)
    return 0
