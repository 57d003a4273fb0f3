"""Fixtures shared by the test files."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test, restored afterwards: small forward passes run
    fastest on one thread, and OpenMP threads spinning against other processes on a busy
    2-core machine make them 10-50x slower. Use with ``pytest.mark.usefixtures``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
