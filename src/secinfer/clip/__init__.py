"""SecLMM side of secinfer: MPC-friendly approximations, model patching and CLIP-style tasks.

Submodules load lazily (``transformers`` is heavy and optional): import
``secinfer.clip.approx``, ``secinfer.clip.patch``, ``secinfer.clip.tasks`` and so on directly.
"""

from __future__ import annotations

__all__: list[str] = []
