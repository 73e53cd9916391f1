"""Each plaintext approximation against float64 PyTorch on fresh random inputs over its
documented range, at the one config's defaults (the secure ops' knobs)."""

from __future__ import annotations

import math

import pytest
import torch

from secinfer.mpc import approx as A
from secinfer.mpc.config import NonlinearConfig

F64 = torch.float64


def _uniform(n: int, lo: float, hi: float, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.rand(n, dtype=dtype) * (hi - lo) + lo


def _log_uniform(n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.exp(_uniform(n, math.log(lo), math.log(hi)))


def test_sig_seclmm_bound_and_pieces() -> None:
    t = torch.cat([_uniform(200_000, -8, 8), torch.tensor([-7.0, -2.2, 0.0, 2.2, 7.0], dtype=F64)])
    err = (A.sig_seclmm(t) - torch.sigmoid(t)).abs().max().item()
    assert err <= 4e-3
    # Outside [-7, 7] the pieces are the constants 0 and 1 (the seed's broken copies are not).
    far = torch.cat([_uniform(1000, -50, -7.001), _uniform(1000, 7.001, 50)])
    assert torch.equal(A.sig_seclmm(far), (far > 0).to(F64))


def test_quick_gelu_sig_bound() -> None:
    x = _uniform(200_000, -8, 8)
    assert (A.quick_gelu_sig(x) - x * torch.sigmoid(1.702 * x)).abs().max().item() <= 4e-3
    assert (A.quick_gelu_sig(x) - torch.nn.functional.gelu(x)).abs().max().item() <= 2.1e-2


def test_exp_limit_bound_and_cut() -> None:
    x = _uniform(200_000, -14, 0)
    assert (A.exp_limit(x) - x.exp()).abs().max().item() <= 1.07e-3  # n = 8, the default
    assert (A.exp_limit(x, iters=10) - x.exp()).abs().max().item() <= 2.7e-4
    assert torch.all(A.exp_limit(_uniform(100, -1e6, -14.001)) == 0)
    with pytest.raises(ValueError, match="lower"):
        A.exp_limit(x, iters=3, lower=-14.0)


def test_reciprocal_and_rsqrt_relative_bound() -> None:
    a = _log_uniform(200_000, 2.0 ** -16, 2.0 ** 16 * 0.999)
    assert (A.reciprocal_newton(a) * a - 1).abs().max().item() <= 2e-10
    assert (A.rsqrt_newton(a) * a.sqrt() - 1).abs().max().item() <= 4e-10


def test_sigmoid_tanh_gelu_bounds() -> None:
    x = torch.cat([_uniform(100_000, -10, 10), _uniform(20_000, -1e3, 1e3)])
    assert (A.sigmoid_mpc(x) - torch.sigmoid(x)).abs().max().item() <= 8.7e-4
    assert (A.tanh_mpc(x) - torch.tanh(x)).abs().max().item() <= 1.75e-3
    gelu = torch.nn.functional.gelu(x)
    assert (A.gelu_poly(x) - gelu).abs().max().item() <= 4.1e-4
    assert (A.gelu_tanh_mpc(x) - gelu).abs().max().item() <= 1.35e-3
    y = _uniform(100_000, -8, 8)
    assert (A.quick_gelu_mpc(y) - y * torch.sigmoid(1.702 * y)).abs().max().item() <= 1.45e-3


def test_i_exp_relative_bound() -> None:
    # 2^-z for z <= quant_max_shift = 16: relative bound down to -16 ln 2, then below 2^-16
    x = _uniform(200_000, -16 * math.log(2.0), 0)
    assert ((A.i_exp(x) - x.exp()) / x.exp()).abs().max().item() <= 3.1e-3
    far = _uniform(10_000, -40, -16 * math.log(2.0) - 1e-9)
    # at the clamp the polynomial's own relative error applies to 2^-16 (a seed hit 2^-16 + 6e-10)
    assert A.i_exp(far).max().item() <= 2.0 ** -16 * (1 + 3.1e-3)
    x = _uniform(200_000, -20, 0)
    assert ((A.i_exp(x, max_shift=31) - x.exp()) / x.exp()).abs().max().item() <= 3.1e-3


@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0])
def test_softmaxes_with_mask(scale: float) -> None:
    s = torch.randn(64, 12, 50, dtype=F64) * scale
    keep = torch.rand(64, 1, 50) < 0.7
    keep[..., 0] = True
    ref = torch.softmax(s.masked_fill(~keep, -math.inf), dim=-1)
    k = keep.expand_as(s)
    mpc = A.softmax_mpc(s, -1, k)
    quant = A.softmax_quant(s, -1, k)
    quant_mpc = A.softmax_quant(s, -1, k, A.ApproxConfig(emulate_mpc=True))
    assert (mpc - ref).abs().max().item() <= 6.5e-3  # exp with n = 8 squarings
    assert (quant - ref).abs().max().item() <= 1.5e-3
    assert (quant_mpc - ref).abs().max().item() <= 1.5e-3
    assert torch.all(mpc[~k] == 0) and torch.all(quant[~k] == 0)


