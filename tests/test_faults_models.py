"""Model directories and the stage cache under faults (issue 17, cases 2, 8, 9 and 11).

- A model directory whose config.json maps to its own Python file (`auto_map`): with
  trust_remote_code false no loader may ask "Do you wish to run the custom code?", so a `y` on
  stdin must change nothing and the file must never run.
- A truncated model.safetensors in the SFT cache is rebuilt, not trusted.
- Two builds of one cache entry: the later one keeps the earlier one's finished entry.
- A model directory without weights: exit 2 and one line.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from rlbench.cache import cached_dir, is_complete
from rlbench.cli import main
from rlbench.config import SFTConfig, TaskConfig
from rlbench.errors import UserError
from rlbench.models.embedded import build_embedded, load_pretrained_pair, save_pretrained_pair
from rlbench.stages.sft import cold_start

TINY = Path(__file__).parent / "data" / "tiny.yaml"
EVIL = """\
import pathlib
pathlib.Path({marker!r}).write_text("the model directory's own code ran")
from transformers import LlamaConfig
class EvilConfig(LlamaConfig):
    model_type = "evil_llama"
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    model, tokenizer = build_embedded(0)
    return save_pretrained_pair(model, tokenizer, tmp_path_factory.mktemp("model"))


@pytest.fixture
def evil_dir(model_dir: Path, tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A copy of the embedded model whose config names its own Python code; a `y` waits on stdin."""
    target = tmp_path / "evil-model"
    target.mkdir()
    for item in model_dir.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    marker = tmp_path / "ran"
    config = json.loads((target / "config.json").read_text())
    config.update(model_type="evil_llama", auto_map={"AutoConfig": "evil.EvilConfig",
                                                     "AutoModelForCausalLM": "evil.EvilConfig"})
    (target / "config.json").write_text(json.dumps(config))
    (target / "evil.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 20))  # what `yes y | rlbench run ...` answers
    return target, marker


# ---- 2: trust_remote_code false everywhere ------------------------------------------------------


def test_load_pretrained_pair_never_asks_and_never_runs_the_code(evil_dir) -> None:
    path, marker = evil_dir
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_pretrained_pair(path)
    assert not marker.exists()


def test_the_sft_stage_never_runs_the_code(evil_dir) -> None:
    path, marker = evil_dir
    with pytest.raises(ValueError, match="trust_remote_code"):
        cold_start(path, str(path), SFTConfig(steps=1, batch_size=2, train_size=10),
                   TaskConfig(max_steps=1, train_size=10), seed=0)
    assert not marker.exists()


def test_run_refuses_the_directory_with_one_line(evil_dir, tmp_path: Path, capsys) -> None:
    path, marker = evil_dir
    code = main(["run", str(TINY), "--set", f"model.name={path}", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "ships its own Python code (auto_map in config.json)" in err[0] and "trust_remote_code" in err[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_estimate_never_runs_the_code(evil_dir, capsys) -> None:
    path, marker = evil_dir
    code = main(["estimate", "--model", str(path), "--algos", "grpo_zero"])
    err = capsys.readouterr().err.strip().splitlines()
    # refused before any config is read: the directory names code of its own (as `run` refuses it)
    assert code == 2 and len(err) == 1 and "ships its own Python code" in err[0]
    assert not marker.exists()


# ---- 11: a model directory without weights ------------------------------------------------------


def test_a_model_directory_without_weights_is_exit_2(model_dir: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    for item in model_dir.iterdir():
        if not item.name.endswith(".safetensors"):
            (empty / item.name).write_bytes(item.read_bytes())
    code = main(["run", str(TINY), "--set", f"model.name={empty}", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: model.name: {empty} holds no weights")


# ---- 8: a corrupt entry is rebuilt --------------------------------------------------------------


def test_a_truncated_sft_model_is_rebuilt_not_trusted(model_dir: Path) -> None:
    args = (model_dir, "embedded-copy", SFTConfig(steps=1, batch_size=2, train_size=10),
            TaskConfig(max_steps=1, train_size=10), 0)
    path, _, hit = cold_start(*args)
    weights = path / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(size // 2)  # what a full disk or an interrupted copy leaves
    assert not is_complete(path)
    again, _, hit = cold_start(*args)
    assert again == path and not hit
    assert weights.stat().st_size == size
    model, _ = load_pretrained_pair(again)  # loads: the entry was rebuilt
    assert sum(p.numel() for p in model.parameters()) > 0


def test_an_entry_from_an_older_rlbench_without_sizes_is_rebuilt(tmp_path: Path) -> None:
    builds = []

    def build(tmp: Path) -> None:
        builds.append(tmp)
        (tmp / "data.bin").write_bytes(b"x" * 100)

    path, hit = cached_dir("kind", "key", build)
    (path / "DONE").write_text("ok\n")  # the old marker said nothing of the files
    path, hit = cached_dir("kind", "key", build)
    assert not hit and len(builds) == 2 and is_complete(path)
    assert cached_dir("kind", "key", build) == (path, True) and len(builds) == 2


# ---- 9: concurrent builds -----------------------------------------------------------------------


def test_a_later_build_keeps_the_finished_entry_another_process_uses() -> None:
    """The outer build stands for a process that started first and finishes last; while it builds,
    another process builds the same entry, finishes, and opens its file. The later finisher must
    leave that entry as it is (the old code deleted it to rename its own copy into place)."""
    opened = {}

    def first_to_finish(tmp: Path) -> None:
        (tmp / "weights.bin").write_bytes(b"first")

    def last_to_finish(tmp: Path) -> None:
        path, hit = cached_dir("sft", "same-key", first_to_finish)
        opened["path"] = path
        opened["file"] = open(path / "weights.bin", "rb")  # noqa: SIM115 - held like a loaded model
        (tmp / "weights.bin").write_bytes(b"second")

    path, hit = cached_dir("sft", "same-key", last_to_finish)
    try:
        assert path == opened["path"] and not hit
        assert (path / "weights.bin").read_bytes() == b"first"  # the finished entry was kept
        assert is_complete(path)
        assert not [p for p in path.parent.iterdir() if p.name.startswith(".same-key-")]  # no copies left
    finally:
        opened["file"].close()


def test_a_build_that_fails_leaves_no_entry() -> None:
    def broken(tmp: Path) -> None:
        (tmp / "half").write_bytes(b"x")
        raise UserError("stopped")

    with pytest.raises(UserError):
        cached_dir("sft", "broken", broken)
    path, hit = cached_dir("sft", "broken", lambda tmp: (tmp / "whole").write_bytes(b"y"))
    assert not hit and sorted(p.name for p in path.iterdir()) == ["DONE", "whole"]
