"""Shared fixtures for the SecLMM tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread_offline() -> Iterator[None]:
    # Small models on a shared 2-core machine: one thread avoids OpenMP spin-waiting, which
    # made tiny-CLIP steps 17x slower in measurements here. Restored when tests/clip is done.
    before = torch.get_num_threads()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
