"""The user's side: embed locally, permute, send, un-permute (STIP, steps 2 and 4).

1. Embed the input with the key's tables (tokens + positions + token types; or patches + class
   token + positions), exactly as the plaintext model's embedding layer does.
2. Permute the hidden dimension with ``pi`` and send ``x[..., pi]`` to the cloud.
3. Un-permute what comes back: hidden states with ``pi^-1``; logits with the class/vocabulary
   permutation's inverse; CLIP features with the projection permutation's inverse.
4. Generation: greedy argmax on the un-permuted logits, embed the new token at its position,
   and send only that one embedding; the cloud keeps the KV cache between steps.

Threat model: the user holds the key and the embedding tables (it learns them; the rest of the
weights it never sees). It trusts the cloud to compute honestly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .protocol import CloudLink
from .transform import StipKey

__all__ = ["StipUser"]

_BERT = {"BertModel": "", "BertForSequenceClassification": "bert."}


class StipUser:
    """The user's client for one model; talks to the cloud through a :class:`CloudLink`."""

    def __init__(self, key: StipKey, link: CloudLink) -> None:
        self.key = key
        self.link = link
        self._inv = {name: key.inverse(name) for name in key.perms}

    # -- step 1: local embedding
    def embed_tokens(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None, start: int = 0
    ) -> torch.Tensor:
        """Embeddings of ``input_ids`` (B, S) at positions ``start..start+S-1``."""
        if input_ids.dtype != torch.int64 or input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be int64 (batch, seq>0), got {input_ids.dtype} "
                             f"{tuple(input_ids.shape)}")
        t, cls = self.key.tables, self.key.model_class
        pos = torch.arange(start, start + input_ids.shape[1])
        if cls in _BERT:
            pre = _BERT[cls] + "embeddings."
            words = t[pre + "word_embeddings.weight"]
            self._check_ids(input_ids, words.shape[0])
            tt = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            types = t[pre + "token_type_embeddings.weight"]
            x = F.embedding(input_ids, words) + F.embedding(tt, types)
            return x + F.embedding(pos, t[pre + "position_embeddings.weight"]).unsqueeze(0)
        if cls == "GPT2LMHeadModel":
            self._check_ids(input_ids, t["transformer.wte.weight"].shape[0])
            return F.embedding(input_ids, t["transformer.wte.weight"]) + F.embedding(
                pos, t["transformer.wpe.weight"]).unsqueeze(0)
        if cls == "LlamaForCausalLM":
            self._check_ids(input_ids, t["model.embed_tokens.weight"].shape[0])
            return F.embedding(input_ids, t["model.embed_tokens.weight"])
        if cls == "CLIPModel":
            pre = "text_model.embeddings."
            self._check_ids(input_ids, t[pre + "token_embedding.weight"].shape[0])
            return F.embedding(input_ids, t[pre + "token_embedding.weight"]) + F.embedding(
                pos, t[pre + "position_embedding.weight"]).unsqueeze(0)
        raise ValueError(f"{cls} does not take token ids")

    @staticmethod
    def _check_ids(ids: torch.Tensor, vocab: int) -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"token ids must lie in [0, {vocab}), got [{int(ids.min())}, "
                             f"{int(ids.max())}]")

    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch + class-token + position embeddings of images (B, C, H, W)."""
        t, cls = self.key.tables, self.key.model_class
        if pixel_values.dim() != 4 or not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values must be float (batch, channels, height, width), got "
                             f"{pixel_values.dtype} {tuple(pixel_values.shape)}")
        cfg = self.key.config.get("vision_config", self.key.config)
        size, patch = int(cfg["image_size"]), int(cfg["patch_size"])
        if tuple(pixel_values.shape[1:]) != (int(cfg["num_channels"]), size, size):
            raise ValueError(f"images must be {cfg['num_channels']}x{size}x{size}, got "
                             f"{tuple(pixel_values.shape[1:])}")
        b = pixel_values.shape[0]
        if cls == "ViTForImageClassification":
            pre = "vit.embeddings."
            w = t[pre + "patch_embeddings.projection.weight"]
            x = F.conv2d(pixel_values.to(w.dtype), w, t[pre + "patch_embeddings.projection.bias"],
                         stride=patch).flatten(2).transpose(1, 2)
            x = torch.cat((t[pre + "cls_token"].expand(b, -1, -1), x), dim=1)
            return x + t[pre + "position_embeddings"]
        if cls == "CLIPModel":
            pre = "vision_model.embeddings."
            w = t[pre + "patch_embedding.weight"]
            x = F.conv2d(pixel_values.to(w.dtype), w, None, stride=patch).flatten(2).transpose(1, 2)
            cls_tok = t[pre + "class_embedding"].expand(b, 1, -1)
            x = torch.cat([cls_tok, x], dim=1)
            pos = torch.arange(x.shape[1])
            return x + F.embedding(pos, t[pre + "position_embedding.weight"]).unsqueeze(0)
        raise ValueError(f"{cls} does not take images")

    # -- steps 2 and 3
    def permute(self, x: torch.Tensor, name: str = "hidden") -> torch.Tensor:
        return x.index_select(-1, self.key.perms[name]).contiguous()

    def unpermute(self, y: torch.Tensor, name: str = "hidden") -> torch.Tensor:
        return y.index_select(-1, self._inv[name])

    @staticmethod
    def _mask(input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return torch.ones_like(input_ids) if mask is None else mask.to(torch.int64)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Encoder (BertModel): last hidden states (and pooled output) in the original basis."""
        x = self.permute(self.embed_tokens(input_ids, token_type_ids))
        out = self.link.call("encode", [x, self._mask(input_ids, attention_mask)])
        return [self.unpermute(o) for o in out]

    def classify(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class logits in the original class order (text classifier or ViT)."""
        if pixel_values is not None:
            x = self.permute(self.embed_image(pixel_values))
            mask = torch.ones(x.shape[:2], dtype=torch.int64)
        elif input_ids is not None:
            x = self.permute(self.embed_tokens(input_ids))
            mask = self._mask(input_ids, attention_mask)
        else:
            raise ValueError("classify needs input_ids or pixel_values")
        (logits,) = self.link.call("classify", [x, mask])
        return self.unpermute(logits, "labels")

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding, token by token, with the KV cache kept on the cloud.

        Prompts in a batch must have the same length (no padding). Returns (B, max_new_tokens).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        b, s = input_ids.shape
        mask = torch.ones(b, s, dtype=torch.int64)
        (logits,) = self.link.call("lm_start", [self.permute(self.embed_tokens(input_ids)), mask])
        out = []
        for i in range(max_new_tokens):
            tok = self.unpermute(logits, "vocab").argmax(-1, keepdim=True)
            out.append(tok)
            if i == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.int64)], dim=1)
            x = self.permute(self.embed_tokens(tok, start=s + i))
            (logits,) = self.link.call("lm_step", [x, mask])
        return torch.cat(out, dim=1)

    def last_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits (original vocabulary order) for a batch of prompts."""
        mask = torch.ones_like(input_ids)
        (logits,) = self.link.call("lm_start", [self.permute(self.embed_tokens(input_ids)), mask])
        return self.unpermute(logits, "vocab")

    # -- CLIP: the user pools, normalises and scores; the cloud only runs the towers
    def text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """CLIP text embeddings (B, P): the projected feature at each text's EOS position."""
        x = self.permute(self.embed_tokens(input_ids), "hidden_text")
        (feats,) = self.link.call("clip_text", [x, self._mask(input_ids, attention_mask)])
        eos = int(self.key.config.get("text_config", {}).get("eos_token_id", 2))
        if eos == 2:  # the rule of CLIPTextModel.forward, kept for old checkpoints
            idx = input_ids.to(torch.int).argmax(dim=-1)
        else:
            idx = (input_ids == eos).int().argmax(dim=-1)
        pooled = feats[torch.arange(feats.shape[0]), idx]
        return self.unpermute(pooled, "proj")

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.permute(self.embed_image(pixel_values), "hidden_vision")
        (feats,) = self.link.call("clip_image", [x])
        return self.unpermute(feats, "proj")

    def clip_logits(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``logits_per_image`` (images x texts), as CLIPModel.forward computes it."""
        t = self.text_features(input_ids, attention_mask)
        i = self.image_features(pixel_values)
        t = t / t.norm(p=2, dim=-1, keepdim=True)
        i = i / i.norm(p=2, dim=-1, keepdim=True)
        scale = math.exp(float(self.key.extra["logit_scale"]))
        return (t @ i.t() * scale).t()
