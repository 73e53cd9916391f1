"""Secure BERT-family transformer inference on secret shares (SecLMM-style, issue 7)."""

from .layer import SecureLayer, SecureTransformerConfig, secure_layer_forward, share_layer
from .model import (
    EncoderDims,
    SecureEncoder,
    encoder_forward,
    pool_normalise,
    receive_output,
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
    "Embeddings", "EncoderDims", "EncoderWeights", "LayerWeights", "SecureEncoder",
    "SecureLayer", "SecureTransformerConfig", "capture_bert", "encoder_forward", "mean_pool",
    "plain_encoder", "plain_layer", "pool_normalise", "random_encoder", "receive_output",
    "secure_layer_forward", "secure_sentence_embeddings", "send_shares",
    "sentence_embedding_program", "share_encoder", "share_layer",
]
