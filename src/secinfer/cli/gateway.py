"""``secinfer gateway``: the user's HTTP gateway (REST API + web page) on the user's machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="the user's HTTP gateway: REST API, OpenAPI schema and a "
                                       "web page in front of the three servers")
    p.add_argument("--topology", required=True, type=Path)
    p.add_argument("--port", required=True, type=int, help="HTTP port")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default loopback: whoever reaches the gateway "
                        "queries as this user)")
    p.add_argument("--cert", type=Path, default=None,
                   help="the user's certificate (`secinfer certs user`; default: the "
                        "topology's first user's)")
    p.add_argument("--key", type=Path, default=None)
    p.add_argument("--max-sessions", type=int, default=4,
                   help="client sessions open at once (default 4)")
    p.add_argument("--compute-timeout", type=float, default=120.0,
                   help="seconds one secure inference may take")
    p.add_argument("--busy-wait", type=float, default=5.0,
                   help="seconds to retry when the servers answer 'busy' at admission, before "
                        "answering 503 (default 5)")
    p.add_argument("--plaintext-model", default=None, metavar="zoo:NAME",
                   help="LOCAL DEMO ONLY: a plaintext copy of the model for the page's check "
                        "(a real user does not hold the model)")
    p.add_argument("--class-names", default=None,
                   help="'fashion-mnist' or comma-separated names of the outputs")
    p.add_argument("--stip-topology", type=Path, default=None,
                   help="a STIP topology (owner, cloud, user): /v1/generate and /v1/embed go "
                        "to its long-lived `secinfer stip serve`")
    p.add_argument("--stip-key", type=Path, default=None, help="the user's STIP key folder")
    p.add_argument("--stip-tokenizer", type=Path, default=None,
                   help="a local tokenizer folder, to accept text (else token ids)")
    p.add_argument("--clip-topology", type=Path, default=None,
                   help="the topology of three servers serving a compiled CLIP (default: "
                        "--topology, when --clip-artifact is given): /v1/zero-shot goes there")
    p.add_argument("--clip-artifact", type=Path, default=None,
                   help="the compiled CLIP's user artifact (its 'user' folder)")
    p.set_defaults(handler=_gateway)


FASHION_MNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]


def _gateway(args: argparse.Namespace) -> int:
    from secinfer.net.topology import Topology
    from secinfer.net.userlink import user_credentials

    try:
        import uvicorn

        from secinfer.gateway import GatewayConfig, create_app
    except ImportError as e:
        raise RuntimeError(f"the gateway needs `pip install 'secinfer[service]'` ({e})") from e
    topo = Topology.load(args.topology)
    cert, key = user_credentials(topo, args.cert, args.key)
    if args.max_sessions < 1:
        raise ValueError(f"--max-sessions must be at least 1, got {args.max_sessions}")
    plaintext = None
    if args.plaintext_model is not None:
        from .cnn import load_model

        plaintext = load_model(args.plaintext_model, None)
    names: list[str] = []
    if args.class_names == "fashion-mnist":
        names = list(FASHION_MNIST)
    elif args.class_names:
        names = [n.strip() for n in args.class_names.split(",")]
    stip = None
    if (args.stip_topology is None) != (args.stip_key is None):
        raise ValueError("give both --stip-topology and --stip-key, or neither")
    if args.stip_topology is not None:
        from secinfer.gateway.stip import StipBackend, StipConfig

        stip = StipBackend(StipConfig(Topology.load(args.stip_topology), args.stip_key,
                                      args.stip_tokenizer))
    clip = None
    if args.clip_topology is not None and args.clip_artifact is None:
        raise ValueError("--clip-topology needs --clip-artifact (the CLIP's user artifact)")
    if args.clip_artifact is not None:
        from secinfer.gateway.clip import ClipBackend, ClipConfig

        clip_topo = Topology.load(args.clip_topology) if args.clip_topology else topo
        clip = ClipBackend(ClipConfig(clip_topo, args.clip_artifact, Path(cert), Path(key),
                                      compute_timeout=args.compute_timeout))
    cfg = GatewayConfig(topo, Path(cert), Path(key), max_sessions=args.max_sessions,
                        compute_timeout=args.compute_timeout, busy_wait=args.busy_wait,
                        plaintext=plaintext,
                        plaintext_name=args.plaintext_model or "", class_names=names, stip=stip,
                        clip=clip)
    app = create_app(cfg)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"WARNING: the gateway binds {args.host}, not loopback: anyone reaching it "
              "queries the servers as this user", file=sys.stderr)
    servers = ", ".join(f"{topo.party(i).host}:{topo.party(i).port}" for i in (0, 1, 2))
    print(f"secinfer gateway: http://{args.host}:{args.port}/ (API schema /openapi.json) as "
          f"{cert}, servers {servers}" + (f"; STIP {stip.task} key {args.stip_key}"
                                          if stip is not None else ""), flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                            access_log=True)
    server = uvicorn.Server(config)
    server.run()
    return 0
