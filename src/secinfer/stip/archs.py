"""Which parameter of which Hugging Face architecture gets which permutation.

An :class:`ArchSpec` is a table of :class:`Rule` s, one per kind of parameter, matched by regular
expression against the names of ``model.state_dict()``. A rule says which named permutation
reorders dimension 0 (``rows``) and dimension 1 (``cols``) of the tensor, or that the tensor is
the user's (embedding tables: they leave the cloud's files and go into the user's key).

Conventions, for ``torch.nn.Linear`` (weight shape ``(out, in)``, ``y = x W^T + b``) and a
permutation ``p`` applied to a row vector as ``x' = x[..., p]``:

* input side permuted (Q/K/V, FFN up/gate, classifier): ``W' = W[:, p]``, bias unchanged;
* output side permuted (attention output, FFN down): ``W' = W[p, :]``, ``b' = b[p]``;
* norms: ``gamma' = gamma[p]``, ``beta' = beta[p]`` (mean and variance over the hidden dimension
  are invariant under reordering it, the point the STIP seed code forgot);
* heads: ``W' = W[q, :][:, p]``, ``b' = b[q]`` for a second permutation ``q`` of the classes, the
  vocabulary or CLIP's projection space.

GPT-2's ``Conv1D`` stores ``(in, out)``, so its rules name ``rows`` for the input side.
Every parameter must match exactly one rule: an unknown one is an error that names it, so a
model variant with an extra parameter is refused instead of silently left in clear.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Rule", "ArchSpec", "ARCHS", "spec_for", "SUPPORTED_CLASSES"]


@dataclass(frozen=True)
class Rule:
    """How one kind of parameter is transformed (see module docstring)."""

    pattern: str
    rows: str | None = None
    cols: str | None = None
    user: bool = False  # an embedding table: goes to the user's key, not to the cloud


@dataclass(frozen=True)
class ArchSpec:
    """One supported model class: its rules, its task and the sizes of its permutations."""

    model_class: str
    task: str  # "encoder" | "classify" | "causal_lm" | "clip"
    rules: tuple[Rule, ...]
    perm_sizes: Callable[[Any], dict[str, int]]
    # config changes for the cloud's copy (GPT-2: untie the LM head from the user's table)
    cloud_config: dict[str, Any] = field(default_factory=dict)

    def match(self, name: str) -> Rule:
        hits = [r for r in self.rules if re.search(r.pattern, name)]
        if len(hits) != 1:
            why = "no rule" if not hits else f"{len(hits)} rules"
            raise ValueError(
                f"STIP does not know how to transform parameter {name!r} of {self.model_class} "
                f"({why} match); add a Rule in secinfer/stip/archs.py"
            )
        return hits[0]


def _in(pattern: str) -> Rule:
    """A Linear weight read from the permuted stream: columns reordered."""
    return Rule(pattern, cols="hidden")


def _out(pattern: str) -> Rule:
    """A tensor written to (or normalising) the permuted stream: rows reordered."""
    return Rule(pattern, rows="hidden")


def _bert_layers(prefix: str) -> list[Rule]:
    L = rf"^{prefix}encoder\.layer\.\d+\."
    return [
        _in(L + r"attention\.self\.(query|key|value)\.weight$"),
        Rule(L + r"attention\.self\.(query|key|value)\.bias$"),
        _out(L + r"attention\.output\.dense\.(weight|bias)$"),
        _out(L + r"attention\.output\.LayerNorm\.(weight|bias)$"),
        _in(L + r"intermediate\.dense\.weight$"),
        Rule(L + r"intermediate\.dense\.bias$"),
        _out(L + r"output\.dense\.(weight|bias)$"),
        _out(L + r"output\.LayerNorm\.(weight|bias)$"),
        Rule(rf"^{prefix}embeddings\.(word|position|token_type)_embeddings\.weight$", user=True),
        _out(rf"^{prefix}embeddings\.LayerNorm\.(weight|bias)$"),
        # the pooler is dense + tanh on the first token: permuted on both sides
        Rule(rf"^{prefix}pooler\.dense\.weight$", rows="hidden", cols="hidden"),
        Rule(rf"^{prefix}pooler\.dense\.bias$", rows="hidden"),
    ]


def _clip_tower(prefix: str, hidden: str) -> list[Rule]:
    L = rf"^{prefix}encoder\.layers\.\d+\."
    return [
        Rule(L + r"self_attn\.(q|k|v)_proj\.weight$", cols=hidden),
        Rule(L + r"self_attn\.(q|k|v)_proj\.bias$"),
        Rule(L + r"self_attn\.out_proj\.(weight|bias)$", rows=hidden),
        Rule(L + r"layer_norm(1|2)\.(weight|bias)$", rows=hidden),
        Rule(L + r"mlp\.fc1\.weight$", cols=hidden),
        Rule(L + r"mlp\.fc1\.bias$"),
        Rule(L + r"mlp\.fc2\.(weight|bias)$", rows=hidden),
    ]


def _hidden(cfg: Any) -> dict[str, int]:
    return {"hidden": int(cfg.hidden_size)}


def _hidden_labels(cfg: Any) -> dict[str, int]:
    return {"hidden": int(cfg.hidden_size), "labels": int(cfg.num_labels)}


def _hidden_vocab(cfg: Any) -> dict[str, int]:
    return {"hidden": int(cfg.hidden_size), "vocab": int(cfg.vocab_size)}


def _clip_sizes(cfg: Any) -> dict[str, int]:
    return {
        "hidden_text": int(cfg.text_config.hidden_size),
        "hidden_vision": int(cfg.vision_config.hidden_size),
        "proj": int(cfg.projection_dim),
    }


_BERT_HEAD = [
    Rule(r"^classifier\.weight$", rows="labels", cols="hidden"),
    Rule(r"^classifier\.bias$", rows="labels"),
]

_VIT_L = r"^vit\.layers\.\d+\."
_VIT = [
    Rule(r"^vit\.embeddings\.(cls_token|position_embeddings)$", user=True),
    Rule(r"^vit\.embeddings\.patch_embeddings\.projection\.(weight|bias)$", user=True),
    _in(_VIT_L + r"attention\.(q|k|v)_proj\.weight$"),
    Rule(_VIT_L + r"attention\.(q|k|v)_proj\.bias$"),
    _out(_VIT_L + r"attention\.o_proj\.(weight|bias)$"),
    _out(_VIT_L + r"layernorm_(before|after)\.(weight|bias)$"),
    _in(_VIT_L + r"mlp\.fc1\.weight$"),
    Rule(_VIT_L + r"mlp\.fc1\.bias$"),
    _out(_VIT_L + r"mlp\.fc2\.(weight|bias)$"),
    _out(r"^vit\.layernorm\.(weight|bias)$"),
    *_BERT_HEAD,
]

_CLIP = [
    Rule(r"^text_model\.embeddings\.(token|position)_embedding\.weight$", user=True),
    Rule(r"^vision_model\.embeddings\.(class_embedding|patch_embedding\.weight)$", user=True),
    Rule(r"^vision_model\.embeddings\.position_embedding\.weight$", user=True),
    *_clip_tower(r"text_model\.", "hidden_text"),
    *_clip_tower(r"vision_model\.", "hidden_vision"),
    Rule(r"^text_model\.final_layer_norm\.(weight|bias)$", rows="hidden_text"),
    Rule(r"^vision_model\.(pre_layrnorm|post_layernorm)\.(weight|bias)$", rows="hidden_vision"),
    # one projection permutation for both towers: cosine similarity survives it unchanged
    Rule(r"^text_projection\.weight$", rows="proj", cols="hidden_text"),
    Rule(r"^visual_projection\.weight$", rows="proj", cols="hidden_vision"),
    Rule(r"^logit_scale$"),
]

_GPT2_L = r"^transformer\.h\.\d+\."
_GPT2 = [
    Rule(r"^transformer\.(wte|wpe)\.weight$", user=True),
    _out(_GPT2_L + r"ln_(1|2)\.(weight|bias)$"),
    Rule(_GPT2_L + r"attn\.c_attn\.weight$", rows="hidden"),  # Conv1D (in, out)
    Rule(_GPT2_L + r"attn\.c_attn\.bias$"),
    Rule(_GPT2_L + r"attn\.c_proj\.weight$", cols="hidden"),
    Rule(_GPT2_L + r"attn\.c_proj\.bias$", rows="hidden"),
    Rule(_GPT2_L + r"mlp\.c_fc\.weight$", rows="hidden"),
    Rule(_GPT2_L + r"mlp\.c_fc\.bias$"),
    Rule(_GPT2_L + r"mlp\.c_proj\.weight$", cols="hidden"),
    Rule(_GPT2_L + r"mlp\.c_proj\.bias$", rows="hidden"),
    _out(r"^transformer\.ln_f\.(weight|bias)$"),
    Rule(r"^lm_head\.weight$", rows="vocab", cols="hidden"),
]

_LLAMA_L = r"^model\.layers\.\d+\."
_LLAMA = [
    Rule(r"^model\.embed_tokens\.weight$", user=True),
    _in(_LLAMA_L + r"self_attn\.(q|k|v)_proj\.weight$"),
    Rule(_LLAMA_L + r"self_attn\.(q|k|v)_proj\.bias$"),
    _out(_LLAMA_L + r"self_attn\.o_proj\.(weight|bias)$"),
    _in(_LLAMA_L + r"mlp\.(gate|up)_proj\.weight$"),
    Rule(_LLAMA_L + r"mlp\.(gate|up)_proj\.bias$"),
    _out(_LLAMA_L + r"mlp\.down_proj\.(weight|bias)$"),
    _out(_LLAMA_L + r"(input|post_attention)_layernorm\.weight$"),
    _out(r"^model\.norm\.weight$"),
    Rule(r"^lm_head\.weight$", rows="vocab", cols="hidden"),
    Rule(r"^lm_head\.bias$", rows="vocab"),
]

ARCHS: dict[str, ArchSpec] = {
    s.model_class: s
    for s in [
        ArchSpec("BertModel", "encoder", tuple(_bert_layers("")), _hidden),
        ArchSpec("BertForSequenceClassification", "classify",
                 (*_bert_layers(r"bert\."), *_BERT_HEAD), _hidden_labels),
        ArchSpec("ViTForImageClassification", "classify", tuple(_VIT), _hidden_labels),
        ArchSpec("CLIPModel", "clip", tuple(_CLIP), _clip_sizes),
        ArchSpec("GPT2LMHeadModel", "causal_lm", tuple(_GPT2), _hidden_vocab,
                 cloud_config={"tie_word_embeddings": False}),
        ArchSpec("LlamaForCausalLM", "causal_lm", tuple(_LLAMA), _hidden_vocab,
                 cloud_config={"tie_word_embeddings": False}),
    ]
}

SUPPORTED_CLASSES = tuple(sorted(ARCHS))


def spec_for(model_class: str) -> ArchSpec:
    """The STIP spec of a ``transformers`` class name; an unsupported one is refused by name."""
    try:
        return ARCHS[model_class]
    except KeyError:
        raise ValueError(
            f"STIP does not support model class {model_class!r}; supported: "
            f"{', '.join(SUPPORTED_CLASSES)}"
        ) from None
