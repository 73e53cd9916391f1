"""``secinfer`` command line. Each module in this package adds its own sub-commands.

A module here defines ``register(subparsers)``; it is found automatically, so a feature adds
its commands without touching a central list. Heavy imports happen inside the handlers.

Errors: a :class:`~secinfer.errors.SecinferError` (bad artifact, dead peer, bad topology, ...)
is the user's to fix, so it is printed as ``secinfer: error: <message>`` with exit status 2 and
no traceback; ``--debug`` or ``SECINFER_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from ..errors import SecinferError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secinfer", description="Secure neural-network inference."
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also SECINFER_DEBUG=1)")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log lines to stderr at this level and above (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def _version() -> str:
    import platform

    import torch

    from .. import __version__

    return (f"secinfer {__version__} (torch {torch.__version__}, "
            f"Python {platform.python_version()})")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("SECINFER_DEBUG", "") not in ("", "0")
    # the entry point owns the process's logging; library modules only create loggers
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SecinferError as e:
        if debug:
            raise
        print(f"secinfer: error: {e or type(e).__name__}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, OSError) as e:
        if debug:
            raise
        print(f"secinfer {args.command}: error: {e}", file=sys.stderr)
        return 1
