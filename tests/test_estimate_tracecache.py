"""Traces kept on disk (rlbench/estimate/tracecache.py): read back whole, keyed by every argument and
rlbench's own code, dropped when damaged, and the command's figures the same either way."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from rlbench.config import load_suite
from rlbench.estimate import tracecache
from rlbench.estimate.parallel import TracePool
from rlbench.estimate.simulate import trace_run
from rlbench.estimate.source import config_from_dict
from tests.test_estimate import TINY_CONFIG, TINY_SUITE, rlbench, suite_file


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """A cache of this test's own: the session's may hold the same traces from other tests."""
    monkeypatch.setenv("RLBENCH_CACHE", str(tmp_path / "cache"))


def _args(tmp_path, ranks: int = 1, depth: int = 2) -> tuple:
    suite = load_suite(suite_file(tmp_path, TINY_SUITE), ["rollout.completions_per_step=8"])
    config = config_from_dict(dict(TINY_CONFIG, num_hidden_layers=depth))
    return suite, suite.algorithms[0], config, depth, 10, torch.device("cpu"), True, None, ranks


def test_a_kept_trace_reads_back_equal_and_only_under_its_own_arguments(tmp_path, monkeypatch):
    args = _args(tmp_path)
    trace = trace_run(*args)
    assert tracecache.load(tracecache.key(args)) is None
    tracecache.store(tracecache.key(args), trace)
    assert tracecache.load(tracecache.key(args)) == trace  # every region's peak, start and end, with their parts
    other = [_args(tmp_path, ranks=2), _args(tmp_path, depth=3),
             (dataclasses.replace(args[0], rollout=dataclasses.replace(args[0].rollout, max_new_tokens=5)), *args[1:])]
    assert len({tracecache.key(a) for a in [args, *other]}) == 4 and all(tracecache.load(tracecache.key(a)) is None for a in other)
    monkeypatch.setattr(tracecache, "source_digest", lambda: "rlbench changed")
    assert tracecache.load(tracecache.key(args)) is None  # another rlbench traces again


def test_a_damaged_entry_is_dropped_and_a_pool_without_keep_reads_nothing(tmp_path):
    args = _args(tmp_path)
    trace = trace_run(*args)
    tracecache.store(tracecache.key(args), trace)
    assert TracePool(1).run([args]) == [trace] and TracePool(1).read == 0
    kept = TracePool(1, keep=True)
    assert kept.run([args]) == [trace] and (kept.read, kept.done) == (1, 0)
    entry = tracecache.folder() / tracecache.key(args)
    text = (entry / tracecache.FILE).read_text()
    (entry / tracecache.FILE).write_text(text.replace('"depth": 2', '"depth": 7'))  # the same size, another trace
    assert tracecache.load(tracecache.key(args)) is None and not entry.exists()


def test_the_command_reads_back_what_it_traced_and_prints_the_same(tmp_path):
    path = suite_file(tmp_path, TINY_SUITE)
    command = ("estimate", str(path), "--json", "--prompt-tokens", "10", "--device", "cpu", "--jobs", "1")
    first, again, fresh = rlbench(*command), rlbench(*command), rlbench(*command, "--no-cache")
    documents = []
    for proc in (first, again, fresh):
        assert proc.returncode == 0, proc.stderr[-2000:]
        document = json.loads(proc.stdout)
        documents.append((document.pop("seconds"), document.pop("notes"), document))
    (_, first_notes, traced), (_, notes, read), (_, fresh_notes, retraced) = documents
    assert traced == read == retraced
    [note] = [n for n in notes if n not in first_notes]
    assert re.fullmatch(rf"(\d+) of \1 traces read back from {re.escape(str(tracecache.folder()))} "
                        r"\(made before with the same settings and code; --no-cache traces them again\)", note), note
    assert fresh_notes == first_notes
