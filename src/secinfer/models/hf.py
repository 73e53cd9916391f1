"""The one description of each supported Hugging Face architecture: what every parameter is.

Every backend that takes a ``transformers`` model reads it through this table, so a layout is
written down once. An :class:`ArchSpec` is a table of :class:`Rule` s, one per kind of
parameter, matched by regular expression against the names of ``model.state_dict()``. A rule
says

* its **role** (``layers.3.q.weight``, ``embeddings.word``, ``vision.pre_ln.bias``): the name
  under which the MPC captures (:func:`secinfer.transformer.capture_bert`,
  :func:`secinfer.transformer.capture_clip`) pick the tensor up, whatever the checkpoint calls it;
* which named permutation STIP applies to dimension 0 (``rows``) and dimension 1 (``cols``) of
  the tensor, or that the tensor is the user's (embedding tables: they leave the cloud's files
  and go into the user's key; see :mod:`secinfer.stip.transform`).

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
model variant with an extra parameter is refused (by STIP and by the MPC captures alike)
instead of silently left in clear or silently ignored.

Threat model: none here; a table of public structure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Rule", "ArchSpec", "ARCHS", "spec_for", "SUPPORTED_CLASSES", "float_state"]


@dataclass(frozen=True)
class Rule:
    """One kind of parameter: its role and how STIP transforms it (see module docstring).

    ``role`` is a template filled from the pattern's named groups (``{i}`` the layer index,
    ``{t}`` weight or bias); ``None`` for parameters no MPC capture reads.
    """

    pattern: str
    rows: str | None = None
    cols: str | None = None
    user: bool = False  # an embedding table: goes to the user's key, not to the cloud
    role: str | None = None


@dataclass(frozen=True)
class ArchSpec:
    """One supported model class: its layout, task, rules and the sizes of its permutations."""

    model_class: str
    layout: str  # "bert" | "vit" | "clip" | "gpt2" | "llama": which capture can read it
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
                f"secinfer does not know parameter {name!r} of {self.model_class} "
                f"({why} match); add a Rule in secinfer/models/hf.py"
            )
        return hits[0]

    def roles(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` by role: every parameter matched (an unknown one is refused by name)."""
        out: dict[str, torch.Tensor] = {}
        for name, t in state.items():
            rule = self.match(name)
            if rule.role is None:
                continue
            m = re.search(rule.pattern, name)
            assert m is not None  # match() found it
            out[rule.role.format(**m.groupdict())] = t
        return out


def float_state(model: Any) -> dict[str, torch.Tensor]:
    """A model's parameters and float buffers (integer index buffers such as
    ``position_ids`` are derived from the config, not weights)."""
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point() or v.dim() == 0}


_T = r"\.(?P<t>weight|bias)$"


def _in(pattern: str, role: str | None = None) -> Rule:
    """A Linear weight read from the permuted stream: columns reordered."""
    return Rule(pattern, cols="hidden", role=role)


def _out(pattern: str, role: str | None = None) -> Rule:
    """A tensor written to (or normalising) the permuted stream: rows reordered."""
    return Rule(pattern, rows="hidden", role=role)


def _qkv(layer: str, names: tuple[str, str, str], hidden: str) -> list[Rule]:
    """Q, K and V of one attention block, each under its own role (q, k, v)."""
    rules = []
    for hf_name, role in zip(names, ("q", "k", "v"), strict=True):
        rules += [Rule(layer + hf_name + r"\.weight$", cols=hidden,
                       role=f"layers.{{i}}.{role}.weight"),
                  Rule(layer + hf_name + r"\.bias$", role=f"layers.{{i}}.{role}.bias")]
    return rules


def _bert_layers(prefix: str) -> list[Rule]:
    L = rf"^{prefix}encoder\.layer\.(?P<i>\d+)\."
    return [
        *_qkv(L + r"attention\.self\.", ("query", "key", "value"), "hidden"),
        _out(L + r"attention\.output\.dense" + _T, "layers.{i}.out.{t}"),
        _out(L + r"attention\.output\.LayerNorm" + _T, "layers.{i}.ln1.{t}"),
        _in(L + r"intermediate\.dense\.weight$", "layers.{i}.ff1.weight"),
        Rule(L + r"intermediate\.dense\.bias$", role="layers.{i}.ff1.bias"),
        _out(L + r"output\.dense" + _T, "layers.{i}.ff2.{t}"),
        _out(L + r"output\.LayerNorm" + _T, "layers.{i}.ln2.{t}"),
        Rule(rf"^{prefix}embeddings\.(?P<e>word|position|token_type)_embeddings\.weight$",
             user=True, role="embeddings.{e}"),
        _out(rf"^{prefix}embeddings\.LayerNorm" + _T, "embeddings.ln.{t}"),
        # the pooler is dense + tanh on the first token: permuted on both sides
        Rule(rf"^{prefix}pooler\.dense\.weight$", rows="hidden", cols="hidden"),
        Rule(rf"^{prefix}pooler\.dense\.bias$", rows="hidden"),
    ]


