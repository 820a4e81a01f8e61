"""Fixtures shared by the test files."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are dominated by per-op overhead: one intra-op thread is as fast alone and much faster on a
    shared, loaded machine (measured 4x here). Restored afterwards for the other test files. A file opts in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
