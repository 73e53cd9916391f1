"""``secinfer tee ...``: the enclave split (TSQP) from the command line.

    secinfer tee train     --out DIR                  # float Fashion-MNIST CNN (fmnist_cnn)
    secinfer tee provision --weights DIR/float.safetensors --out DIR [--reduce-range R]
    secinfer tee rsweep    --weights DIR/float.safetensors --values 0,32,64
    secinfer tee enclave   --topology T --id 0 --bundle DIR/enclave [--dataset fmnist]
    secinfer tee device    --topology T --id 1 --bundle DIR/device [--fault noise]
    secinfer tee run       --bundle-dir DIR [--limit N]   # both processes over local mutual TLS
    secinfer tee faults    [--trials 10000]               # fault-injection campaign
    secinfer tee steal     --weights DIR/float.safetensors # de-similarity + stealing experiment
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    tee = sub.add_parser("tee", help="enclave-split inference of quantized CNNs (TSQP)")
    tee.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads (1 is fastest on a shared, busy machine)")
    cmds = tee.add_subparsers(dest="tee_command", required=True, metavar="TEE_COMMAND")

    p = cmds.add_parser("train", help="train the float Fashion-MNIST CNN (short, CPU)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.set_defaults(handler=_train)

    p = cmds.add_parser("provision", help="quantize, draw secrets, write enclave/device bundles")
    p.add_argument("--weights", type=Path, required=True, help="fmnist_cnn float state dict")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--reduce-range", type=int, default=0)
    p.add_argument("--qat-epochs", type=int, default=0, help="QAT epochs (0: PTQ only)")
    p.add_argument("--no-permute", action="store_true", help="keep channel order (for ablation)")
    p.set_defaults(handler=_provision)

    p = cmds.add_parser("rsweep", help="int8 accuracy against reduce_range r (PTQ)")
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--values", default="0,16,32,48,64,96,128,160,192,224")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(handler=_rsweep)

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

    p = cmds.add_parser("run", help="enclave and device as two local processes over mutual TLS")
    p.add_argument("--bundle-dir", type=Path, required=True)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--triples", type=int, default=2)
    p.add_argument("--checksums", type=int, default=2)
    p.add_argument("--fault", default="none")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(handler=_run)

    p = cmds.add_parser("faults", help="fault-injection campaign against the integrity monitor")
    p.add_argument("--trials", type=int, default=10000)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--triples", type=int, default=2)
    p.add_argument("--checksums", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(handler=_faults)

    p = cmds.add_parser("steal", help="de-similarity training and the model-stealing experiment")
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--frac", type=float, default=0.01)
    p.add_argument("--thief-epochs", type=int, default=30)
    p.add_argument("--desim-epochs", type=int, default=1)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(handler=_steal)


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _dump(path: Path | None, data: Any) -> None:
    print(json.dumps(data, indent=1))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))


def _train(args: argparse.Namespace) -> int:
    _threads(args)
    from secinfer.tee.experiments import train_fmnist

    print(json.dumps(train_fmnist(args.out, args.epochs), indent=1))
    return 0


def _provision(args: argparse.Namespace) -> int:
    _threads(args)
    from secinfer.tee.experiments import provision_fmnist

    _dump(None, provision_fmnist(args.weights, args.out, args.reduce_range, args.qat_epochs,
                                 not args.no_permute))
    return 0


def _rsweep(args: argparse.Namespace) -> int:
    _threads(args)
    from secinfer.tee.experiments import rsweep_fmnist

    values = [int(v) for v in args.values.split(",") if v.strip()]
    rows = rsweep_fmnist(args.weights, values)
    print(f"{'r':>5} {'qmax':>5} {'accuracy %':>11}")
    for r in rows:
        name = "float" if r["reduce_range"] < 0 else f"{int(r['reduce_range'])}"
        qmax = "-" if r["reduce_range"] < 0 else f"{int(r['qmax'])}"
        print(f"{name:>5} {qmax:>5} {r['accuracy']:>11.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
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


def _run(args: argparse.Namespace) -> int:
    _threads(args)
    from secinfer.tee.experiments import run_split_fmnist

    _dump(args.json, run_split_fmnist(args.bundle_dir, args.limit, args.batch, args.triples,
                                      args.fault, args.checksums))
    return 0


def _faults(args: argparse.Namespace) -> int:
    _threads(args)
    from secinfer.tee.experiments import fault_campaign

    _dump(args.json, fault_campaign(args.trials, args.batch, args.triples,
                                       args.checksums))
    return 0


def _steal(args: argparse.Namespace) -> int:
    _threads(args)
    from secinfer.tee.experiments import stealing_experiment

    _dump(args.json, stealing_experiment(args.weights, args.frac, args.thief_epochs,
                                         args.desim_epochs, args.lam))
    return 0
