"""Fixtures for the experiments' tests (the research code in the repository's experiments/)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread_offline() -> Iterator[None]:
    # small models on a shared 2-core machine: one thread avoids OpenMP spin-waiting (tiny-CLIP
    # steps were 17x slower with two); no model download in tests
    before = torch.get_num_threads()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def gen() -> torch.Generator:
    # fresh randomness per test, as in tests/tee
    return torch.Generator().manual_seed(secrets.randbits(62))