def _clip_tower(prefix: str, hidden: str, tower: str) -> list[Rule]:
    L = rf"^{prefix}encoder\.layers\.(?P<i>\d+)\."
    rules = [
        *_qkv(L + r"self_attn\.", ("q_proj", "k_proj", "v_proj"), hidden),
        Rule(L + r"self_attn\.out_proj" + _T, rows=hidden, role="layers.{i}.out.{t}"),
        Rule(L + r"layer_norm(?P<n>1|2)" + _T, rows=hidden, role="layers.{i}.ln{n}.{t}"),
        Rule(L + r"mlp\.fc1\.weight$", cols=hidden, role="layers.{i}.ff1.weight"),
        Rule(L + r"mlp\.fc1\.bias$", role="layers.{i}.ff1.bias"),
        Rule(L + r"mlp\.fc2" + _T, rows=hidden, role="layers.{i}.ff2.{t}"),
    ]
    return [Rule(r.pattern, r.rows, r.cols, r.user, f"{tower}.{r.role}") for r in rules]


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
    Rule(r"^classifier\.weight$", rows="labels", cols="hidden", role="classifier.weight"),
    Rule(r"^classifier\.bias$", rows="labels", role="classifier.bias"),
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
    Rule(r"^text_model\.embeddings\.(?P<e>token|position)_embedding\.weight$", user=True,
         role="text.embeddings.{e}"),
    Rule(r"^vision_model\.embeddings\.class_embedding$", user=True,
         role="vision.embeddings.class"),
    Rule(r"^vision_model\.embeddings\.patch_embedding\.weight$", user=True,
         role="vision.embeddings.patch"),
    Rule(r"^vision_model\.embeddings\.position_embedding\.weight$", user=True,
         role="vision.embeddings.position"),
    *_clip_tower(r"text_model\.", "hidden_text", "text"),
    *_clip_tower(r"vision_model\.", "hidden_vision", "vision"),
    Rule(r"^text_model\.final_layer_norm" + _T, rows="hidden_text", role="text.final_ln.{t}"),
    Rule(r"^vision_model\.pre_layrnorm" + _T, rows="hidden_vision", role="vision.pre_ln.{t}"),
    Rule(r"^vision_model\.post_layernorm" + _T, rows="hidden_vision",
         role="vision.post_ln.{t}"),
    # one projection permutation for both towers: cosine similarity survives it unchanged
    Rule(r"^text_projection\.weight$", rows="proj", cols="hidden_text", role="text.proj"),
    Rule(r"^visual_projection\.weight$", rows="proj", cols="hidden_vision", role="vision.proj"),
    Rule(r"^logit_scale$", role="logit_scale"),
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
        ArchSpec("BertModel", "bert", "encoder", tuple(_bert_layers("")), _hidden),
        ArchSpec("BertForSequenceClassification", "bert", "classify",
                 (*_bert_layers(r"bert\."), *_BERT_HEAD), _hidden_labels),
        ArchSpec("ViTForImageClassification", "vit", "classify", tuple(_VIT), _hidden_labels),
        ArchSpec("CLIPModel", "clip", "clip", tuple(_CLIP), _clip_sizes),
        ArchSpec("GPT2LMHeadModel", "gpt2", "causal_lm", tuple(_GPT2), _hidden_vocab,
                 cloud_config={"tie_word_embeddings": False}),
        ArchSpec("LlamaForCausalLM", "llama", "causal_lm", tuple(_LLAMA), _hidden_vocab,
                 cloud_config={"tie_word_embeddings": False}),
    ]
}

SUPPORTED_CLASSES = tuple(sorted(ARCHS))


def spec_for(model_class: str) -> ArchSpec:
    """The spec of a ``transformers`` class name; an unsupported one is refused by name."""
    try:
        return ARCHS[model_class]
    except KeyError:
        raise ValueError(
            f"secinfer does not support model class {model_class!r}; supported: "
            f"{', '.join(SUPPORTED_CLASSES)}"
        ) from None
