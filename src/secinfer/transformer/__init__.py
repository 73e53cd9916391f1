"""Secure BERT-family and CLIP transformer inference on secret shares (SecLMM-style, issue 7)."""

from .clip import (
    SecureClip,
    SecureClipResult,
    clip_program,
    l2_normalise,
    pad_prompts,
    secure_clip,
    secure_clip_logits,
    secure_image_tower,
    secure_text_tower,
    share_clip,
)
from .clip_weights import ClipDims, ClipUserSide, ClipWeights, capture_clip, eos_positions, patchify
from .layer import (
    SecretPadding,
    SecureLayer,
    SecureTransformerConfig,
    hidden_bias,
    secure_attention,
    secure_layer_forward,
    secure_prenorm_layer_forward,
    share_layer,
)
from .model import (
    EncoderDims,
    SecureEncoder,
    check_keep,
    encoder_forward,
    pool_normalise,
    receive_hidden_length,
    receive_output,
    send_hidden_length,
    send_shares,
    sentence_embedding_program,
    share_encoder,
)
from .runner import secure_sentence_embeddings
from .weights import (
    Embeddings,
    EncoderWeights,
    LayerWeights,
    capture_bert,
    mean_pool,
    plain_encoder,
    plain_layer,
    random_encoder,
)

__all__ = [
    "ClipDims", "ClipUserSide", "ClipWeights", "SecureClip", "SecureClipResult",
    "capture_clip", "clip_program", "eos_positions", "l2_normalise", "patchify",
    "secure_attention", "secure_clip", "secure_clip_logits", "secure_image_tower",
    "secure_prenorm_layer_forward", "secure_text_tower", "share_clip",
    "Embeddings", "EncoderDims", "EncoderWeights", "LayerWeights", "SecureEncoder",
    "SecureLayer", "SecureTransformerConfig", "capture_bert", "encoder_forward", "mean_pool",
    "plain_encoder", "plain_layer", "pool_normalise", "random_encoder", "receive_output",
    "secure_layer_forward", "secure_sentence_embeddings", "send_shares",
    "sentence_embedding_program", "share_encoder", "share_layer",
    "SecretPadding", "check_keep", "hidden_bias", "pad_prompts", "receive_hidden_length",
    "send_hidden_length",
]
