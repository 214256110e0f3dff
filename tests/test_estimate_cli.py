"""`rlbench estimate`'s command line: errors a user can cause, the JSON with a card, the cards and
the largest value that fits, the headroom settings, and the GPU calibration script run on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlbench.config import load_suite
from rlbench.errors import UserError
from rlbench.estimate.fit import CARDS, card_gib, largest_under, with_value
from rlbench.estimate.source import config_from_dict
from tests.test_estimate import ROOT, TINY_CONFIG, TINY_SUITE, rlbench, suite_file

# ---- command line, fits and headroom ---------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--gpu-gib", "-3"], "--gpu-gib: must be a positive number of GiB, got -3"),
    (["--gpu", "tpu9000"], "--gpu: unknown card 'tpu9000'"),
    (["--algos", "grpo_zeroo"], "did you mean 'grpo_zero'"),
    (["--headroom", "batch", "--gpu", "h100"], "--headroom: unknown setting 'batch'"),
    (["--headroom", "max_new_tokens"], "--headroom: needs a card"),
    (["--dtype", "float8"], "--dtype: must be one of"),
    (["no/such/suite.yaml"], "suite: no such file"),
    (["--jobs", "0"], "--jobs: must be 1 to 256, got 0"),
])
def test_bad_arguments_exit_2_with_one_line(args, message):
    proc = rlbench("estimate", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_cli_estimate_json_with_a_card(tmp_path):
    path = suite_file(tmp_path, TINY_SUITE)
    out = rlbench("estimate", str(path), "--json", "--gpu-gib", "1.0", "--prompt-tokens", "20", "--algos", "grpo_zero")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    [algo] = data["algorithms"]
    assert data["settings"]["prompt_tokens"] == 20 and data["settings"]["max_new_tokens"] == 4
    assert algo["fit"]["fits"] is False  # 1 GiB less the 1 GiB device overhead holds nothing
    assert algo["sizing"]["smallest_ranks"] is None and "device overhead alone" in algo["sizing"]["note"]
    assert algo["fit"]["required_bytes"] == algo["process_peak_bytes"] + 2**30


def test_cards_and_the_largest_value_that_fits():
    assert card_gib(None, "H100") == (CARDS["h100-80gb"], "H100-80GB") and card_gib(80, None)[0] == 80
    with pytest.raises(UserError):
        card_gib(0, None)
    def value(v: int) -> int:  # a monotone stand-in for an estimate's bytes: up to 100 fits
        return v

    assert largest_under(value, 100, 8)[0] == 100
    assert largest_under(value, 100, 512)[0] == 100  # searched downwards from a value that does not fit
    assert largest_under(value, 100, 8, step=4)[0] == 100 and largest_under(value, 100, 8, step=3)[0] == 99
    assert largest_under(lambda v: None, 100, 8)[0] is None  # every estimate failed


def test_headroom_settings_change_the_suite_as_a_user_would(tmp_path):
    suite = load_suite(suite_file(tmp_path))
    algo = suite.algorithms[0]
    assert with_value(suite, "max_new_tokens", 99, algo).rollout.max_new_tokens == 99
    more = with_value(suite, "group_size", 8, algo)  # 16 prompts per step, now 8 completions each
    assert (more.rollout.group_size, more.rollout.completions_per_step) == (8, 128)


# ---- the GPU calibration script, on the CPU ----------------------------------------------------------


def test_gpu_check_runs_on_the_cpu(tmp_path):
    from transformers import AutoModelForCausalLM

    from rlbench.models.embedded import save_pretrained_pair
    from rlbench.models.tokenizer import build_tokenizer
    from rlbench.tasks.synthetic import vocabulary

    tokenizer = build_tokenizer(vocabulary())
    config = config_from_dict(dict(TINY_CONFIG, vocab_size=len(tokenizer), num_hidden_layers=2))
    save_pretrained_pair(AutoModelForCausalLM.from_config(config), tokenizer, tmp_path / "tiny")
    output = tmp_path / "gpu_check.json"
    small = ["rollout.completions_per_step=4", "rollout.max_new_tokens=4", "eval.size=2", "eval.batch_size=2",
             "model.dtype=float32", "threads=1",
             "algorithms=[{name: ppo, reward: rules, params: {value_init: policy}}]"]  # policy, reference, value
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--no-tests", "--models", str(tmp_path / "tiny"),
           "--output", str(output), *(x for o in small for x in ("--set", o))]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(output.read_text())
    [model] = result["models"]
    assert result["device"] == "cpu" and model["static_exact"] is True
    assert set(model["rows"]) == {"cpu"}
    phases = {(r["algorithm"], r["phase"]) for r in model["rows"]["cpu"] if r["what"] == "rise"}
    assert {("ppo", "update"), ("ppo", "ref_logprobs"), ("ppo", "values"), ("ppo", "value_update")} <= phases
    assert {a["label"] for a in model["estimate"]["algorithms"]} == {"ppo"}
