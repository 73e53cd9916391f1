"""Compile-time model transforms applied before capture (plaintext, on the owner's side).

``maxpool_to_avgpool`` is the Knapsack seed's first step (Gorski, Jevnisek, Avidan, arXiv
2304.10442): on shares a k x k max pool costs ``k^2 - 1`` comparisons per output in
``ceil(log2 k^2)`` rounds of DReLU + selection, while an average pool is a public linear map
(local: a sum and a product with the public 1/k^2, one truncation). The swap changes the
function, so the network is fine-tuned afterwards (:func:`secinfer.knapsack.finetune.distill`);
the ReLUs that the capture used to move after each max pool then stay before the average
pool, where the knapsack can replace them by block ReLUs.
"""

from __future__ import annotations

import copy

from torch import nn

__all__ = ["maxpool_to_avgpool"]


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def maxpool_to_avgpool(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every ``nn.MaxPool2d`` module replaced by the average pool of
    the same kernel, stride and padding; returns ``(copy, number replaced)``.

    Padding counts as zeros in the average (``count_include_pad``), which is what the secure
    average pool computes. Dilated or ceil-mode max pools have no such counterpart and are
    refused with an error naming the module; ``F.max_pool2d`` calls inside ``forward`` cannot be
    swapped by module replacement, so a model without any ``nn.MaxPool2d`` is refused too.
    """
    out = copy.deepcopy(model)
    swaps: list[tuple[nn.Module, str, nn.MaxPool2d]] = []
    for name, parent in out.named_modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                full = f"{name}.{child_name}" if name else child_name
                if _pair(child.dilation) != (1, 1) or child.ceil_mode:
                    raise ValueError(f"{full}: a max pool with dilation {child.dilation} or "
                                     "ceil_mode has no average-pool counterpart")
                if child.return_indices:
                    raise ValueError(f"{full}: a max pool that returns indices cannot be "
                                     "replaced by an average pool")
                swaps.append((parent, child_name, child))
    if not swaps:
        raise ValueError("the model has no nn.MaxPool2d module to replace (F.max_pool2d in "
                         "forward cannot be swapped: use a module)")
    for parent, child_name, mp in swaps:
        stride = mp.stride if mp.stride is not None else mp.kernel_size
        setattr(parent, child_name, nn.AvgPool2d(mp.kernel_size, stride, mp.padding,
                                                 ceil_mode=False, count_include_pad=True))
    return out, len(swaps)
