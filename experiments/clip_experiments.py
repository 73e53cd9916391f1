"""End-to-end plaintext experiments behind ``secinfer experiments clip ...`` (BBC/MiniLM and
tiny CLIP).

Each function takes an ``ApproxConfig`` and an ``ExperimentConfig`` and returns a JSON-ready
dict of figures. Data subsets are stratified and drawn with a seeded generator so reports are
reproducible; the 70/30 split uses ``random_state`` as in ``../shared/data.md``.

With ``ExperimentConfig.secure`` the final model (after fine-tuning when there is one) is
also run on secret shares for a random subset of ``secure_limit`` test examples (images:
both CLIP towers on shares; BBC: the article embeddings on shares), and the result gets a
``"secure"`` entry with plaintext and secure accuracy on that subset, agreement and cosines
(see :mod:`secinfer.transformer.secure_eval`).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from secinfer.mpc.approx import ApproxConfig
from secinfer.seclmm.fewshot import few_shot, linear_probe
from secinfer.seclmm.finetune import FinetuneConfig, finetune_text
from secinfer.seclmm.patch import patch_model
from secinfer.seclmm.tasks import (
    BBC_PROMPT,
    TextDataset,
    load_bbc,
    load_minilm,
    stratified_split,
    stratified_subset,
)
from secinfer.seclmm.tinyclip import (
    CLIP_TEMPLATES,
    FMNIST_CLASSES,
    ClipBundle,
    load_clip,
    make_tiny_clip,
    save_clip,
    train_clip,
    zeroshot_clip,
)
from secinfer.seclmm.zeroshot import zeroshot_text

__all__ = ["TASKS", "ExperimentConfig", "run_bbc", "run_tinyclip", "run_task"]

Task = Literal["bbc", "fmnist-tinyclip"]
TASKS: tuple[str, ...] = ("bbc", "fmnist-tinyclip")


@dataclass(frozen=True)
class ExperimentConfig:
    """What to run and on how much data.

    Attributes:
        finetune: fine-tune with the approximations on, then measure again.
        test_per_class / train_per_class: stratified subsets of the test and training splits
            (None: the whole split). BBC's split is 70/30 of 2,225 articles.
        max_length: tokens per article for MiniLM.
        k_shot / episodes / fewshot_method: the N-way K-shot setting (N = classes available).
        ft_epochs / ft_lr / ft_steps: fine-tuning length (text: epochs over the training
            subset; tiny CLIP: optimizer steps).
        seed: subsets, episodes and shuffling; None draws one from the OS CSPRNG.
        random_state: the fixed 70/30 evaluation split (data.md uses 0).
        clip_folder: load this CLIP (HF folder) instead of training a tiny one.
        clip_train_steps: steps of the tiny CLIP's initial training.
        save_folder: save the trained tiny CLIP there (safetensors).
        secure: also run a subset on secret shares (4 thread parties; see the module doc).
        secure_limit: that subset's size (None: 50 images for CLIP, 5 articles for BBC).
        secure_tls: the secure parties talk over real mutual-TLS sockets, not queues.
    """

    finetune: bool = False
    test_per_class: int | None = None
    train_per_class: int | None = None
    max_length: int = 128
    k_shot: int = 5
    episodes: int = 20
    fewshot_method: Literal["proto", "probe"] = "proto"
    ft_epochs: int = 1
    ft_lr: float = 3e-5
    ft_steps: int = 100
    seed: int | None = None
    random_state: int = 0
    clip_folder: str | None = None
    clip_train_steps: int = 300
    save_folder: str | None = None
    secure: bool = False
    secure_limit: int | None = None
    secure_tls: bool = False

    def __post_init__(self) -> None:
        if self.secure_limit is not None and self.secure_limit < 1:
            raise ValueError(f"secure_limit must be positive, got {self.secure_limit}")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bbc_split(exp: ExperimentConfig, seed: int) -> tuple[TextDataset, TextDataset]:
    data = load_bbc()
    train_idx, test_idx = stratified_split(data.labels, 0.3, exp.random_state)
    train, test = data.subset(train_idx), data.subset(test_idx)
    if exp.train_per_class is not None:
        train = train.subset(stratified_subset(train.labels, exp.train_per_class, _gen(seed)))
    if exp.test_per_class is not None:
        test = test.subset(stratified_subset(test.labels, exp.test_per_class, _gen(seed + 1)))
    return train, test


def _secure_subset(n: int, limit: int, seed: int) -> torch.Tensor:
    """Indices of the secure subset: the first ``limit`` of a seeded permutation."""
    return torch.randperm(n, generator=_gen(seed + 11))[:limit].sort().values


def _secure_cfg(approx: ApproxConfig) -> Any:
    from secinfer.transformer import SecureTransformerConfig

    # one config: the secure run takes the same non-linearity knobs as the plaintext emulation
    return SecureTransformerConfig(hidden_act=approx.hidden_act, softmax_act=approx.softmax_act,
                                   nonlinear=approx.nonlinear)


def _bbc_secure(encoder: Any, train: TextDataset, test: TextDataset, tr: torch.Tensor,
                approx: ApproxConfig, exp: ExperimentConfig, seed: int) -> dict[str, Any]:
    from secinfer.transformer.secure_eval import secure_text_eval

    idx = _secure_subset(len(test.texts), exp.secure_limit or 5, seed)
    sub = test.subset(idx.tolist())
    prompts = encoder.encode([BBC_PROMPT.format(label=c) for c in test.classes])
    out = secure_text_eval(encoder, sub.texts, sub.labels, prompts, tr, train.labels,
                           _secure_cfg(approx), tls=exp.secure_tls)
    out["indices"] = idx.tolist()
    return out


def _bbc_measure(encoder: Any, train: TextDataset, test: TextDataset, exp: ExperimentConfig,
                 seed: int, keep: list[torch.Tensor] | None = None) -> dict[str, float]:
    t0 = time.perf_counter()
    tr = encoder.encode(train.texts)
    te = encoder.encode(test.texts)
    if keep is not None:
        keep.append(tr)
    zs = zeroshot_text(encoder, test.texts, test.labels, test.classes, BBC_PROMPT,
                       text_embeddings=te)
    fs = few_shot(tr, train.labels, te, test.labels, None, exp.k_shot, exp.episodes,
                  exp.fewshot_method, _gen(seed + 2))
    return {
        "zeroshot": zs.accuracy,
        "probe": linear_probe(tr, train.labels, te, test.labels),
        "fewshot_mean": fs.mean,
        "fewshot_std": fs.std,
        "fewshot_n_way": fs.n_way,
        "seconds": time.perf_counter() - t0,
    }


def run_bbc(approx: ApproxConfig, exp: ExperimentConfig) -> dict[str, Any]:
    """MiniLM on BBC News: zero-shot, linear probe and few-shot, optionally fine-tuned."""
    seed = exp.seed if exp.seed is not None else secrets.randbits(31)
    train, test = _bbc_split(exp, seed)
    encoder = load_minilm(max_length=exp.max_length)
    patch_model(encoder.model, approx)
    tr: list[torch.Tensor] = []
    out: dict[str, Any] = {"task": "bbc", "approx": asdict(approx), "label": approx.label,
                           "n_train": len(train.texts), "n_test": len(test.texts),
                           "seed": seed, "k_shot": exp.k_shot,
                           "before": _bbc_measure(encoder, train, test, exp, seed, tr)}
    if exp.finetune:
        report = finetune_text(encoder, train, BBC_PROMPT, FinetuneConfig(
            epochs=exp.ft_epochs, lr=exp.ft_lr, seed=seed))
        out["finetune"] = asdict(report)
        out["after"] = _bbc_measure(encoder, train, test, exp, seed, tr)
    if exp.secure:
        out["secure"] = _bbc_secure(encoder, train, test, tr[-1], approx, exp, seed)
        out["secure"]["when"] = "after" if exp.finetune else "before"
    return out


def _fmnist(exp: ExperimentConfig, seed: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from secinfer.data import load

    x, y = load("train")
    xt, yt = load("test")
    if exp.train_per_class is not None:
        keep = torch.as_tensor(stratified_subset(y, exp.train_per_class, _gen(seed)))
        x, y = x[keep], y[keep]
    if exp.test_per_class is not None:
        keep = torch.as_tensor(stratified_subset(yt, exp.test_per_class, _gen(seed + 1)))
        xt, yt = xt[keep], yt[keep]
    return x, y, xt, yt


def _clip_measure(bundle: ClipBundle, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor,
                  yt: torch.Tensor, exp: ExperimentConfig, seed: int) -> dict[str, float]:
    from secinfer.seclmm.tinyclip import clip_image_embeddings

    zs = zeroshot_clip(bundle, xt, yt, FMNIST_CLASSES, CLIP_TEMPLATES[0])
    with torch.no_grad():
        sub = torch.as_tensor(stratified_subset(y, 50, _gen(seed + 3)))
        tr = clip_image_embeddings(bundle, x[sub])
        te = clip_image_embeddings(bundle, xt)
    fs = few_shot(tr, y[sub], te, yt, None, exp.k_shot, exp.episodes, exp.fewshot_method,
                  _gen(seed + 2))
    return {"zeroshot": zs.accuracy, "probe": linear_probe(tr, y[sub], te, yt),
            "fewshot_mean": fs.mean, "fewshot_std": fs.std, "fewshot_n_way": fs.n_way}


def run_tinyclip(approx: ApproxConfig, exp: ExperimentConfig) -> dict[str, Any]:
    """Tiny CLIP (project-made) or a given CLIP folder, zero-shot on Fashion-MNIST.

    The tiny CLIP is first trained in plaintext (exact activations), then patched with
    ``approx`` and measured; with ``finetune`` it is trained further with ``approx`` on.
    The probe and few-shot figures use 50 training images per class.
    """
    seed = exp.seed if exp.seed is not None else secrets.randbits(31)
    x, y, xt, yt = _fmnist(exp, seed)
    out: dict[str, Any] = {"task": "fmnist-tinyclip", "approx": asdict(approx),
                           "label": approx.label, "n_train": len(x), "n_test": len(xt),
                           "seed": seed, "k_shot": exp.k_shot}
    if exp.clip_folder is not None:
        bundle = load_clip(exp.clip_folder)
    else:
        bundle = make_tiny_clip(FMNIST_CLASSES, seed=seed)
        losses = train_clip(bundle, x, y, FMNIST_CLASSES, exp.clip_train_steps, seed=seed)
        out["pretrain_loss"] = [losses[0], losses[-1]]
        out["plaintext_exact"] = zeroshot_clip(bundle, xt, yt, FMNIST_CLASSES).accuracy
        if exp.save_folder is not None:
            out["saved"] = str(save_clip(bundle, exp.save_folder))
    patch_model(bundle.model, approx)
    out["before"] = _clip_measure(bundle, x, y, xt, yt, exp, seed)
    if exp.finetune:
        losses = train_clip(bundle, x, y, FMNIST_CLASSES, exp.ft_steps, lr=3e-4, seed=seed + 5)
        out["finetune"] = {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1]}
        out["after"] = _clip_measure(bundle, x, y, xt, yt, exp, seed)
    if exp.secure:
        from secinfer.transformer.secure_eval import secure_clip_zeroshot

        idx = _secure_subset(len(xt), exp.secure_limit or 50, seed)
        prompts = [CLIP_TEMPLATES[0].format(label=c) for c in FMNIST_CLASSES]
        out["secure"] = secure_clip_zeroshot(bundle, xt[idx], yt[idx], prompts,
                                             _secure_cfg(approx), tls=exp.secure_tls)
        out["secure"].update(when="after" if exp.finetune else "before", indices=idx.tolist())
    return out


def run_task(task: str, approx: ApproxConfig, exp: ExperimentConfig) -> dict[str, Any]:
    """Dispatch on the task name."""
    if task == "bbc":
        return run_bbc(approx, exp)
    if task == "fmnist-tinyclip":
        return run_tinyclip(approx, exp)
    raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
