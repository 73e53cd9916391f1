"""SecLMM side of secinfer: model patching and CLIP-style tasks (the plaintext approximations
they patch in live beside the secure ops, in ``secinfer.mpc.approx``, with one config).

Submodules load lazily (``transformers`` is heavy and optional): import
``secinfer.seclmm.patch``, ``secinfer.seclmm.tasks`` and so on directly.
"""

from __future__ import annotations

__all__: list[str] = []
