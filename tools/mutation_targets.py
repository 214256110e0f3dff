"""What tools/mutate.py mutates and how: the modules with the tests that cover them, the named bugs
that once got past the tests (always tried), and the survivors shown equivalent, each with its reason."""

from __future__ import annotations

from mutants import Named

# Module -> the test files that cover it, fastest first (each entry: a path, optionally with "::test").
MODULES: dict[str, list[str]] = {  # in the order they are tried: the named bugs' modules first
    "rlbench/tasks/answers.py": ["tests/test_answers.py"],
    "rlbench/measure/summary.py": ["tests/test_summary.py", "tests/test_reconciliation.py"],
    "rlbench/report/stats.py": ["tests/test_stats.py"],
    "rlbench/measure/static.py": ["tests/test_static_bytes.py"],
    "rlbench/measure/flops.py": ["tests/test_flops.py", "tests/test_budget_flops.py", "tests/test_flops_identity.py"],
    "rlbench/algorithms/grpo.py": ["tests/test_grpo.py"],
    "rlbench/algorithms/ppo.py": ["tests/test_ppo.py"],
    "rlbench/algorithms/losses.py": ["tests/test_losses.py", "tests/test_grpo.py::test_grpo_loss_and_gradient_by_hand",
                                     "tests/test_ppo.py::test_ppo_policy_loss_and_gradient_by_hand",
                                     "tests/test_ppo.py::test_ppo_value_loss_and_gradient_by_hand"],
    "rlbench/algorithms/advantages.py": ["tests/test_advantages.py",
                                         "tests/test_ppo.py::test_advantages_are_whitened_gae_by_hand"],
    "rlbench/algorithms/sft_more.py": ["tests/test_sft_more_loss.py",  # and which demonstrations each arm trains on:
                                       "tests/test_accuracy_stages.py::test_sft_more_trains_on_the_same_"
                                       "demonstrations_and_sft_new_data_on_fresh_ones"],
    "rlbench/algorithms/base.py": ["tests/test_algorithm_base.py"],
    "rlbench/algorithms/params.py": ["tests/test_algorithm_params.py"],
    "rlbench/report/check.py": ["tests/test_check.py", "tests/test_faults_check.py", "tests/test_check_command.py",
                                "tests/test_check_formats.py", "tests/test_check_hardware.py"],
    # the gate's thresholds and noise (exceeds, judge), moved out of check.py
    "rlbench/report/gate.py": ["tests/test_check_inputs.py", "tests/test_check.py", "tests/test_faults_check.py",
                               "tests/test_check_hardware.py", "tests/test_check_command.py"],
}
# Modules tried for their named mutants only (no generated ones), with the tests that cover those.
NAMED_ONLY: dict[str, list[str]] = {
    "rlbench/measure/budget.py": ["tests/test_budget_flops.py::test_budget_fraction_is_the_tightest_limit"],
}


NAMED: tuple[Named, ...] = (
    Named("grpo-kl-sign", "rlbench/algorithms/grpo.py", "policy_loss",
          "loss = loss + p.beta * kl", "loss = loss - p.beta * kl"),
    Named("grpo-kl-token-mean", "rlbench/algorithms/grpo.py", "policy_loss",
          "mb.mask, p.agg)", 'mb.mask, "token_mean")'),
    Named("summary-engine-bytes", "rlbench/measure/summary.py", "_memory",
          'call["static_bytes"] + engine_total', 'call["static_bytes"]'),
    Named("stats-t-coefficient-halved", "rlbench/report/stats.py", "t_quantile",
          "16 * z ** 3", "8 * z ** 3"),
    Named("stats-weak-rm-boundary", "rlbench/report/stats.py", "weak_reward_model",
          "accuracy - 0.5 <= z * se", "accuracy - 0.5 < z * se"),
    Named("check-absolute-threshold", "rlbench/report/gate.py", "exceeds",
          "1 if worse > threshold.limit", "1 if worse >= threshold.limit"),
    Named("check-within-noise", "rlbench/report/gate.py", "judge",
          "abs(new_value - base_value) <= noise", "abs(new_value - base_value) < noise"),
    Named("answers-first-hash-marks", "rlbench/tasks/answers.py", "_from_hash_marks",
          "canonical_number(found[-1])", "canonical_number(found[0])"),
    Named("answers-first-a-line", "rlbench/tasks/answers.py", "_from_a_line", "lines[-1]", "lines[0]",
          retired="the a_line filter was removed (wherever it matched, the last-number filter returned the "
                  "same answer); answers-last-number-first stands in for it"),
    Named("answers-last-number-first", "rlbench/tasks/answers.py", "_last_number",
          "canonical_number(numbers[-1])", "canonical_number(numbers[0])"),
    Named("budget-fraction-min", "rlbench/measure/budget.py", "fraction",
          "min(1.0, max(fractions))", "min(1.0, min(fractions))"),
)

