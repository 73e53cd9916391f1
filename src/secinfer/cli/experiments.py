"""``secinfer experiments ...``: research runs and paper reproductions (not the product).

    secinfer experiments tee train   --out DIR                  # float fmnist_cnn, short
    secinfer experiments tee rsweep  --weights DIR/float.safetensors --values 0,32,64
    secinfer experiments tee run     --bundle-dir DIR [--limit N]  # split, two TLS processes
    secinfer experiments tee faults  [--trials 10000]           # fault-injection campaign
    secinfer experiments tee steal   --weights DIR/float.safetensors  # de-similarity, stealing
    secinfer experiments clip zeroshot|fewshot|finetune|report --task bbc|fmnist-tinyclip

The code lives in the repository's top-level ``experiments/`` folder, beside ``benchmarks/``,
and is imported only when a verb runs (:func:`load`). An installed secinfer without the
repository has the verbs but not the code: they fail with an error saying so.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ConfigError
from . import experiments_clip

__all__ = ["register", "load"]


def _roots() -> list[Path]:
    # a source checkout (src/secinfer/cli/experiments.py -> the repository), then the cwd
    return [Path(__file__).resolve().parents[3], Path.cwd()]


def load(name: str) -> ModuleType:
    """Import ``experiments.<name>`` from the repository, or say clearly why it cannot be."""
    for root in _roots():
        if (root / "experiments" / "__init__.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            break
    else:
        raise ConfigError(
            "secinfer experiments needs the repository's experiments/ folder (beside src/ and "
            "benchmarks/), which an installed secinfer does not ship; run it from a checkout "
            "of the secinfer repository (looked in: "
            f"{', '.join(str(r) for r in _roots())})")
    module = importlib.import_module(f"experiments.{name}")
    where = Path(module.__file__ or "").resolve()
    if where.parent != (root / "experiments").resolve():
        raise ConfigError(f"'experiments' resolves to {where}, not to the repository's "
                          f"{root / 'experiments'}: another package of that name shadows it")
    return module


def register(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("experiments", help="research runs and paper reproductions "
                                            "(needs the repository's experiments/ folder)")
    groups = ex.add_subparsers(dest="experiment_group", required=True, metavar="GROUP")
    experiments_clip.add_commands(groups)
    _tee(groups)


def _tee(groups: argparse._SubParsersAction) -> None:
    tee = groups.add_parser("tee", help="TSQP: training, r-sweep, split run, faults, stealing")
    tee.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads (1 is fastest on a shared, busy machine)")
    cmds = tee.add_subparsers(dest="tee_command", required=True, metavar="TEE_COMMAND")

    p = cmds.add_parser("train", help="train the float Fashion-MNIST CNN (short, CPU)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.set_defaults(handler=_train)

    p = cmds.add_parser("rsweep", help="int8 accuracy against reduce_range r (PTQ)")
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--values", default="0,16,32,48,64,96,128,160,192,224")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(handler=_rsweep)

    p = cmds.add_parser("run", help="the test set through enclave and device as two local "
                                    "processes over mutual TLS")
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


def _tee_module(args: argparse.Namespace) -> Any:
    module = load("tee_experiments")  # first: a missing folder fails before any heavy import
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    return module


def _dump(path: Path | None, data: Any) -> None:
    print(json.dumps(data, indent=1))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))


def _train(args: argparse.Namespace) -> int:
    _dump(None, _tee_module(args).train_fmnist(args.out, args.epochs))
    return 0


def _rsweep(args: argparse.Namespace) -> int:
    ex = _tee_module(args)
    values = [int(v) for v in args.values.split(",") if v.strip()]
    rows = ex.rsweep_fmnist(args.weights, values)
    print(f"{'r':>5} {'qmax':>5} {'accuracy %':>11}")
    for r in rows:
        name = "float" if r["reduce_range"] < 0 else f"{int(r['reduce_range'])}"
        qmax = "-" if r["reduce_range"] < 0 else f"{int(r['qmax'])}"
        print(f"{name:>5} {qmax:>5} {r['accuracy']:>11.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def _run(args: argparse.Namespace) -> int:
    _dump(args.json, _tee_module(args).run_split_fmnist(
        args.bundle_dir, args.limit, args.batch, args.triples, args.fault, args.checksums))
    return 0


def _faults(args: argparse.Namespace) -> int:
    _dump(args.json, _tee_module(args).fault_campaign(args.trials, args.batch, args.triples,
                                                      args.checksums))
    return 0


def _steal(args: argparse.Namespace) -> int:
    _dump(args.json, _tee_module(args).stealing_experiment(
        args.weights, args.frac, args.thief_epochs, args.desim_epochs, args.lam))
    return 0
