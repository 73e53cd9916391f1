"""Uploads to model inputs: an image file (PNG, JPEG, ... via Pillow) or a JSON tensor.

An image is converted to what the servers announce on admission (:class:`ModelInfo`):

1. Decode it with Pillow (a file it cannot read is a 422, with Pillow's reason).
2. Convert to grey (``L``) for 1 input channel, to ``RGB`` for 3; resize to the announced
   height and width (bilinear) if it differs.
3. Scale pixels to [0, 1], then map [0, 1] linearly onto the owner's valid input range
   ``[lo, hi]`` when one is announced: that is the model's normalisation when the range is the
   normalised image of [0, 1] pixels (``--input-range fashion-mnist`` gives
   ``(0 - mean) / std, (1 - mean) / std``); without a range, the [0, 1] pixels are sent.

A JSON tensor ``{"input": [...]}`` is sent as given (float64), ``[*input_shape]`` or
``[batch, *input_shape]``; the client checks shape, values and range before anything is sent.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch

from .errors import GatewayError

__all__ = ["ModelInfo", "decode_image", "image_to_input", "json_to_input", "MAX_UPLOAD_BYTES"]

MAX_UPLOAD_BYTES = 16 << 20


@dataclass(frozen=True)
class ModelInfo:
    """What P0 announces to a user on admission (no secret: shapes, policy, range)."""

    input_shape: tuple[int, ...]
    frac_bits: int
    output_mode: str
    top_k: int | None
    outputs: int
    max_batch: int
    input_range: tuple[float, float] | None
    queries_left: int | None

    def as_json(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "frac_bits": self.frac_bits,
                "output": {"mode": self.output_mode, "k": self.top_k, "outputs": self.outputs},
                "max_batch": self.max_batch,
                "input_range": list(self.input_range) if self.input_range else None,
                "queries_left": self.queries_left,
                "image_upload": _image_note(self)}


def _image_note(info: ModelInfo) -> str:
    if len(info.input_shape) != 3 or info.input_shape[0] not in (1, 3):
        return (f"not accepted: the model takes {list(info.input_shape)}, not an image "
                "[channels 1 or 3, height, width]; send a JSON tensor")
    c, h, w = info.input_shape
    mode = "grey" if c == 1 else "RGB"
    target = (f"[{info.input_range[0]:.6g}, {info.input_range[1]:.6g}]" if info.input_range
              else "[0, 1]")
    return f"converted to {mode} {h}x{w}, pixels 0..255 mapped linearly onto {target}"


def decode_image(data: bytes) -> Any:
    """Step 1 above: the decoded Pillow image (a 422 naming Pillow's reason otherwise).

    Needs nothing from the servers, so a bad upload is refused before any is contacted.
    """
    if not data:
        raise GatewayError(422, "invalid upload", "the uploaded file is empty")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            return opened.copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise GatewayError(422, "invalid upload",
                           f"not an image Pillow can read (PNG, JPEG, ...): {e}") from None


def image_to_input(img: Any, info: ModelInfo) -> torch.Tensor:
    """Steps 2-3 above: a decoded image -> a batch of one ``[1, *input_shape]``."""
    if len(info.input_shape) != 3 or info.input_shape[0] not in (1, 3):
        raise GatewayError(422, "invalid upload", f"image upload {_image_note(info)}")
    from PIL import Image

    c, h, w = info.input_shape
    img = img.convert("L" if c == 1 else "RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    raw = bytes(img.tobytes())
    pix = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.float64) / 255.0
    x = pix.reshape(h, w, c).permute(2, 0, 1) if c == 3 else pix.reshape(1, h, w)
    if info.input_range is not None:
        lo, hi = info.input_range
        x = lo + (hi - lo) * x
    return x.unsqueeze(0).contiguous()


def json_to_input(body: Any, info: ModelInfo) -> torch.Tensor:
    """``{"input": nested list}`` -> float64 ``[batch, *input_shape]`` (a 422 otherwise)."""
    if not isinstance(body, dict) or "input" not in body:
        raise GatewayError(422, "invalid tensor", 'send a JSON object {"input": [...]} holding '
                           f"a tensor of shape {list(info.input_shape)} or [batch, "
                           f"{', '.join(map(str, info.input_shape))}]")
    try:
        x = torch.tensor(body["input"], dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise GatewayError(422, "invalid tensor", f"'input' is not a rectangular array of "
                           f"numbers: {e}") from None
    if tuple(x.shape) == info.input_shape:
        x = x.unsqueeze(0)
    return x  # shape, NaN/inf and range: the client checks them before anything is sent
