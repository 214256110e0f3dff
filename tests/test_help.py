"""`--help` of every command says what it does and shows an example; `ls --params` lists the values
`validate` accepts for each algorithm parameter (choices and bounds from the `f(...)` metadata)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from rlbench.algorithms.params import AGG_MODES, SCALE_MODES, GRPOParams, PPOParams
from rlbench.cli import build_parser, main
from rlbench.commands import allowed_values


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMANDS = sorted(_subcommands())


def _help(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_every_command_is_listed_with_a_summary(capsys: pytest.CaptureFixture) -> None:
    assert set(COMMANDS) == {"run", "validate", "ls", "compare", "check", "report", "estimate", "export"}
    text = _help(["--help"], capsys)
    for command in COMMANDS:
        assert command in text
    assert "examples:" in text and "rlbench export" in text


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_a_description_and_an_example(command: str, capsys: pytest.CaptureFixture) -> None:
    text = _help([command, "--help"], capsys)
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith(f"usage: rlbench {command}")
    description = rest.split("\n\n")[0]
    assert len(description.split()) >= 8, f"{command}: no description in --help:\n{text}"
    assert "\nexample" in text, f"{command}: no example in --help:\n{text}"
    examples = text.split("\nexample")[1].split("\n\n")[0].splitlines()[1:]
    assert examples and all(e.startswith(f"  rlbench {command}") for e in examples if e.strip())


def test_estimate_help_says_what_it_counts(capsys: pytest.CaptureFixture) -> None:
    text = " ".join(_help(["estimate", "--help"], capsys).split())
    for words in ("predicted peak by role and kind", "weights, gradients, optimizer state, activations, logits, KV cache",
                  "worst case: every completion runs to max_new_tokens", "no weight is loaded"):
        assert words in text


def test_allowed_values_from_field_metadata() -> None:
    meta = {f.name: f.metadata for f in dataclasses.fields(PPOParams)}
    assert allowed_values(meta["lr"]) == "0 < x < 1"  # gt=0, lt=1
    assert allowed_values(meta["gamma"]) == "0 ≤ x ≤ 1"  # ge=0, le=1
    assert allowed_values(meta["ppo_epochs"]) == "x ≥ 1"
    assert allowed_values(meta["vf_clip"]) == "x > 0"
    assert allowed_values(meta["value_init"]) == "auto | reward | policy"
    assert allowed_values(meta["whiten_advantages"]) == ""
    assert allowed_values({"lt": 5}) == "x < 5" and allowed_values({"le": 0.5}) == "x ≤ 0.5"


def test_ls_params_shows_choices_and_bounds(capsys: pytest.CaptureFixture) -> None:
    assert main(["ls", "--params"]) == 0
    text = capsys.readouterr().out
    flat = " ".join(text.replace("│", " ").split())
    for title in ("grpo params", "grpo_zero params", "ppo params"):
        assert title in text
    assert " | ".join(SCALE_MODES) in flat
    for mode in AGG_MODES:
        assert mode in flat
    grpo = {f.name: f.metadata for f in dataclasses.fields(GRPOParams)}
    assert allowed_values(grpo["clip_eps"]) in flat and allowed_values(grpo["group_size"]) == "x ≥ 2"
