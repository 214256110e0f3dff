"""What `model.name` may name, checked when a suite is read (validate, run, estimate alike): a path
that does not exist, a shape config that cannot be built, completions longer than the model's
positions and impossible thread counts are one line with the field and exit 2, never a traceback
from the hub library or transformers. Each case reproduces a defect found by trying it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlbench.cli import main
from rlbench.config.model_source import EMBEDDED_POSITIONS, model_positions
from rlbench.models.embedded import ARCHITECTURE

CI = str(Path(__file__).resolve().parents[1] / "suites" / "ci.yaml")


def validate(capsys, *overrides: str) -> tuple[int, list[str]]:
    argv = ["validate", CI]
    for item in overrides:
        argv += ["--set", item]
    code = main(argv)
    err = capsys.readouterr().err
    return code, [" ".join(line.split()) for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["/data/models/qwen2.5", "./x", "~/x", "a b", "../models/q"])
def test_a_model_path_that_does_not_exist_is_one_line(capsys, name: str) -> None:
    code, lines = validate(capsys, f"model.name={name}")
    assert code == 2
    assert lines == [f"error: model.name: no such directory: {name} (a local model is a directory with its "
                     "config.json and weights; a hub model is named owner/name)"]


def test_run_says_the_same_before_any_folder_exists(capsys, tmp_path: Path) -> None:
    code = main(["run", CI, "--set", "model.name=/data/models/qwen2.5", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.name: no such directory: /data/models/qwen2.5" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_hub_name_is_not_read_here() -> None:
    assert model_positions("Qwen/Qwen2.5-0.5B-Instruct") is None


def test_max_new_tokens_must_fit_the_models_positions(capsys) -> None:
    assert EMBEDDED_POSITIONS == ARCHITECTURE["max_position_embeddings"]  # one figure, said twice
    code, lines = validate(capsys, "rollout.max_new_tokens=1000000")
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: rollout.max_new_tokens: 1000000 tokens do not fit the model's 512 positions")
    code, _ = validate(capsys, f"rollout.max_new_tokens={EMBEDDED_POSITIONS}")  # no room left for a prompt
    assert code == 2
    code, _ = validate(capsys, f"rollout.max_new_tokens={EMBEDDED_POSITIONS - 1}")  # the boundary: a 1-token prompt
    assert code == 0


def _shape(tmp_path: Path, data: bytes | dict) -> str:
    path = tmp_path / "config.json"
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return f"model.name=shape:{path}"


QWEN = json.loads((Path(__file__).resolve().parents[1] / "rlbench" / "models" / "shapes" / "qwen2.5-0.5b.json")
                  .read_text())


@pytest.mark.parametrize("change, said", [
    ({"vocab_size": -5}, "vocab_size must be a whole number from 1 to 16,777,216, got -5"),
    ({"vocab_size": "151936"}, "vocab_size must be a whole number from 1 to 16,777,216, got '151936'"),
    ({"hidden_size": 896.5}, "hidden_size must be a whole number from 1 to 16,777,216, got 896.5"),
    ({"hidden_size": True}, "hidden_size must be a whole number"),
    ({"num_hidden_layers": 10**30}, "num_hidden_layers must be a whole number from 1 to 16,777,216"),
    ({"hidden_size": 2**24, "intermediate_size": 2**24}, "more than 1e+13: no machine holds it"),
    ({"model_type": 7}, "model_type must be a string, got 7"),
])
def test_a_shape_config_that_cannot_be_built_is_one_line(capsys, tmp_path: Path, change: dict, said: str) -> None:
    code, lines = validate(capsys, _shape(tmp_path, {**QWEN, **change}))
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: model.name: 'shape:{tmp_path / 'config.json'}': {tmp_path / 'config.json'}: ")
    assert said in lines[0]


@pytest.mark.parametrize("data, said", [
    (b'{"model_type": "qwen2", "vocab_size": 10, "x": "\xff"}', "is not UTF-8 text (byte 0xff at offset"),
    (b"[1, 2]", "holds no JSON object"),
    (b"[" * 100_000, "cannot read"),
])
def test_an_unreadable_shape_config_is_one_line(capsys, tmp_path: Path, data: bytes, said: str) -> None:
    code, lines = validate(capsys, _shape(tmp_path, data))
    assert code == 2 and len(lines) == 1 and said in lines[0]


def test_a_shape_path_that_does_not_exist_is_refused(capsys, tmp_path: Path) -> None:
    code, lines = validate(capsys, f"model.name=shape:{tmp_path / 'nothing.json'}")
    assert code == 2 and len(lines) == 1 and "no config.json at that path" in lines[0]


def test_a_shape_past_its_positions(capsys) -> None:
    code, lines = validate(capsys, "model.name=shape:qwen2.5-0.5b", "rollout.max_new_tokens=40000")
    assert code == 2 and any("do not fit the model's 32768 positions" in line for line in lines)


def test_impossible_thread_counts_are_refused(capsys) -> None:
    code, lines = validate(capsys, "threads=100000")
    assert code == 2 and lines == ["error: threads: at most 4096 (more torch threads than any machine has cores "
                                   "cannot start; leave it unset for all cores), got 100000"]
