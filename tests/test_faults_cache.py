"""The stage cache under faults, and what its keys hold: a disk that fills while an entry is written
(safetensors raises its own error type, no OSError), an entry corrupted in place at the same size, and
keys that change with the numerics environment (an SFT model trained with AVX2 kernels is not
reused where AMX kernels would have trained another). Real objects: safetensors writing to /dev/full,
the embedded model's SFT key."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from rlbench.cache import built_record, cache_root, cached_dir
from rlbench.config import SFTConfig, TaskConfig
from rlbench.errors import UserError
from rlbench.stages.sft import sft_key


def save_weights(where: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.arange(1024, dtype=torch.float32)}, str(where / "model.safetensors"))
    (where / "sft.json").write_text(json.dumps({"sft/steps": 1.0}))


FULL_DISK = """
import resource, signal, sys
import torch
from safetensors.torch import save_file
from rlbench.cache import cached_dir
from rlbench.errors import UserError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as ENOSPC would
resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    cached_dir("sft", "full-disk", lambda tmp: save_file({"w": torch.zeros(1024)}, str(tmp / "model.safetensors")))
except UserError as err:
    print(*err.messages)
"""


def test_a_disk_that_fills_while_saving_weights_is_one_line_naming_the_cache() -> None:
    # safetensors writes a temporary file, then renames it: the write that fails is its own, and it
    # raises SafetensorError, which is no OSError. The file size limit makes that write fail for real.
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", FULL_DISK], capture_output=True, text=True, cwd=root,
                          env=dict(os.environ), timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"cache {cache_root() / 'sft'}: cannot write the sft entry: File too large; free "
                                   "space there, or set RLBENCH_CACHE to a disk with room")
    assert not (cache_root() / "sft" / "full-disk").exists()


def test_a_full_disk_for_plain_files_too() -> None:
    def build(tmp: Path) -> None:
        (tmp / "tokenizer.json").symlink_to("/dev/full")
        with open(tmp / "tokenizer.json", "w") as fh:
            fh.write("{}")

    with pytest.raises(UserError, match="cannot write the base entry: No space left on device"):
        cached_dir("base", "full-disk-plain", build)


def test_other_build_errors_pass_through() -> None:
    def build(tmp: Path) -> None:
        raise ValueError("a bug, not a disk")

    with pytest.raises(ValueError, match="a bug"):
        cached_dir("sft", "a-bug", build)


def test_an_entry_corrupted_at_the_same_size_names_the_entry_to_delete() -> None:
    path, hit = cached_dir("sft", "corrupt-me", save_weights)
    assert not hit
    weights = path / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:  # the header's length, overwritten in place: the size is unchanged
        fh.write(b"\xff" * 8)
    assert weights.stat().st_size == size
    with pytest.raises(UserError) as caught:
        cached_dir("sft", "corrupt-me", save_weights)
    assert caught.value.messages == [f"cache entry {path} is corrupted (model.safetensors changed since it was "
                                     f"written, at the same size); delete that directory and run again: rm -r {path}"]


def test_an_entry_touched_but_unchanged_is_still_a_hit() -> None:
    path, _ = cached_dir("sft", "touched", save_weights)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    os.utime(path / "model.safetensors", ns=(stamp + 10**9, stamp + 10**9))  # a copy without -p does this
    assert cached_dir("sft", "touched", save_weights) == (path, True)


def test_an_entry_says_where_it_was_built() -> None:
    path, _ = cached_dir("sft", "built-here", save_weights)
    built = built_record(path)
    assert built["host"] == platform.node() and built["cpu"] and built["at"].endswith("+00:00")


def test_the_sft_key_covers_the_numerics_environment(monkeypatch, tmp_path: Path) -> None:
    args = ("embedded", tmp_path / "base", SFTConfig(steps=1), TaskConfig(), 0)
    here = sft_key(*args)
    assert sft_key(*args) == here
    # MKL limited to SSE4.2 runs other kernels (other floats): another entry, never this machine's.
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "SSE4_2")
    assert sft_key(*args) != here
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS")
    assert sft_key(*args) == here
    assert sft_key(*args[:2], SFTConfig(**{**asdict(SFTConfig(steps=1)), "steps": 2}), *args[3:]) != here


def test_the_reward_model_key_covers_it_too(monkeypatch, tmp_path: Path) -> None:
    from rlbench.config import load_suite
    from rlbench.stages.reward_model import reward_model_key

    suite = load_suite(Path(__file__).resolve().parents[1] / "tests" / "data" / "tiny.yaml")
    here = reward_model_key(tmp_path, suite)
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "SSE4_2")
    assert reward_model_key(tmp_path, suite) != here
