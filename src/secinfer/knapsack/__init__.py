"""Block ReLU with per-channel patch sizes chosen by a multiple-choice knapsack.

Paper: Gorski, Jevnisek, Avidan, "Securing Neural Networks with Knapsack Optimization",
arXiv 2304.10442. Pipeline: :mod:`distortion` (measure) -> :mod:`solve` (choose under a DReLU
budget) -> :mod:`spec` (JSON spec file) -> :mod:`finetune` (recover accuracy). The secure block ReLU
reads the same spec through :func:`load_spec`.
"""

from secinfer.models.block_relu import IDENTITY, ZERO, BlockReLU, block_cost, block_relu
from secinfer.models.block_spec import apply_spec, drelu_counts, load_spec, save_spec

__all__ = [
    "IDENTITY",
    "ZERO",
    "BlockReLU",
    "apply_spec",
    "block_cost",
    "block_relu",
    "drelu_counts",
    "load_spec",
    "save_spec",
]
