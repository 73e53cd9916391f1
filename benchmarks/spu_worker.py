"""The SecretFlow SPU side of ``benchmarks/peer_spu.py``; runs inside ``.venv-spu`` (JAX + spu).

It is not a benchmark of its own: ``peer_spu.py`` writes the exported weights and images
(safetensors), starts this script with ``.venv-spu/bin/python``, and reads back the logits
(safetensors) and a JSON manifest of timings. Nothing is pickled in either direction.

The network is ``secinfer.models.zoo.MNISTNet`` (``fmnist_cnn``) re-written in JAX:
conv3x3(1->32, pad 1) - ReLU - maxpool2 - conv3x3(32->64, pad 1) - ReLU - maxpool2 -
flatten (C, H, W order, as ``torch.flatten``) - linear(3136->128) - ReLU - linear(128->10).

For every requested configuration (protocol, field, fraction bits) it

1. compiles the JAX function once with SPU's frontend (weights and images both secret inputs,
   as in secinfer, where the model owner's weights are shared too),
2. runs it the way SPU's 3-party ``Simulator`` does (one thread per party, in-memory links; the
   0.9.5 wheel ships no multi-process launcher), timing the whole call, which includes
   secret-sharing the inputs and reconstructing the outputs; each party logs its link totals
   (``Link details: total send bytes ...``), which ``peer_spu.py`` sums,
3. stores the reconstructed logits.

Threat model of what is measured: SPU's ABY3 is 3-party replicated sharing, semi-honest, honest
majority; SEMI2K is additive sharing, semi-honest, with a trusted dealer for Beaver triples
(SPU's default ``TrustedFirstParty``), i.e. weaker than ABY3's.

    .venv-spu/bin/python benchmarks/spu_worker.py --data D.safetensors --out DIR \
        --configs ABY3:FM64:18,SEMI2K:FM64:18
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["WEIGHT_NAMES", "main"]

WEIGHT_NAMES = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


def _forward(x: Any, *w: Any) -> Any:
    """MNISTNet in JAX, NCHW/OIHW like PyTorch so the exported tensors need no transposes."""
    import jax
    import jax.numpy as jnp

    c1w, c1b, c2w, c2b, f1w, f1b, f2w, f2b = w
    dims = ("NCHW", "OIHW", "NCHW")

    def conv(h: Any, k: Any, b: Any) -> Any:
        y = jax.lax.conv_general_dilated(h, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims)
        return y + b.reshape(1, -1, 1, 1)

    def pool(h: Any) -> Any:
        return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    h = pool(jax.nn.relu(conv(x, c1w, c1b)))
    h = pool(jax.nn.relu(conv(h, c2w, c2b)))
    h = h.reshape(h.shape[0], -1)
    h = jax.nn.relu(h @ f1w.T + f1b)
    return h @ f2w.T + f2b


def _simulate(config: Any, executable: Any, args: list[Any]) -> Any:
    """SPU's ``Simulator.__call__`` (spu/utils/simulation.py, 0.9.5), except that every party keeps
    profiling on, so each of the three logs its own link totals (the stock one profiles rank 0)."""
    import threading

    import spu.api as spu_api
    from spu import libspu

    io = spu_api.Io(3, config)
    shares = [io.make_shares(a, libspu.Visibility.VIS_SECRET) for a in args]
    desc = libspu.link.Desc()
    for rank in range(3):
        desc.add_party(f"id_{rank}", f"thread_{rank}")
    results: dict[int, Any] = {}

    def party(rank: int) -> None:
        try:
            rt = spu_api.Runtime(libspu.link.create_mem(desc, rank), libspu.RuntimeConfig(config))
            for name, share in zip(executable.input_names, shares, strict=True):
                rt.set_var(name, share[rank])
            rt.run(executable)
            results[rank] = [rt.get_var(n) for n in executable.output_names]
        except BaseException as exc:  # re-raised in the caller below
            results[rank] = exc

    threads = [threading.Thread(target=party, args=(r,), daemon=True) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=3600)
    for rank in range(3):
        if rank not in results:
            raise TimeoutError(f"SPU party {rank} did not finish within an hour")
        if isinstance(results[rank], BaseException):
            raise RuntimeError(f"SPU party {rank} failed: {results[rank]}") from results[rank]
    return [io.reconstruct([results[r][i] for r in range(3)])
            for i in range(len(executable.output_names))]


def _run_config(protocol: str, field: str, frac_bits: int, args: list[Any]) -> tuple[Any, dict]:
    import spu.utils.frontend as spu_fe
    from spu import libspu

    config = libspu.RuntimeConfig(protocol=getattr(libspu.ProtocolKind, protocol),
                                  field=getattr(libspu.FieldType, field))
    config.fxp_fraction_bits = frac_bits
    # Profiling makes SPU's runtime log its link statistics (bytes, actions) per party.
    config.enable_pphlo_profile = True
    names = [f"in{i}" for i in range(len(args))]
    t0 = time.perf_counter()
    executable, _ = spu_fe.compile(
        spu_fe.Kind.JAX, _forward, args, {}, names,
        [libspu.Visibility.VIS_SECRET] * len(args), lambda out: ["out0"])
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    (logits,) = _simulate(config, executable, args)
    seconds = time.perf_counter() - t0
    return logits, {"protocol": protocol, "field": field, "frac_bits": frac_bits,
                    "compile_seconds": compile_s, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="safetensors with 'images' and the weights")
    ap.add_argument("--out", type=Path, help="folder for logits.safetensors and manifest.json")
    ap.add_argument("--configs", default="ABY3:FM64:18",
                    help="comma-separated PROTOCOL:FIELD:FRAC_BITS")
    ns = ap.parse_args(argv)
    if ns.data is None or ns.out is None:
        # `make bench` runs every benchmarks/*.py; this one is only peer_spu.py's helper.
        print("spu_worker.py is started by benchmarks/peer_spu.py inside .venv-spu; "
              "run that instead (see its docstring)")
        return 0
    import numpy as np
    from safetensors.numpy import load_file, save_file

    data = load_file(str(ns.data))
    missing = [k for k in ("images", *WEIGHT_NAMES) if k not in data]
    if missing:
        raise SystemExit(f"{ns.data}: missing tensors {missing}")
    args = [data["images"].astype(np.float32)] + [data[k].astype(np.float32)
                                                   for k in WEIGHT_NAMES]
    ns.out.mkdir(parents=True, exist_ok=True)
    runs, logits = [], {}
    for spec in ns.configs.split(","):
        parts = spec.split(":")
        if len(parts) != 3 or not parts[2].isdigit():
            raise SystemExit(f"bad config {spec!r}; expected PROTOCOL:FIELD:FRAC_BITS, "
                             "e.g. ABY3:FM64:18")
        out, info = _run_config(parts[0], parts[1], int(parts[2]), args)
        key = f"{parts[0]}_{parts[1]}_{parts[2]}"
        logits[key] = np.asarray(out, dtype=np.float64)
        info["key"] = key
        runs.append(info)
        print(json.dumps(info), flush=True)
    save_file(logits, str(ns.out / "logits.safetensors"))
    import spu

    (ns.out / "manifest.json").write_text(json.dumps(
        {"spu_version": spu.__version__, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