def test_layer_norm_mpc() -> None:
    # row variances near both ends of the secure LayerNorm's range [2^ln_lo, 2^ln_hi)
    for scale in (2.0 ** -3.5, 1.0, 2.0 ** 6.5):
        x = torch.randn(256, 384, dtype=F64) * scale + torch.randn(256, 1, dtype=F64)
        w, b = torch.randn(384, dtype=F64), torch.randn(384, dtype=F64)
        ref = torch.nn.functional.layer_norm(x, (384,), w, b, 1e-12)
        err = (A.layer_norm_mpc(x, w, b, 1e-12) - ref).abs().max().item()
        assert err <= 1e-8 * w.abs().max().item()


def test_float32_matches_float64() -> None:
    x = _uniform(50_000, -8, 8)
    for fn in (A.sig_seclmm, A.gelu_poly, A.sigmoid_mpc, A.tanh_mpc, A.exp_limit):
        arg = -x.abs() if fn is A.exp_limit else x
        out32 = fn(arg.float())
        assert out32.dtype == torch.float32
        # float32 rounding is amplified by exp_limit's 2^n squarings: about 2^10 * 6e-8.
        assert (out32.double() - fn(arg)).abs().max().item() <= 1e-4
    s = torch.randn(32, 40, dtype=F64) * 4
    out32 = A.softmax_quant(s.float())
    assert out32.dtype == torch.float32
    assert (out32.double() - A.softmax_quant(s)).abs().max().item() <= 1e-6


@pytest.mark.parametrize("kwargs, match", [
    ({"hidden_act": "relu"}, "hidden_act"),
    ({"softmax_act": "exact"}, "softmax_act"),
    ({"gelu_mode": "erf"}, "gelu_mode"),
])
def test_config_rejects_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        A.ApproxConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs, match", [
    ({"exp_iters": 0}, "exp_iters"),
    ({"ln_lo": 5, "ln_hi": 5}, "ln_lo"),
    ({"exp_lower": 1.0}, "exp_lower"),
])
def test_the_one_nonlinear_config_rejects_bad_knobs(kwargs: dict[str, object],
                                                    match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NonlinearConfig(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="NonlinearConfig"):
        A.ApproxConfig(nonlinear=kwargs)  # type: ignore[arg-type]


def test_plaintext_emulation_takes_the_secure_knobs() -> None:
    """One config: changing a knob in the ApproxConfig's NonlinearConfig changes the
    emulation exactly as the function called with that knob would."""
    x = _uniform(10_000, -12, 0)
    ten = A.ApproxConfig(emulate_mpc=True, nonlinear=NonlinearConfig(exp_iters=10))
    s = torch.randn(8, 20, dtype=F64) * 3
    assert torch.equal(A.sigmoid_mpc(x, ten), A.sigmoid_mpc(x, ten))
    assert not torch.equal(A.softmax_mpc(s, -1, None, ten), A.softmax_mpc(s))
    assert A.ApproxConfig().nonlinear == NonlinearConfig()  # the secure ops' defaults
    ln = A.ApproxConfig(nonlinear=NonlinearConfig(ln_lo=-2, ln_hi=3))
    x2 = torch.randn(4, 16, dtype=F64) * 2 ** -3  # variance 2^-6, outside [2^-2, 2^3)
    ref = torch.nn.functional.layer_norm(x2, (16,), eps=1e-12)
    assert (A.layer_norm_mpc(x2, None, None, 1e-12) - ref).abs().max() < 1e-6
    assert (A.layer_norm_mpc(x2, None, None, 1e-12, ln) - ref).abs().max() > 1e-2


def test_public_api() -> None:
    for name in A.__all__:
        assert hasattr(A, name), name


def test_public_api_of_every_clip_module() -> None:
    import importlib

    for mod in ("patch", "tasks", "zeroshot", "fewshot", "finetune", "tinyclip"):
        m = importlib.import_module(f"secinfer.seclmm.{mod}")
        assert m.__all__, mod
        for name in m.__all__:
            assert hasattr(m, name), f"{mod}.{name}"
