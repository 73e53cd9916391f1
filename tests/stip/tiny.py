"""Tiny Hugging Face models with random weights and random, non-identity norms and biases."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers as T  # noqa: E402


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Every 1-D parameter (norm gammas/betas, biases) drawn far from its default."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                if name.endswith("weight") or "norm" in name.lower():
                    p.copy_(1.0 + 0.5 * torch.randn_like(p))
                else:
                    p.copy_(0.3 * torch.randn_like(p))
            elif p.dim() == 0:
                p.fill_(float(torch.rand(())) + 1.0)
    return model.eval()


def bert_encoder() -> torch.nn.Module:
    cfg = T.BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=96, vocab_size=120, max_position_embeddings=64)
    return randomise(T.BertModel(cfg))


def bert_classifier() -> torch.nn.Module:
    cfg = T.BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=96, vocab_size=120, max_position_embeddings=64,
                       num_labels=5)
    return randomise(T.BertForSequenceClassification(cfg))


def vit() -> torch.nn.Module:
    cfg = T.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=96, image_size=16, patch_size=4, num_labels=7)
    return randomise(T.ViTForImageClassification(cfg))


def clip() -> torch.nn.Module:
    cfg = T.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, vocab_size=100, max_position_embeddings=32,
                         eos_token_id=99, bos_token_id=98, pad_token_id=0),
        vision_config=dict(hidden_size=40, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=80, image_size=16, patch_size=4),
        projection_dim=24,
    )
    return randomise(T.CLIPModel(cfg))


def gpt2() -> torch.nn.Module:
    cfg = T.GPT2Config(n_embd=48, n_layer=2, n_head=4, vocab_size=150, n_positions=96,
                       initializer_range=0.2, bos_token_id=0, eos_token_id=1)
    return randomise(T.GPT2LMHeadModel(cfg))


def llama() -> torch.nn.Module:
    cfg = T.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                        num_key_value_heads=2, intermediate_size=128, vocab_size=150,
                        max_position_embeddings=128, attention_bias=True, mlp_bias=True,
                        initializer_range=0.2, rope_theta=10000.0, bos_token_id=0,
                        eos_token_id=1, pad_token_id=2)
    return randomise(T.LlamaForCausalLM(cfg))


BUILDERS = {"bert": bert_encoder, "bert_cls": bert_classifier, "vit": vit, "clip": clip,
            "gpt2": gpt2, "llama": llama}
