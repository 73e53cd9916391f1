"""Runtime commands: ``certs``, ``health``, ``party``, ``launch``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "certs",
        help="certificates: init-ca / keygen / sign (deployments), or --topology alone (LOCAL "
             "DEMO ONLY: every key on this machine)",
        description="Deployment flow: the owner runs `certs init-ca`; each party runs `certs "
                    "keygen` on its own machine and sends only the CSR; the owner runs `certs "
                    "sign`, which checks the CSR's name and role. `secinfer certs --topology T` "
                    "without a sub-command is the LOCAL DEMO shortcut: it creates every "
                    "party's private key on this machine, so whoever runs it can impersonate "
                    "both non-colluding servers and the helper. Never use it for a deployment.")
    p.add_argument("--topology", type=Path, default=None,
                   help="LOCAL DEMO ONLY: create the CA and every party's key here (INSECURE "
                        "for deployments: one machine then holds every party's key)")
    p.add_argument("--force", action="store_true", help="overwrite existing certificates")
    p.set_defaults(handler=_certs)
    csub = p.add_subparsers(dest="certs_action", metavar="ACTION")
    q = csub.add_parser("init-ca", help="owner: create the CA key (0600) and certificate")
    q.add_argument("--out", dest="ca_out", type=Path, default=None,
                   help="folder for ca.pem and ca.key (default: the topology's [tls] paths)")
    q.add_argument("--topology", dest="ca_topology", type=Path, default=None)
    q.add_argument("--force", dest="ca_force", action="store_true")
    q.set_defaults(handler=_certs_init_ca)
    q = csub.add_parser("keygen", help="party: create its own private key (0600) and a CSR")
    q.add_argument("--topology", dest="kg_topology", required=True, type=Path)
    q.add_argument("--id", dest="kg_id", required=True, type=int)
    q.add_argument("--out", dest="kg_out", type=Path, default=None,
                   help="folder for party<N>.key and party<N>.csr (default: the topology's key "
                        "path, CSR beside it)")
    q.add_argument("--force", dest="kg_force", action="store_true")
    q.set_defaults(handler=_certs_keygen)
    q = csub.add_parser("sign", help="owner: check a party's CSR (name party-<id>, its role) "
                                     "and issue its certificate")
    q.add_argument("--topology", dest="sg_topology", required=True, type=Path)
    q.add_argument("--id", dest="sg_id", required=True, type=int)
    q.add_argument("--csr", dest="sg_csr", required=True, type=Path)
    q.add_argument("--ca", dest="sg_ca", type=Path, default=None,
                   help="folder holding ca.pem and ca.key (default: the topology's [tls] paths)")
    q.add_argument("--out", dest="sg_out", type=Path, default=None,
                   help="certificate file (default: the CSR's path with suffix .pem)")
    q.add_argument("--force", dest="sg_force", action="store_true")
    q.set_defaults(handler=_certs_sign)
    q = csub.add_parser("user", help="owner: issue a user certificate (role user, name "
                                     "user-NAME); the servers serve it without a topology edit "
                                     "or restart")
    q.add_argument("name", help="the user's name: letters, digits, '-' and '_'")
    q.add_argument("--topology", dest="us_topology", required=True, type=Path,
                   help="a topology whose [tls] ca_key is the CA's key")
    q.add_argument("--out", dest="us_out", type=Path, default=Path("."),
                   help="folder for user-NAME.pem and user-NAME.key (default: here)")
    q.add_argument("--force", dest="us_force", action="store_true")
    q.set_defaults(handler=_certs_user)

    p = sub.add_parser("health", help="ask every server of a topology for its status")
    p.add_argument("--topology", required=True, type=Path)
    p.add_argument("--cert", type=Path, default=None,
                   help="a user certificate (default: the topology's first user's)")
    p.add_argument("--key", type=Path, default=None)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per server")
    p.add_argument("--json", action="store_true", help="print the statuses as JSON")
    p.set_defaults(handler=_health)

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

    if args.topology is None:
        raise ValueError("give an action (init-ca, keygen, sign) or --topology T for the local "
                         "demo flow")
    print("WARNING: LOCAL DEMO certificates: every party's private key is created on this "
          "machine, so its user can impersonate both non-colluding servers and the helper. "
          "For a deployment use `secinfer certs init-ca`, `keygen` (on each party's machine) "
          "and `sign`.", file=sys.stderr)
    topo = Topology.load(args.topology)
    for path in make_certs(topo, overwrite=args.force):
        print(f"wrote {path}")
    return 0


def _certs_init_ca(args: argparse.Namespace) -> int:
    from secinfer.net.tls import init_ca
    from secinfer.net.topology import Topology

    if args.ca_out is not None:
        cert, key = args.ca_out / "ca.pem", args.ca_out / "ca.key"
    elif args.ca_topology is not None:
        topo = Topology.load(args.ca_topology)
        if topo.ca_key is None:
            raise ValueError(f"{args.ca_topology} has no [tls] ca_key path; use --out")
        cert, key = topo.ca_cert, topo.ca_key
    else:
        raise ValueError("init-ca needs --out DIR or --topology T")
    init_ca(cert, key, overwrite=args.ca_force)
    print(f"wrote {cert} (give it to every party) and {key} (mode 0600: keep it offline)")
    return 0


def _certs_keygen(args: argparse.Namespace) -> int:
    from secinfer.net.tls import make_key_and_csr
    from secinfer.net.topology import Topology

    topo = Topology.load(args.kg_topology)
    key = csr = None
    if args.kg_out is not None:
        key = args.kg_out / f"party{args.kg_id}.key"
        csr = args.kg_out / f"party{args.kg_id}.csr"
    key, csr = make_key_and_csr(topo, args.kg_id, key, csr, overwrite=args.kg_force)
    print(f"wrote {key} (mode 0600: never leaves this machine) and {csr} (send it to the CA)")
    return 0


def _certs_sign(args: argparse.Namespace) -> int:
    from secinfer.net.tls import sign_csr
    from secinfer.net.topology import Topology

    topo = Topology.load(args.sg_topology)
    ca_cert = args.sg_ca / "ca.pem" if args.sg_ca is not None else None
    ca_key = args.sg_ca / "ca.key" if args.sg_ca is not None else None
    out = args.sg_out if args.sg_out is not None else args.sg_csr.with_suffix(".pem")
    sign_csr(topo, args.sg_id, args.sg_csr, out, ca_cert=ca_cert, ca_key=ca_key,
             overwrite=args.sg_force)
    print(f"wrote {out} for party {args.sg_id} ({topo.party(args.sg_id).role})")
    return 0


def _certs_user(args: argparse.Namespace) -> int:
    from secinfer.net.tls import issue_user_cert, user_dns_name
    from secinfer.net.topology import Topology

    topo = Topology.load(args.us_topology)
    dns = user_dns_name(args.name)
    cert, key = args.us_out / f"{dns}.pem", args.us_out / f"{dns}.key"
    args.us_out.mkdir(parents=True, exist_ok=True)
    issue_user_cert(topo, args.name, cert, key, overwrite=args.us_force)
    print(f"wrote {cert} and {key} (mode 0600) for {dns}: give both to the user only")
    return 0


def _health(args: argparse.Namespace) -> int:
    from secinfer.net.errors import SecinferNetError
    from secinfer.net.topology import Topology
    from secinfer.net.userlink import probe_health, user_credentials

    topo = Topology.load(args.topology)
    cert, key = user_credentials(topo, args.cert, args.key)
    statuses: dict[int, dict] = {}
    failed = 0
    for spec in topo.parties:
        if spec.role == "user":
            continue
        try:
            statuses[spec.id] = probe_health(topo, cert, key, spec.id, timeout=args.timeout)
        except (SecinferNetError, OSError, ValueError) as e:
            statuses[spec.id] = {"state": "unreachable", "error": str(e)}
            failed += 1
    if args.json:
        print(json.dumps(statuses, indent=2, sort_keys=True))
    else:
        for pid, st in statuses.items():
            detail = st.get("error") or ", ".join(f"{k} {v}" for k, v in sorted(st.items())
                                                 if k not in ("state", "costs"))
            print(f"party {pid} ({topo.party(pid).role}, {topo.party(pid).host}:"
                  f"{topo.party(pid).port}): {st.get('state')}; {detail}")
    return 1 if failed else 0


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
