"""The accuracy settings: the fixed demonstration set and its stopping rule, scorings, simulated
reward models; every mistake one line naming its field, exit 2; and the cache keys of suites that
do not use them unchanged."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rlbench.cli import main
from rlbench.config import load_suite
from rlbench.errors import UserError

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "suites" / "quickstart.yaml"


def _errors(overrides: list[str], suite: Path = REPO / "suites" / "accuracy.yaml") -> str:
    with pytest.raises(UserError) as err:
        load_suite(suite, overrides)
    return str(err.value)


def test_the_accuracy_suites_validate():
    for name in ("accuracy", "accuracy-rm", "accuracy-small"):
        suite = load_suite(REPO / "suites" / f"{name}.yaml")
        assert suite.model.sft.demonstrations and suite.eval.headline == "strict"
        assert suite.eval.scoring == ["strict", "flexible"]


def test_demonstrations_beyond_the_train_split_name_the_field():
    message = _errors(["model.sft.demonstrations=30000"])
    assert "model.sft.demonstrations: must be <= task.train_size (20000), got 30000" in message


def test_min_steps_at_or_past_the_horizon_is_refused():
    # 500 demonstrations x 2 epochs / 32 per step = 31.25 -> a 32-step horizon
    message = _errors(["model.sft.max_epochs=2", "model.sft.min_steps=32", "model.sft.eval_every=8"])
    assert "model.sft.min_steps: must be below the SFT horizon of 32 steps" in message


def test_unknown_scoring_and_noise_on_a_reward_model_are_refused():
    assert "eval.scoring[1]: must be one of pipeline, strict, flexible, got 'loose'" in _errors(
        ["eval.scoring=[strict,loose]"])
    assert "eval.headline" in _errors(["eval.headline=loose"])
    message = _errors(["algorithms[1].reward_noise=0.5"])  # algorithms[1] is grpo on the reward model
    assert "algorithms[1].reward_noise: adds noise to the rule reward: set reward: rules" in message


def test_the_cli_says_one_line_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "suites" / "accuracy-small.yaml").read_text().replace("min_steps: 4}", "min_steps: 40}"))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.sft.min_steps: must be below the SFT horizon of 16 steps" in err and "Traceback" not in err


def test_stage_keys_cover_the_numerics_and_the_new_settings_only_where_set(monkeypatch):
    """SFT and reward-model keys change with the numerics environment (another torch or CPU kind
    rebuilds the stage); the accuracy settings enter a key only where a suite sets them, and the
    starting evaluation's key is the one rlbench computed before they existed (main d700320)."""
    import rlbench.environment
    from rlbench.cache import stable_hash
    from rlbench.stages.reward_model import reward_model_key
    from rlbench.stages.sft import sft_key
    from rlbench.stages.starting_eval import eval_key_settings

    suite = load_suite(QUICKSTART)
    base = Path("/c/base/abc")
    sft_here, rm_here = sft_key("embedded", base, suite.model.sft, suite.task, 0), reward_model_key(Path("/c/sft/def"), suite)
    monkeypatch.setattr(rlbench.environment, "stage_numerics", lambda device=None: {"torch": "another"})
    assert sft_key("embedded", base, suite.model.sft, suite.task, 0) != sft_here
    assert reward_model_key(Path("/c/sft/def"), suite) != rm_here
    monkeypatch.undo()
    assert sft_key("embedded", base, suite.model.sft, suite.task, 0) == sft_here
    assert stable_hash({"eval": eval_key_settings(suite)}) == "813fef35de9167bb"
    # without a demonstration set the dev evaluation's length does not enter the key; with one it does
    assert sft_key("embedded", base, suite.model.sft, suite.task, 0, eval_tokens=48) == sft_here
    demos = replace(suite.model.sft, demonstrations=100)
    assert sft_key("embedded", base, demos, suite.task, 0) != sft_here
    assert sft_key("embedded", base, demos, suite.task, 0, eval_tokens=40) != \
        sft_key("embedded", base, demos, suite.task, 0, eval_tokens=48)
    verifier = replace(suite, model=replace(suite.model, reward_model=replace(suite.model.reward_model,
                                                                              kind="verifier")))
    assert reward_model_key(Path("/c/sft/def"), verifier) != rm_here
    strict = replace(suite, eval=replace(suite.eval, headline="strict"))
    assert stable_hash({"eval": eval_key_settings(strict)}) != "813fef35de9167bb"


def test_runs_are_planned_seed_by_seed():
    from rlbench.runner import plan_runs

    suite = load_suite(REPO / "suites" / "accuracy.yaml")
    ids = [entry["id"] for entry in plan_runs(suite)]
    assert ids[:5] == ["grpo_zero/seed0", "grpo/seed0", "sft_more/seed0", "sft_new_data/seed0", "grpo_zero/seed1"]
