"""The SecretFlow SPU side of ``benchmarks/peer_spu.py`` and ``benchmarks/transformer.py --spu``;
runs inside ``.venv-spu`` (JAX + spu).

It is not a benchmark of its own: the caller writes the exported weights and inputs
(safetensors), starts this script with ``.venv-spu/bin/python``, and reads back the outputs
(safetensors, ``logits.safetensors`` for both models) and a JSON manifest of timings. Nothing is
pickled in either direction.

Two models (``--model``):

* ``cnn`` (default, for ``peer_spu.py``): ``secinfer.models.zoo.MNISTNet`` (``fmnist_cnn``)
  re-written in JAX: conv3x3(1->32, pad 1) - ReLU - maxpool2 - conv3x3(32->64, pad 1) - ReLU -
  maxpool2 - flatten (C, H, W order, as ``torch.flatten``) - linear(3136->128) - ReLU -
  linear(128->10). Tensors: ``images`` and ``WEIGHT_NAMES``.
* ``seq`` (for ``peer_spu.py --model mlp|small_cnn``): an ``nn.Sequential`` of the layers named
  by ``--layers`` (``conv`` = conv 3x3 with padding 1, ``relu``, ``pool`` = max pool 2x2,
  ``flatten``, ``linear``), the weights of layer ``i`` named ``i.weight`` / ``i.bias`` as in
  the Sequential's state dict. Tensors: ``images`` and those weights.
* ``bert_layer`` (for ``transformer.py --spu``): one post-norm BERT encoder layer, a JAX copy of
  ``secinfer.transformer.weights.plain_layer`` on the ``LayerWeights`` layout (fused Q/K/V
  ``qkv_w`` [3H, H] with 1/sqrt(d_head) already folded into the Q rows, so no scale is applied
  here; ``out_w`` [H, H]; ``ff1_w`` [I, H]; ``ff2_w`` [H, I]; LayerNorm gammas/betas):
  qkv projection - per-head scores q k^T - ``jax.nn.softmax`` over the last dim - probs v -
  output projection + residual - LayerNorm - FFN with ``jax.nn.gelu(approximate=True)`` (the
  tanh form; ``plain_layer`` uses the erf form) - residual - LayerNorm. Every token is kept (no
  padding mask; the benchmark's input has none). Tensors: ``x`` [B, S, H] and
  ``BERT_LAYER_NAMES``; ``--heads`` and ``--eps`` as flags. ``bert_layer_puma``: the same layer
  with PUMA's approximations (see ``_bert_layer``).

For every requested configuration (protocol, field, fraction bits) it

1. compiles the JAX function once with SPU's frontend (weights and images both secret inputs,
   as in secinfer, where the model owner's weights are shared too),
2. runs it either (``:mem``) the way SPU's 3-party ``Simulator`` does (one thread per party,
   in-memory links; the 0.9.5 wheel ships no multi-process launcher), or (``:brpc``) as three
   party processes of this script linked by SPU's brpc transport over TCP on 127.0.0.1 (no TLS),
   the shares and the compiled executable handed over as raw protobuf/bytes files. The time
   covers secret-sharing the inputs, the run, and reconstructing the outputs (for ``:brpc``, the
   slowest party's run after a barrier, so process start-up and connecting are excluded). Each
   party logs its link totals (``Link details: total send bytes ...``), which ``peer_spu.py`` sums,
3. stores the reconstructed logits.

Threat model of what is measured: SPU's ABY3 is 3-party replicated sharing, semi-honest, honest
majority; SEMI2K is additive sharing, semi-honest, with a trusted dealer for Beaver triples
(SPU's default ``TrustedFirstParty``), i.e. weaker than ABY3's.

    .venv-spu/bin/python benchmarks/spu_worker.py --data D.safetensors --out DIR \
        --configs ABY3:FM64:18:brpc,SEMI2K:FM64:18
    .venv-spu/bin/python benchmarks/spu_worker.py --model bert_layer --heads 12 \
        --data D.safetensors --out DIR --configs ABY3:FM64:18:brpc
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["BERT_LAYER_NAMES", "WEIGHT_NAMES", "main"]

WEIGHT_NAMES = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
# secinfer.transformer.weights.LayerWeights, in its field order
BERT_LAYER_NAMES = ("qkv_w", "qkv_b", "out_w", "out_b", "ln1_w", "ln1_b",
                    "ff1_w", "ff1_b", "ff2_w", "ff2_b", "ln2_w", "ln2_b")


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


SEQ_LAYERS = ("conv", "relu", "pool", "flatten", "linear")


def seq_weight_names(layers: list[str]) -> list[str]:
    """The state-dict names of an ``nn.Sequential`` of ``layers``, in order."""
    return [f"{i}.{p}" for i, k in enumerate(layers) if k in ("conv", "linear")
            for p in ("weight", "bias")]


def _sequential(layers: list[str]) -> Any:
    """An ``nn.Sequential`` of ``layers`` in JAX (NCHW/OIHW as in PyTorch)."""

    def forward(x: Any, *w: Any) -> Any:
        import jax
        import jax.numpy as jnp

        params = iter(w)
        h = x
        for kind in layers:
            if kind == "conv":
                k, b = next(params), next(params)
                h = jax.lax.conv_general_dilated(h, k, (1, 1), ((1, 1), (1, 1)),
                                                 dimension_numbers=("NCHW", "OIHW", "NCHW"))
                h = h + b.reshape(1, -1, 1, 1)
            elif kind == "linear":
                k, b = next(params), next(params)
                h = h @ k.T + b
            elif kind == "relu":
                h = jax.nn.relu(h)
            elif kind == "pool":
                h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2),
                                          "VALID")
            else:  # flatten
                h = h.reshape(h.shape[0], -1)
        return h

    return forward


# PUMA's piecewise GELU form (Dong et al., 2023): 0 below -4, a cubic on [-4, -1.95), 0.5 x plus
# an even sextic on [-1.95, 3], x above. Coefficients: our own least-squares fit to the erf GELU
# on each piece (max error 7.5e-4 and 2.4e-2), lowest degree first.
PUMA_GELU_CUBIC = (-0.5015405703872958, -0.41836572651372633, -0.11696643157385939,
                   -0.010940046117956634)
PUMA_GELU_EVEN = (0.0074219312043319625, 0.36365555328091265, -0.03888340742986909,
                  0.001905928735003462)
PUMA_EXP_CUT = -14.0


def _bert_layer(heads: int, eps: float, puma: bool = False) -> Any:
    """One post-norm BERT layer in JAX, ``plain_layer`` step by step (x [B, S, H] first).

    ``puma``: PUMA's approximations, as SPU's PUMA configuration runs them: the piecewise
    GELU above; softmax with exp(x - max) set to 0 below -14 and one reciprocal per row
    broadcast over the row (a multiplication instead of a division per element).
    """

    def forward(x: Any, *w: Any) -> Any:
        import jax
        import jax.numpy as jnp

        qkv_w, qkv_b, out_w, out_b, ln1_w, ln1_b, ff1_w, ff1_b, ff2_w, ff2_b, ln2_w, ln2_b = w
        b, s, h = x.shape
        dh = h // heads

        def layer_norm(t: Any, g: Any, beta: Any) -> Any:
            mu = jnp.mean(t, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(t - mu), axis=-1, keepdims=True)
            return (t - mu) * jax.lax.rsqrt(var + eps) * g + beta

        qkv = x @ qkv_w.T + qkv_b                      # Q rows already carry 1/sqrt(dh)
        q, k, v = (t.reshape(b, s, heads, dh).transpose(0, 2, 1, 3)
                   for t in jnp.split(qkv, 3, axis=-1))
        scores = q @ k.transpose(0, 1, 3, 2)
        if puma:
            z = scores - jnp.max(scores, axis=-1, keepdims=True)
            e = jnp.where(z < PUMA_EXP_CUT, 0.0, jnp.exp(z))
            probs = e * (1.0 / jnp.sum(e, axis=-1, keepdims=True))
        else:
            probs = jax.nn.softmax(scores, axis=-1)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, h)
        h1 = layer_norm(ctx @ out_w.T + out_b + x, ln1_w, ln1_b)
        pre = h1 @ ff1_w.T + ff1_b
        if puma:
            c, d = PUMA_GELU_CUBIC, PUMA_GELU_EVEN
            cubic = c[0] + pre * (c[1] + pre * (c[2] + pre * c[3]))
            p2 = pre * pre
            even = 0.5 * pre + d[0] + p2 * (d[1] + p2 * (d[2] + p2 * d[3]))
            act = jnp.where(pre < -4.0, 0.0, jnp.where(pre < -1.95, cubic,
                                                       jnp.where(pre <= 3.0, even, pre)))
        else:
            act = jax.nn.gelu(pre, approximate=True)
        return layer_norm(act @ ff2_w.T + ff2_b + h1, ln2_w, ln2_b)

    return forward


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


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sk in socks:
            sk.bind(("127.0.0.1", 0))
        return [sk.getsockname()[1] for sk in socks]
    finally:
        for sk in socks:
            sk.close()


def _write_share(folder: Path, name: str, share: Any) -> None:
    """A share as raw bytes: ``NAME.meta`` (SPU's ValueMeta proto) and ``NAME.K`` per chunk."""
    (folder / f"{name}.meta").write_bytes(share.meta)
    for k, chunk in enumerate(share.share_chunks):
        (folder / f"{name}.{k}").write_bytes(chunk)
    (folder / f"{name}.chunks").write_text(str(len(share.share_chunks)))


def _read_share(folder: Path, name: str) -> Any:
    from spu import libspu

    share = libspu.Share()
    share.meta = (folder / f"{name}.meta").read_bytes()
    count = int((folder / f"{name}.chunks").read_text())
    share.share_chunks = [(folder / f"{name}.{k}").read_bytes() for k in range(count)]
    return share


def _party(job: Path, rank: int) -> int:
    """One SPU party in its own process over brpc (TCP on 127.0.0.1, no TLS)."""
    import spu.api as spu_api
    from spu import libspu

    spec = json.loads((job / "job.json").read_text())
    config = libspu.RuntimeConfig()
    config.ParseFromString((job / "config.bin").read_bytes())
    executable = libspu.Executable()
    executable.ParseFromString((job / "executable.bin").read_bytes())
    desc = libspu.link.Desc()
    desc.id = "peer_spu"
    desc.recv_timeout_ms = int(spec["timeout_s"] * 1000)
    desc.connect_retry_times = 120
    desc.connect_retry_interval_ms = 500
    for r, port in enumerate(spec["ports"]):
        desc.add_party(f"party{r}", f"127.0.0.1:{port}")
    lctx = libspu.link.create_brpc(desc, rank)
    mine = job / f"rank{rank}"
    shares = [_read_share(mine, n) for n in executable.input_names]
    rt = spu_api.Runtime(lctx, config)
    lctx.barrier()  # all three are connected and loaded: start the clock together
    t0 = time.perf_counter()
    for name, share in zip(executable.input_names, shares, strict=True):
        rt.set_var(name, share)
    rt.run(executable)
    outs = [rt.get_var(n) for n in executable.output_names]
    seconds = time.perf_counter() - t0
    for name, share in zip(executable.output_names, outs, strict=True):
        _write_share(mine, name, share)
    (mine / "seconds.json").write_text(json.dumps(seconds))
    lctx.barrier()
    lctx.stop_link()
    return 0


def _multiprocess(config: Any, executable: Any, args: list[Any],
                  timeout: float) -> tuple[list[Any], float]:
    """Three party processes over brpc links; returns the outputs and the seconds from sharing the
    inputs to reconstructing the outputs (slowest party's run, parties' start-up excluded)."""
    import subprocess
    import tempfile

    import spu.api as spu_api
    from spu import libspu

    with tempfile.TemporaryDirectory(prefix="spu-brpc-") as tmp:
        job = Path(tmp)
        t0 = time.perf_counter()
        io = spu_api.Io(3, config)
        shares = [io.make_shares(a, libspu.Visibility.VIS_SECRET) for a in args]
        share_s = time.perf_counter() - t0
        for rank in range(3):
            (job / f"rank{rank}").mkdir()
            for name, share in zip(executable.input_names, shares, strict=True):
                _write_share(job / f"rank{rank}", name, share[rank])
        (job / "config.bin").write_bytes(config.SerializeToString())
        (job / "executable.bin").write_bytes(executable.SerializeToString())
        (job / "job.json").write_text(json.dumps({"ports": _free_ports(3), "timeout_s": timeout}))
        procs = [subprocess.Popen([sys.executable, __file__, "--party", str(r), "--job", str(job)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for r in range(3)]
        try:
            logs = [p.communicate(timeout=timeout)[0] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for rank, (p, log) in enumerate(zip(procs, logs, strict=True)):
            print(log, end="", flush=True)  # SPU's per-party link statistics go to the caller
            if p.returncode != 0:
                raise RuntimeError(f"SPU party {rank} exited with {p.returncode}:\n{log[-2000:]}")
        run_s = max(json.loads((job / f"rank{r}" / "seconds.json").read_text()) for r in range(3))
        t0 = time.perf_counter()
        outs = [io.reconstruct([_read_share(job / f"rank{r}", n) for r in range(3)])
                for n in executable.output_names]
        return outs, share_s + run_s + time.perf_counter() - t0


def _run_config(protocol: str, field: str, frac_bits: int, links: str, args: list[Any],
                timeout: float, fn: Any = _forward, repeat: int = 1) -> tuple[Any, dict]:
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
        spu_fe.Kind.JAX, fn, args, {}, names,
        [libspu.Visibility.VIS_SECRET] * len(args), lambda out: ["out0"])
    compile_s = time.perf_counter() - t0
    runs = []
    for _ in range(repeat):
        if links == "brpc":
            (logits,), seconds = _multiprocess(config, executable, args, timeout)
        else:
            t0 = time.perf_counter()
            (logits,) = _simulate(config, executable, args)
            seconds = time.perf_counter() - t0
        runs.append(seconds)
    return logits, {"protocol": protocol, "field": field, "frac_bits": frac_bits, "links": links,
                    "compile_seconds": compile_s, "seconds": runs[-1], "run_seconds": runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path,
                    help="safetensors with the input ('images' for cnn, 'x' for bert_layer) "
                         "and the weights")
    ap.add_argument("--model", choices=("cnn", "seq", "bert_layer", "bert_layer_puma"),
                    default="cnn",
                    help="the demo CNN or a Sequential (peer_spu.py), or one BERT layer "
                         "(transformer.py --spu)")
    ap.add_argument("--layers", default="",
                    help=f"seq: comma-separated layers, each one of {', '.join(SEQ_LAYERS)}")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per configuration (compiled once); every run's seconds are kept")
    ap.add_argument("--heads", type=int, default=12, help="bert_layer: attention heads")
    ap.add_argument("--eps", type=float, default=1e-12, help="bert_layer: LayerNorm epsilon")
    ap.add_argument("--out", type=Path, help="folder for logits.safetensors and manifest.json")
    ap.add_argument("--configs", default="ABY3:FM64:18",
                    help="comma-separated PROTOCOL:FIELD:FRAC_BITS[:mem|:brpc] (default mem)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per SPU run")
    ap.add_argument("--party", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    if ns.party is not None and ns.job is not None:
        return _party(ns.job, ns.party)
    if ns.data is None or ns.out is None:
        # `make bench` runs every benchmarks/*.py; this one is only a helper of two others.
        print("spu_worker.py is started by benchmarks/peer_spu.py and benchmarks/transformer.py "
              "--spu inside .venv-spu; run those instead (see its docstring)")
        return 0
    import numpy as np
    from safetensors.numpy import load_file, save_file

    data = load_file(str(ns.data))
    if ns.repeat < 1:
        raise SystemExit(f"--repeat must be at least 1, got {ns.repeat}")
    if ns.model in ("bert_layer", "bert_layer_puma"):
        names = ("x", *BERT_LAYER_NAMES)
        fn = _bert_layer(ns.heads, ns.eps, puma=ns.model == "bert_layer_puma")
    elif ns.model == "seq":
        layers = [k for k in ns.layers.split(",") if k]
        bad = [k for k in layers if k not in SEQ_LAYERS]
        if not layers or bad:
            raise SystemExit(f"--layers {ns.layers!r}: expected a comma-separated list of "
                             f"{', '.join(SEQ_LAYERS)}")
        names, fn = ("images", *seq_weight_names(layers)), _sequential(layers)
    else:
        names, fn = ("images", *WEIGHT_NAMES), _forward
    missing = [k for k in names if k not in data]
    if missing:
        raise SystemExit(f"{ns.data}: missing tensors {missing}")
    args = [data[k].astype(np.float32) for k in names]
    ns.out.mkdir(parents=True, exist_ok=True)
    runs, logits = [], {}
    for spec in ns.configs.split(","):
        parts = spec.split(":")
        links = parts[3] if len(parts) == 4 else "mem"
        if len(parts) not in (3, 4) or not parts[2].isdigit() or links not in ("mem", "brpc"):
            raise SystemExit(f"bad config {spec!r}; expected PROTOCOL:FIELD:FRAC_BITS[:mem|:brpc],"
                             " e.g. ABY3:FM64:18:brpc")
        out, info = _run_config(parts[0], parts[1], int(parts[2]), links, args, ns.timeout, fn,
                                ns.repeat)
        info["model"] = ns.model
        key = "_".join(parts)
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
