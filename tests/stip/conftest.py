"""One torch thread per STIP test: on a shared, oversubscribed machine two spinning threads
run several times slower than one. Restored afterwards, so other tests are unaffected."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
