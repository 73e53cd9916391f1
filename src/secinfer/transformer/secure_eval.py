"""Secure-vs-plaintext evaluations behind ``secinfer experiments clip ... --secure``.

* :func:`secure_clip_zeroshot`: CLIP zero-shot of a subset of images on shares
  (:func:`~secinfer.transformer.clip.secure_clip`, the image and the prompts shared by the
  user) against the same (possibly patched) model in plaintext float64.
* :func:`secure_text_eval`: sentence embeddings of a subset of articles on shares
  (:func:`~secinfer.transformer.runner.secure_sentence_embeddings`); zero-shot against
  prompt embeddings computed in plaintext by the same encoder, and a linear probe that the
  model owner trains on plaintext embeddings of its own training data, applied to the secure
  test embeddings.

Every figure is measured on the same subset for both sides: plaintext accuracy, secure
accuracy, agreement of the predictions, minimum cosine between secure and plaintext
embeddings, wall seconds of the secure run, and bytes sent (CLIP; all parties).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F

from .clip import secure_clip
from .layer import SecureTransformerConfig
from .runner import secure_sentence_embeddings

__all__ = ["secure_clip_zeroshot", "secure_text_eval"]


def _acc(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return float((pred == labels).double().mean())


def _compare(plain_pred: torch.Tensor, sec_pred: torch.Tensor, labels: torch.Tensor
             ) -> dict[str, float]:
    return {"plaintext_acc": _acc(plain_pred, labels), "secure_acc": _acc(sec_pred, labels),
            "agreement": _acc(sec_pred, plain_pred)}


@torch.no_grad()
def secure_clip_zeroshot(bundle: Any, images: torch.Tensor, labels: torch.Tensor,
                         prompts: list[str], cfg: SecureTransformerConfig,
                         tls: bool = False) -> dict[str, Any]:
    """Zero-shot on shares vs plaintext float64 on the same images; prompt i is class i."""
    model = copy.deepcopy(bundle.model).double().eval()
    ids, mask = bundle.tokenize(prompts)
    ref = model(input_ids=ids, attention_mask=mask, pixel_values=images.double())
    res = secure_clip(bundle, images, prompts, cfg, tls=tls)
    assert res.image_embeds is not None and res.text_embeds is not None
    out: dict[str, Any] = {"n": len(images), "tls": tls}
    out.update(_compare(ref.logits_per_image.argmax(-1), res.logits.argmax(-1), labels))
    out.update({
        "min_cosine_image": float(F.cosine_similarity(res.image_embeds, ref.image_embeds,
                                                      -1).min()),
        "min_cosine_text": float(F.cosine_similarity(res.text_embeds, ref.text_embeds,
                                                     -1).min()),
        "max_logit_error": float((res.logits - ref.logits_per_image).abs().max()),
        "seconds": res.seconds, "bytes_inference": res.bytes_inference,
        "bytes_weights": res.bytes_weights, "rounds": res.rounds})
    return out


@torch.no_grad()
def secure_text_eval(encoder: Any, texts: list[str], labels: torch.Tensor,
                     prompt_embeddings: torch.Tensor, train_embeddings: torch.Tensor,
                     train_labels: torch.Tensor, cfg: SecureTransformerConfig,
                     tls: bool = False) -> dict[str, Any]:
    """Zero-shot and linear probe of ``texts`` embedded on shares vs in plaintext.

    ``encoder``: a :class:`~secinfer.seclmm.tasks.TextEncoder` (``.model`` a BertModel,
    ``.tokenizer``, ``.max_length``, ``.encode``); ``prompt_embeddings`` [C, H] and
    ``train_embeddings`` come from the same encoder in plaintext (the owner's side).
    """
    from sklearn.linear_model import LogisticRegression

    plain = encoder.encode(texts).double()
    t0 = time.perf_counter()
    sec = secure_sentence_embeddings(encoder.model, encoder.tokenizer, texts, cfg,
                                     max_length=encoder.max_length, tls=tls)
    seconds = time.perf_counter() - t0
    cos = F.cosine_similarity(sec, plain, -1)
    prompts = prompt_embeddings.double()
    clf = LogisticRegression(max_iter=2000).fit(train_embeddings.double().numpy(),
                                               train_labels.numpy())

    def probe(x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(clf.predict(x.numpy()))

    return {"n": len(texts), "tls": tls, "max_length": encoder.max_length,
            "zeroshot": _compare((plain @ prompts.T).argmax(-1), (sec @ prompts.T).argmax(-1),
                                 labels),
            "probe": _compare(probe(plain), probe(sec), labels),
            "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "seconds": seconds}
