"""What a cached CPU peak belongs to (`cpu_identity`): the ISA limits set in the environment are part
of it, unset ones and thread counts are not (threads are named once, from torch itself)."""

from __future__ import annotations

import pytest

from rlbench.environment import NUMERIC_ENV_VARS
from rlbench.measure.flops import cpu_identity


@pytest.fixture
def clean_env(monkeypatch):
    for name in NUMERIC_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_an_isa_limit_is_part_of_the_identity_and_an_unset_one_is_not(clean_env) -> None:
    plain = cpu_identity()
    assert "None" not in plain and "=" not in plain.split("| torch")[0]  # nothing set: no limits listed
    clean_env.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    limited = cpu_identity()
    assert "MKL_ENABLE_INSTRUCTIONS=AVX2" in limited and limited != plain


def test_thread_counts_are_not_listed_as_limits(clean_env) -> None:
    threads = [name for name in NUMERIC_ENV_VARS if "THREADS" in name]
    assert threads  # OMP_NUM_THREADS and the like
    plain = cpu_identity()
    clean_env.setenv(threads[0], "3")
    assert cpu_identity() == plain  # the threads torch runs with are named once, at the end
