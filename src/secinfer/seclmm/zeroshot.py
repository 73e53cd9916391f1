"""Zero-shot classification by prompt embeddings (CLIP's recipe, and its text analogue).

Each class name fills a prompt template; the prompt embeddings are the classifier. An input is
assigned the class whose prompt embedding has the largest cosine similarity with its own
embedding (for CLIP: logit_scale * cosine, the same argmax).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ZeroShotResult", "prompts_for", "zeroshot_from_embeddings", "zeroshot_text"]


@dataclass(frozen=True)
class ZeroShotResult:
    """Accuracy, predictions and the (inputs x classes) cosine similarities."""

    accuracy: float
    predictions: torch.Tensor
    similarities: torch.Tensor


def prompts_for(classes: list[str], template: str) -> list[str]:
    """``template`` filled with each class name; the template must contain ``{label}``."""
    if "{label}" not in template:
        raise ValueError(f"prompt template must contain '{{label}}', got {template!r}")
    return [template.format(label=c) for c in classes]


def zeroshot_from_embeddings(inputs: torch.Tensor, class_embeddings: torch.Tensor,
                             labels: torch.Tensor) -> ZeroShotResult:
    """Classify L2-normalised ``inputs [N, D]`` against ``class_embeddings [C, D]``."""
    if (inputs.ndim != 2 or class_embeddings.ndim != 2
            or inputs.shape[1] != class_embeddings.shape[1]):
        raise ValueError(f"embedding shapes do not match: inputs {tuple(inputs.shape)}, "
                         f"classes {tuple(class_embeddings.shape)}")
    if len(labels) != len(inputs):
        raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
    a = torch.nn.functional.normalize(inputs.double(), dim=-1)
    b = torch.nn.functional.normalize(class_embeddings.double(), dim=-1)
    sims = a @ b.T
    pred = sims.argmax(dim=-1)
    acc = float((pred == labels).double().mean().item())
    return ZeroShotResult(acc, pred, sims)


def zeroshot_text(encoder: torch.nn.Module, texts: list[str], labels: torch.Tensor,
                  classes: list[str], template: str, batch_size: int = 32,
                  text_embeddings: torch.Tensor | None = None) -> ZeroShotResult:
    """Zero-shot text classification with a ``TextEncoder`` (``encode`` method).

    ``text_embeddings`` may be passed when already computed with the same encoder.
    """
    encode = getattr(encoder, "encode", None)
    if encode is None:
        raise TypeError("encoder must have an encode(texts) method (see TextEncoder)")
    class_emb = encode(prompts_for(classes, template))
    emb = text_embeddings if text_embeddings is not None else encode(texts, batch_size)
    return zeroshot_from_embeddings(emb, class_emb, labels)