# Survivors that cannot change behaviour: (path, function, text on the mutated line, edit as listed) -> why.
EQUIVALENT: dict[tuple[str, str, str, str], str] = {
    ("rlbench/report/stats.py", "<module>", "EXACT_T_MAX_DF = 1000", "`1000` -> `1001`"):
        "df 1001 then takes the exact series instead of the expansion; the two agree there to 5e-8 "
        "(the expansion's next term), far inside the promised 1e-6",
    ("rlbench/report/stats.py", "mcnemar_exact", "if n == 0:", "`0` -> `1`"):
        "n = 0 and n = 1 both give p = 1 through the formula as well (min(1, 2 x 1) and 2 x 1/2)",
    ("rlbench/report/stats.py", "t_quantile", "low, high = 0.0, 1.0", "`1.0` -> `0.5`"):
        "a bracket's upper end only has to lie above the root: the 60 halvings end within 2^-50 of it either way",
    ("rlbench/report/stats.py", "t_quantile", "while _t_two_sided_mass(high, df) < mass:",
     "`_t_two_sided_mass(high, df) < mass` -> `_t_two_sided_mass(high, df) <= mass`"):
        "differs only when the mass at a power of 2 equals 2q - 1 exactly; the bracket then doubles once more",
    ("rlbench/report/stats.py", "t_quantile", "high *= 2", "`2` -> `3`"):
        "any bracket that holds the root: 60 halvings end within 2^-50 of it",
    ("rlbench/report/stats.py", "t_quantile", "for _ in range(60):", "`60` -> `61`"):
        "one more halving of an interval already under 2^-50 of the root",
    ("rlbench/report/stats.py", "t_quantile", "if _t_two_sided_mass(mid, df) < mass else (low, mid)",
     "`_t_two_sided_mass(mid, df) < mass` -> `_t_two_sided_mass(mid, df) <= mass`"):
        "differs only when a midpoint's mass equals 2q - 1 exactly, and then either half holds the root",
    ("rlbench/report/stats.py", "seed_mean", '"ci95": None, "min": min(values), "max": max(values)}', "`min(values)` -> `max(values)`"):
        "the one-seed branch: min and max of a single value are that value",
    ("rlbench/report/stats.py", "seed_mean", '"ci95": None, "min": min(values), "max": max(values)}', "`max(values)` -> `min(values)`"):
        "the one-seed branch: min and max of a single value are that value",
    ("rlbench/algorithms/advantages.py", "group_advantages", "torch.zeros_like(rewards[0])", "`0` -> `-1`"):
        "the branch of a single reward: rewards[0] and rewards[-1] are the same element",
    ("rlbench/measure/flops.py", "_cached", "json.dump(cache, tmp, indent=2)", "`2` -> `3`"):
        "the indentation of the cache file: the same JSON document",
    ("rlbench/algorithms/losses.py", "masked_mean", "total / count.clamp_min(1.0)", "`1.0` -> `0.5`"):
        "a mask's count is a whole number: clamped at 0.5 or at 1, an empty mask gives 0 / c = 0 and any other "
        "count is unchanged",
    ("rlbench/algorithms/ppo.py", "token_rewards", "last = (mask.sum(-1).long() - 1).clamp(min=0)", "`-1` -> `1`"):
        "the mask is [N, T]: dimension -1 is dimension 1",
    ("rlbench/measure/summary.py", "_roles", 'max(ph["peak_bytes"].get(p, 0) for ph in phases.values())',
     "`0` -> `1`"):
        "p is a probe some phase of the role has a peak for (bytes of a process, far above 1): a phase without "
        "that probe's reading counts 0 or 1, below the maximum either way",
    ("rlbench/measure/summary.py", "_memory", "process_peak = max(peaks[peak_phase], process_peaks.get(name, 0))",
     "`0` -> `1`"):
        "the phase's peak is the bytes of a process, far above 1: max(peak, 0) = max(peak, 1)",
    ("rlbench/measure/summary.py", "_memory", "run.phases.rise_bytes[name].get(peak_phase, 0)", "`0` -> `1`"):
        "PhaseStats.add sets a phase's rise whenever it sets its peak, so peak_phase is always there",
    ("rlbench/measure/static.py", "_storage_keys", 'if storage.device.type != "meta" and storage.data_ptr():',
     '`storage.device.type != "meta" and storage.data_ptr()` -> `storage.device.type != "meta" or storage.data_ptr()`'):
        "differs only for a real storage whose data pointer is 0, an empty one: it then shares a key with other "
        "empty storages, and every one of them holds 0 bytes (a storage with bytes never has pointer 0)",
    ("rlbench/report/gate.py", "memory_kind", 'last = name.rsplit("/", 1)[-1]', "`1` -> `2`"):
        "the last piece of a split from the right is the text after the last '/' whatever the number of splits "
        "(1 or 2): the same name for every string",
    ("rlbench/report/gate.py", "judge", "bool(higher) if higher is not None else True", "`higher is not None` -> `higher is None`"):
        "judge reads only whether exceeds returns 0, and that does not depend on the direction passed: a relative "
        "limit is passed when bad/good - 1 or good/bad - 1 exceeds it (worse_factor both ways, each computed "
        "directly; the direction only swaps the two), an absolute one when base - new or new - base does "
        "(negation is exact); the direction sets only the sign, which judge takes from `higher` itself",
    ("rlbench/report/gate.py", "judge", "bool(higher) if higher is not None else True", "`True` -> `False`"):
        "as for `higher is not None`: the direction given to exceeds never decides whether it returns 0",
    ("rlbench/report/gate.py", "judge", 'return "better" if (new_value > base_value) == higher else "worse"',
     "`new_value > base_value` -> `new_value >= base_value`"):
        "equal values returned 'unchanged' at the top of judge: here new_value != base_value, so > and >= agree",
}
