"""Runtime commands: ``certs``, ``party``, ``launch``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certs", help="create a CA and one certificate per party of a topology")
    p.add_argument("--topology", required=True, type=Path)
    p.add_argument("--force", action="store_true", help="overwrite existing certificates")
    p.set_defaults(handler=_certs)

    p = sub.add_parser("party", help="run one party of a topology")
    _party_args(p)
    p.set_defaults(handler=_party)

    p = sub.add_parser("launch", help="start every party of a topology on this machine")
    p.add_argument("topology", type=Path)
    p.add_argument("--program", default="secinfer.net.programs:selftest")
    p.add_argument("--args", type=Path, default=None, help="JSON file of program kwargs")
    p.add_argument("--run-timeout", type=float, default=600.0)
    p.add_argument("--workdir", type=Path, default=None,
                   help="logs and results (default: beside the topology file)")
    p.set_defaults(handler=_launch)


def _party_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", required=True, type=Path)
    p.add_argument("--id", required=True, type=int)
    p.add_argument("--program", default="secinfer.net.programs:selftest",
                   help="module:function run with this party's session")
    p.add_argument("--args", type=Path, default=None, help="JSON file of program kwargs")
    p.add_argument("--out", type=Path, default=None, help="safetensors file for the result")
    p.add_argument("--timeout", type=float, default=None, help="override session.timeout")


def _certs(args: argparse.Namespace) -> int:
    from secinfer.net.tls import make_certs
    from secinfer.net.topology import Topology

    topo = Topology.load(args.topology)
    for path in make_certs(topo, overwrite=args.force):
        print(f"wrote {path}")
    return 0


def _party(args: argparse.Namespace) -> int:
    from secinfer.net.programs import resolve_program, save_result
    from secinfer.net.session import Session
    from secinfer.net.topology import Topology

    topo = Topology.load(args.topology)
    if args.timeout is not None:
        topo = topo.with_timeout(args.timeout)
    fn = resolve_program(args.program)
    kwargs = json.loads(args.args.read_text()) if args.args else {}
    start = time.perf_counter()
    with Session.connect(topo, args.id) as session:
        print(f"party {args.id} connected to {session.peers}, session {session.session_id.hex()}",
              flush=True)
        result = fn(session, **kwargs)
        report = session.report()
    print(f"party {args.id} done in {time.perf_counter() - start:.3f} s", flush=True)
    from secinfer.net.accounting import format_table

    print(format_table(report), flush=True)
    if args.out:
        save_result(result, args.out, report)
    return 0


def _launch(args: argparse.Namespace) -> int:
    from secinfer.net.launcher import PartyFailed, local_cluster

    kwargs = json.loads(args.args.read_text()) if args.args else {}
    workdir = args.workdir or args.topology.resolve().parent / "launch"
    with local_cluster(workdir=workdir, topology=args.topology) as cluster:
        try:
            results = cluster.run(args.program, kwargs=kwargs, timeout=args.run_timeout)
        except PartyFailed as e:
            print(str(e), file=sys.stderr)
            return 1
        for pid in sorted(results):
            names = ", ".join(sorted(results[pid])) or "(no tensors)"
            print(f"party {pid}: ok; result: {names}; log {workdir / 'logs' / f'party{pid}.log'}")
    return 0
