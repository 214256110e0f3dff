"""`rlbench estimate`: static bytes per role from the config, matching what a run measures."""

import subprocess
import sys

from rlbench.estimate import estimate
from rlbench.measure.static import role_static_bytes
from rlbench.models.embedded import build_embedded


def test_embedded_estimate_matches_the_tensors():
    model, _ = build_embedded(0)
    weights = role_static_bytes(model)["weights"]
    n_tensors = len(list(model.parameters()))
    out = estimate("embedded", ["ppo", "grpo", "grpo_zero"], "float32")
    assert set(out["ppo"]) == {"policy", "value", "reference", "reward"}
    assert set(out["grpo"]) == {"policy", "reference", "reward"}
    assert set(out["grpo_zero"]) == {"policy", "reference"}
    policy = out["grpo_zero"]["policy"]
    assert policy["weights"] == weights and policy["gradients"] == weights
    assert policy["optimizer"] == 2 * weights + 4 * n_tensors
    assert out["grpo_zero"]["reference"]["total"] == weights
    half = estimate("embedded", ["grpo_zero"], "bfloat16")["grpo_zero"]["reference"]["total"]
    assert half * 2 == weights


def test_estimate_cli_and_unknown_algorithm():
    ok = subprocess.run([sys.executable, "-m", "rlbench", "estimate", "--algos", "grpo_zero,ppo",
                         "--dtype", "float32", "--gpu-gib", "1"], capture_output=True, text=True)
    assert ok.returncode == 0 and "all roles" in ok.stdout and "fits" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "rlbench", "estimate", "--algos", "grpo_zeroo"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'grpo_zero'" in bad.stderr and "Traceback" not in bad.stderr
