"""Shared test settings: one torch thread (tests use tiny tensors, where a second thread only adds
synchronisation, and a busy machine makes two threads much slower), and a private cache.

`make test` runs the tests on two pytest-xdist workers (`-n 2 --dist loadfile`: a file's tests on
one worker, so a module's fixture runs once). The workers share one private cache, so a stage one
builds (the SFT model, a starting evaluation) is the other's too; the cache's own lock keeps two
builds of one entry apart."""

import os
from pathlib import Path

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
    monkeypatch.setenv("RLBENCH_CACHE", str(private_cache(tmp_path_factory)))


def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' stage cache: beside every worker's temporary folder (under xdist each worker has one
    of its own, in the session's), else in the session's temporary folder."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "rlbench-cache"
