"""Shared test settings: one torch thread (tests use tiny tensors, where a second thread only adds
synchronisation, and a busy machine makes two threads much slower), and a private cache."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Stages cached by a test never touch the user's ~/.cache/rlbench."""
    monkeypatch.setenv("RLBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "rlbench-cache"))
