"""The cloud's model: a plain ``transformers`` model holding the transformed weights (STIP, step 3).

The cloud runs the model's own forward code on permuted hidden states, so STIP costs nothing
beyond plaintext inference: no extra permute ops, only other numbers in the same matrices. The
embedding tables are the user's; in the cloud's copy they are zero (the user sends embeddings
that already include positions and token types, and ``x + 0`` is exact).

Threat model: the cloud is honest-but-curious. It sees the transformed weights, the permuted hidden
states of every request, the permuted logits of heads, the attention mask (sequence lengths)
and timing. See ``docs/stip.md`` for what that lets it infer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models.hf import ArchSpec, spec_for
from .artifacts import read_artifact
from .transform import CLOUD_KIND

__all__ = ["CloudModel", "load_cloud", "build_cloud", "config_from_dict"]


@dataclass
class CloudModel:
    """The transformed model plus the entry points the server exposes, by task."""

    model: Any
    spec: ArchSpec

    @property
    def task(self) -> str:
        return self.spec.task

    # -- encoders
    @torch.inference_mode()
    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """BERT-family encoder: permuted last hidden states (and pooled output if present)."""
        out = self.model(inputs_embeds=x, attention_mask=mask)
        res = [out.last_hidden_state]
        if getattr(out, "pooler_output", None) is not None:
            res.append(out.pooler_output)
        return res

    @torch.inference_mode()
    def classify(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Class-permuted logits of a sequence or image classifier."""
        if self.spec.model_class == "ViTForImageClassification":
            return self._vit_classify(x)
        return self.model(inputs_embeds=x, attention_mask=mask).logits

    def _vit_classify(self, x: torch.Tensor) -> torch.Tensor:
        # ViTModel.forward after its embeddings (which are the user's), line for line
        from transformers.masking_utils import create_bidirectional_mask

        vit = self.model.vit
        mask = create_bidirectional_mask(config=vit.config, inputs_embeds=x, attention_mask=None)
        h = x
        for layer in vit.layers:
            h = layer(h, mask)
        h = vit.layernorm(h)
        return self.model.classifier(h[:, 0, :])

    # -- decoders
    @torch.inference_mode()
    def lm_forward(
        self, x: torch.Tensor, mask: torch.Tensor, cache: Any | None
    ) -> tuple[torch.Tensor, Any]:
        """One prefill or decode step: vocabulary-permuted logits of the last position."""
        out = self.model(inputs_embeds=x, attention_mask=mask, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :], out.past_key_values

    # -- CLIP
    @torch.inference_mode()
    def clip_text(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Projected text features of every position (projection-permuted).

        The cloud projects every position because picking the EOS one would need token ids;
        the user picks it. CLIPTextModel.forward after its embeddings, line for line.
        """
        from transformers.masking_utils import create_causal_mask

        tm = self.model.text_model
        am = create_causal_mask(config=tm.config, inputs_embeds=x, attention_mask=mask,
                                past_key_values=None)
        h = tm.encoder(inputs_embeds=x, attention_mask=am, is_causal=True).last_hidden_state
        h = tm.final_layer_norm(h)
        return self.model.text_projection(h)

    @torch.inference_mode()
    def clip_image(self, x: torch.Tensor) -> torch.Tensor:
        """Projected image features (projection-permuted); CLIPVisionModel.forward's tail."""
        vm = self.model.vision_model
        h = vm.pre_layrnorm(x)
        h = vm.encoder(inputs_embeds=h).last_hidden_state
        pooled = vm.post_layernorm(h[:, 0, :])
        return self.model.visual_projection(pooled)

    @property
    def hidden_sizes(self) -> dict[str, int]:
        return self.spec.perm_sizes(self.model.config)


def config_from_dict(cfg: dict[str, Any]) -> Any:
    """A transformers config object from its JSON dict (as written in the artifacts)."""
    from transformers import CONFIG_MAPPING

    model_type = str(cfg.get("model_type"))
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"config has an unknown model_type {model_type!r}")
    return CONFIG_MAPPING[model_type].from_dict(cfg)


def build_cloud(
    model_class: str, config: Any, state: dict[str, torch.Tensor]
) -> CloudModel:
    """Instantiate the plain transformers class and load the transformed state into it.

    ``config`` is a transformers config object or its JSON dict.
    """
    import transformers

    if isinstance(config, dict):
        config = config_from_dict(config)
    spec = spec_for(model_class)
    cls = getattr(transformers, spec.model_class)
    model = cls(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"cloud weights hold parameters {model_class} lacks: {unexpected[:5]}")
    params = dict(model.named_parameters())
    for name in missing:
        rule = spec.match(name)
        if not rule.user:
            raise ValueError(f"cloud weights lack parameter {name!r} of {model_class}")
        with torch.no_grad():
            params[name].zero_()  # the user's table: never used by the cloud's entry points
    model.eval()
    return CloudModel(model, spec)


def load_cloud(folder: str | Path) -> CloudModel:
    """Load the cloud's artifact folder written by ``secinfer stip transform``."""
    import transformers

    manifest, groups = read_artifact(folder, CLOUD_KIND)
    model_class = manifest["meta"]["model_class"]
    spec_for(model_class)  # refuse unknown classes before touching transformers
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    return build_cloud(model_class, config, groups["model"])
