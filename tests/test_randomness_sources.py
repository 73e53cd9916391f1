"""Static check: no secret value in secinfer is drawn from a non-cryptographic RNG.

Every module under ``src/secinfer`` is parsed (AST) and every use of a non-cryptographic random
source is listed: ``torch.Generator``, ``manual_seed`` / ``torch.seed``, the ``torch.rand*`` /
``randint`` / ``randperm`` / ``normal`` / ``bernoulli`` / ``multinomial`` / ``poisson`` family,
in-place samplers (``.uniform_()``, ``.normal_()``, ``.random_()``, ...), ``torch.random``,
``import random``, and ``numpy.random``. Secrets must come from the AES-CTR PRG
(``secinfer.mpc.prg``, keyed by the OS CSPRNG) or from ``secrets`` directly.

A use is accepted only if

* its whole file is in :data:`NON_SECRET_FILES`: training, experiment and test-data modules
  whose randomness is not secret (data shuffling, weight init, calibration subsets). None of
  them may lie in :data:`SECRET_MODULES`; or
* it is one of the :data:`REVIEWED` uses, named by file, enclosing function and call, each with
  the reason it is not secret (test payloads and benchmark inputs that live in secret-bearing
  folders).

Everything else fails, including any new file: the default is deny.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "secinfer"
# the research code moved out of the package is scanned too: it runs the real enclave round and
# draws secret gains; its paths are written "experiments/<file>"
EXPERIMENTS = REPO / "experiments"

# Modules (files, or folders ending in "/") that draw secret values: masks, shares, shuffles,
# permutations, fingerprints, checksum vectors, correlated randomness, keys. No file-level
# exemption may cover them.
SECRET_MODULES = (
    "mpc/",  # shares, Beaver triples, comparison masks and flips (prg.py is the source)
    "net/",  # session ids, nonces, ports
    "ring/",
    "serve/",  # input sharing for users
    "models/",  # secure plans and bundles (weight shares)
    "stip/transform.py",  # STIP's secret permutations
    "stip/protocol.py",
    "stip/provision.py",
    "stip/user.py",
    "stip/cloud.py",
    "transformer/model.py",
    "transformer/layer.py",
    "transformer/clip.py",
    "transformer/runner.py",
    "transformer/secure_eval.py",
    "tee/mask.py",  # one-time pads, channel permutations
    "tee/monitor.py",  # fingerprints, checksum vectors
    "tee/enclave.py",
    "tee/device.py",
    "tee/bundle.py",  # permutations at provisioning
    "tee/protocol.py",
    "tee/rand.py",
    "experiments/tee_faults.py",  # the fault campaign runs the real enclave round
    "experiments/mpc_faults.py",  # the MPC fault campaign runs the real engine
    "tee/programs.py",
    "tee/quantize.py",
    "tee/program.py",
    "experiments/tee_desim.py",  # secret gain signs (its data shuffling is reviewed below)
)

# Whole files whose randomness is legitimately non-secret. Reason per file.
NON_SECRET_FILES = {
    "tee/qat.py": "training: data shuffling; training_generator() is documented non-secret",
    "experiments/tee_experiments.py":
        "experiments: calibration subsets, thief data, training shuffles",
    "tee/fmnist.py": "calibration subset of the training images (public data)",
    "tee/bench.py": "benchmark inputs (random images fed to the enclave as queries)",
    "seclmm/tinyclip.py": "training a tiny CLIP: weight init and batch sampling",
    "seclmm/finetune.py": "fine-tuning: data order",
    "seclmm/fewshot.py": "few-shot experiment: which support examples are drawn",
    "experiments/clip_experiments.py":
        "experiment subsets with recorded seeds (reproducible figures)",
    "seclmm/tasks.py": "stratified data subsets for experiments",
    "knapsack/finetune.py": "fine-tuning: data order",
    "cli/knapsack.py": "which calibration samples the distortion estimate uses",
    "seg/scenes.py": "fixed-seed layout of the public segmentation scenes (data, no secret)",
    "seg/train.py": "training the segmentation nets: data order",
}

# Reviewed uses inside secret-bearing folders: (file, enclosing function, call) -> reason.
REVIEWED = {
    ("experiments/mpc_faults.py", "bert_workload", "torch.Generator"):
        "the campaign's BERT layer: seeded random weights and inputs (test data, not secrets)",
    ("experiments/mpc_faults.py", "bert_workload", "manual_seed"): "same test data",
    ("experiments/mpc_faults.py", "bert_workload", "torch.randn"): "same test data",
    ("net/programs.py", "sample_tensors", "torch.Generator"):
        "fixed-seed wire-format test payload (must be deterministic, carries no secret)",
    ("net/programs.py", "sample_tensors", "manual_seed"): "same test payload",
    ("net/programs.py", "sample_tensors", "torch.randint"): "same test payload",
    ("net/programs.py", "bulk", "torch.randint"): "throughput benchmark payload",
    ("serve/programs.py", "plan_latency", "torch.randn"):
        "benchmark: party 0 plays the user with a random query image",
    ("transformer/programs.py", "random_input", "torch.Generator"):
        "benchmark input with a caller-chosen seed for the plaintext check",
    ("transformer/programs.py", "random_input", "manual_seed"): "same benchmark input",
    ("transformer/programs.py", "random_input", "torch.randn"): "same benchmark input",
    ("transformer/programs.py", "encoder_latency", "torch.Generator"):
        "benchmark: random encoder weights (P0 plays the model owner); not a protocol secret",
    ("transformer/programs.py", "encoder_latency", "manual_seed"): "same benchmark weights",
    ("transformer/weights.py", "random_encoder.r", "torch.randn"):
        "random test/benchmark weights, generator chosen by the caller",
    ("experiments/tee_desim.py", "desim_train", "torch.randperm"):
        "training-data shuffle order",
    ("ring/kernels.py", "measure", "torch.Generator"):
        "fixed-seed operands for timing the two ring kernels; no secret goes near them",
    ("ring/kernels.py", "measure", "manual_seed"): "same timing operands",
    ("ring/kernels.py", "measure.rnd", "torch.randint"): "same timing operands",
}

_TORCH_SAMPLERS = {
    "rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "normal",
    "bernoulli", "multinomial", "poisson", "Generator", "manual_seed", "seed", "default_generator",
}
_INPLACE = {"uniform_", "normal_", "random_", "bernoulli_", "exponential_", "geometric_",
            "cauchy_", "log_normal_"}


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def scan_source(text: str) -> list[tuple[int, str, str]]:
    """``(line, enclosing function, what)`` for every non-cryptographic RNG use in ``text``.

    The function is the dotted path of nested defs (``outer.inner``). Type annotations are not
    uses (a parameter typed ``torch.Generator`` draws nothing by itself).
    """
    tree = ast.parse(text)
    hits: list[tuple[int, str, str]] = []
    skip: set[int] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.arg | ast.AnnAssign) and n.annotation is not None:
            skip.add(id(n.annotation))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.returns is not None:
            skip.add(id(n.returns))

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            if id(child) in skip:
                continue
            name = func
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = child.name if func == "<module>" else f"{func}.{child.name}"
            what = _classify(child)
            if what:
                hits.append((getattr(child, "lineno", 0), name, what))
            visit(child, name)

    visit(tree, "<module>")
    return hits


def _classify(node: ast.AST) -> str | None:
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name == "random" or a.name.startswith("numpy.random"):
                return f"import {a.name}"
    if isinstance(node, ast.ImportFrom):
        mod = node.module or ""
        if mod == "random" or mod.startswith("numpy.random") or mod == "torch.random":
            return f"from {mod} import"
        if mod in ("numpy", "torch") and any(a.name == "random" for a in node.names):
            return f"from {mod} import random"
        if mod == "torch" and any(a.name in _TORCH_SAMPLERS for a in node.names):
            return "from torch import <sampler>"
    if isinstance(node, ast.Attribute):
        if node.attr == "manual_seed":
            return "manual_seed"
        d = _dotted(node)
        if d is None:
            return None
        if d.startswith(("np.random", "numpy.random", "torch.random")):
            return d
        if d.startswith("torch.") and d.split(".")[1] in _TORCH_SAMPLERS and d.count(".") == 1:
            return d
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr in _INPLACE:
        return f".{node.func.attr}()"
    return None


def _files() -> list[Path]:
    found = [*SRC.rglob("*.py"), *EXPERIMENTS.rglob("*.py")]
    return sorted(p for p in found if "__pycache__" not in p.parts)


def _rel(p: Path) -> str:
    if p.is_relative_to(EXPERIMENTS):
        return p.relative_to(REPO).as_posix()
    return p.relative_to(SRC).as_posix()


def _path(rel: str) -> Path:
    return REPO / rel if rel.startswith("experiments/") else SRC / rel


def _is_secret(rel: str) -> bool:
    return any(rel == m or (m.endswith("/") and rel.startswith(m)) for m in SECRET_MODULES)


def _violations() -> tuple[list[str], set[tuple[str, str, str]]]:
    bad, used = [], set()
    for p in _files():
        rel = _rel(p)
        if rel in NON_SECRET_FILES:
            continue
        for line, func, what in scan_source(p.read_text()):
            key = (rel, func, what)
            if key in REVIEWED:
                used.add(key)
                continue
            bad.append(f"{rel}:{line} in {func}(): {what}")
    return bad, used


def test_no_unreviewed_rng_in_secinfer() -> None:
    bad, _ = _violations()
    assert not bad, ("non-cryptographic RNG where secrets are drawn (use secinfer.mpc.prg.PRG, "
                     "or add a reviewed, non-secret reason):\n  " + "\n  ".join(bad))


def test_allowlists_are_sound() -> None:
    for rel in NON_SECRET_FILES:
        assert _path(rel).is_file(), f"stale NON_SECRET_FILES entry {rel}"
        assert not _is_secret(rel), f"{rel} draws secrets: it cannot be exempt as a whole file"
    for m in SECRET_MODULES:
        assert _path(m).exists(), f"SECRET_MODULES names a missing path {m}"
    _, used = _violations()
    stale = set(REVIEWED) - used
    assert not stale, f"reviewed uses that no longer exist (remove them): {sorted(stale)}"


_OLD_TEE = '''
import secrets
import torch

def secure_generator(device="cpu"):
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))

def ring_random(shape, gen):
    return torch.randint(-2**31, 2**31, shape, dtype=torch.int64, generator=gen)

def draw(gen, n):
    p = torch.randperm(n, generator=gen)
    noise = torch.randn((2, n), generator=gen, dtype=torch.float64)
    return p, noise
'''


@pytest.mark.parametrize(("src", "expect"), [
    (_OLD_TEE, {"torch.Generator", "manual_seed", "torch.randint", "torch.randperm",
                "torch.randn"}),
    ("import random\nx = random.random()\n", {"import random"}),
    ("import numpy as np\nx = np.random.default_rng(0)\n", {"np.random.default_rng"}),
    ("from numpy.random import default_rng\n", {"from numpy.random import"}),
    ("import torch\ng = torch.empty(3).uniform_()\n", {".uniform_()"}),
    ("from torch import randperm\n", {"from torch import <sampler>"}),
    ("from secinfer.mpc.prg import PRG, new_seed\nm = PRG(new_seed()).ring((3,))\n", set()),
])
def test_scanner_catches_known_patterns(src: str, expect: set[str]) -> None:
    found = {what for _, _, what in scan_source(src)}
    assert expect <= found and (expect or not found), found


def test_scanner_flags_the_pre_fix_tee_code() -> None:
    # the audited tee code (secure_generator in mask.py) must be rejected in a secret module
    hits = scan_source(_OLD_TEE)
    assert {f for _, f, _ in hits} == {"secure_generator", "ring_random", "draw"}
    assert _is_secret("tee/mask.py") and "tee/mask.py" not in NON_SECRET_FILES
