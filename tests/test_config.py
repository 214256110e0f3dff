"""Suite loading: types, ranges, unknown keys, overrides, whole-file errors and semantic checks.

Every malformed suite in tests/fixtures/suites/ must produce one line naming the field path, both
from `load_suite` and from `rlbench validate` (exit code 2, message on stderr, no traceback).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rlbench.config import (
    AlgorithmConfig,
    LoraConfig,
    Suite,
    algorithm_params,
    field_help,
    load_suite,
    parse_threshold,
    resolved_dict,
)
from rlbench.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "suites"
REPO = Path(__file__).resolve().parents[1]

# (fixture, the start of the line it must produce). These depend on the config schema only.
STRUCTURAL = [
    ("unknown_key.yaml", "budget.stepz: unknown key (did you mean 'steps'?)"),
    ("number_is_text.yaml", "rollout.temperature: expected a number, got 'hot'"),
    ("float_for_int.yaml", "budget.steps: expected an integer, got 5.0"),
    ("out_of_range.yaml", "rollout.top_p: must be <= 1, got 1.5"),
    ("bad_choice.yaml", "model.dtype: must be one of float32, bfloat16, float16; got 'fp16'"),
    ("no_budget.yaml", "budget: set at least one of steps, completions, tokens, wall_seconds"),
    ("no_algorithms.yaml", "algorithms: list at least one algorithm"),
    ("duplicate_labels.yaml", "algorithms[1].label: 'ppo' is already used by algorithms[0]"),
    ("min_steps_above_max.yaml", "task.min_steps: must be <= task.max_steps (2), got 3"),
    ("duplicate_seeds.yaml", "seeds: 1 is listed more than once"),
    ("bad_threshold.yaml", "check.memory: expected 'N%' (relative) or a plain number (absolute)"),
    ("lora_rank_zero.yaml", "model.lora.r: must be > 0, got 0"),
    ("algorithm_not_mapping.yaml", "algorithms[0]: expected a mapping, got 'grpo_zero'"),
    ("reward_weight_text.yaml", "algorithms[0].rewards.answer_correct: expected a number, got 'heavy'"),
]
# These need the registered algorithms, tasks, rewards, engines and probes.
REGISTERED = [
    ("unknown_algorithm.yaml", "algorithms[0].name: unknown algorithm 'grpo_zer0' (did you mean 'grpo_zero'?)"),
    ("unknown_param.yaml", "algorithms[0].params.lrr: unknown key (did you mean 'lr'?)"),
    ("negative_clip.yaml", "algorithms[1].params.clip_eps: must be > 0, got -0.2"),
    ("zero_uses_model.yaml", "algorithms[0].reward: must be rules for grpo_zero, got 'model'"),
    # 30 // 4 * 4 = 28 and 28 + 4 = 32 are the nearest multiples of the group size.
    ("group_mismatch.yaml", "rollout.completions_per_step: must be a multiple of rollout.group_size (4) "
                            "for grpo_zero; got 30 (try 28 or 32)"),
    ("unknown_engine.yaml", "rollout.engine: unknown engine 'vlm' (did you mean 'vllm'?)"),
    ("unknown_probe.yaml", "probe: unknown probe 'nvm' (did you mean 'nvml'?)"),
    ("unknown_task.yaml", "task.name: unknown task 'gsm8' (did you mean 'gsm8k'?)"),
    ("unknown_reward.yaml", "algorithms[0].rewards.answer_corect: unknown reward 'answer_corect' "
                            "(did you mean 'answer_correct'?)"),
]
WHOLE_FILE = [
    ("empty.yaml", "empty.yaml: the file is empty"),
    ("not_yaml.yaml", "not_yaml.yaml:4: not valid YAML"),
    ("top_level_list.yaml", "top_level_list.yaml: expected a mapping of suite fields at the top level, got a list"),
]


def messages_of(path: Path | str, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(UserError) as caught:
        load_suite(path, overrides or [])
    return caught.value.messages


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = "algorithms:\n  - name: grpo_zero\nbudget:\n  steps: 5\n"


# ---- malformed fixtures ---------------------------------------------------------------------------


def test_every_fixture_is_listed() -> None:
    listed = {name for name, _ in STRUCTURAL + REGISTERED + WHOLE_FILE}
    assert listed == {p.name for p in FIXTURES.glob("*.yaml")}


@pytest.mark.parametrize(("fixture", "expected"), STRUCTURAL + REGISTERED)
def test_fixture_names_the_field(fixture: str, expected: str) -> None:
    messages = messages_of(FIXTURES / fixture)
    assert any(m.startswith(expected) for m in messages), messages


@pytest.mark.parametrize(("fixture", "expected"), WHOLE_FILE)
def test_whole_file_error_is_one_line_naming_the_file(fixture: str, expected: str) -> None:
    messages = messages_of(FIXTURES / fixture)
    assert len(messages) == 1
    assert str(FIXTURES) in messages[0]
    assert expected in messages[0]
    assert "\n" not in messages[0]


# A dozen fixtures also go through `rlbench validate` (each process imports torch for the
# registries, about 3 s of CPU, so not all of them): whole-file, schema and registry errors.
CLI_CASES = [case for case in STRUCTURAL + REGISTERED + WHOLE_FILE if case[0] in {
    "empty.yaml", "not_yaml.yaml", "top_level_list.yaml", "unknown_key.yaml", "number_is_text.yaml",
    "float_for_int.yaml", "bad_choice.yaml", "no_budget.yaml", "duplicate_labels.yaml", "unknown_param.yaml",
    "zero_uses_model.yaml", "group_mismatch.yaml",
}]


@pytest.fixture(scope="module")
def cli_runs() -> dict[str, subprocess.CompletedProcess[str]]:
    """`python -m rlbench validate <fixture>` for every CLI case, run side by side."""

    def validate(fixture: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rlbench", "validate", str(FIXTURES / fixture)],
                              capture_output=True, text=True, cwd=REPO, timeout=600)

    names = [fixture for fixture, _ in CLI_CASES]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(names, pool.map(validate, names)))


def test_cli_cases_are_a_dozen() -> None:
    assert len(CLI_CASES) >= 12


@pytest.mark.parametrize(("fixture", "expected"), CLI_CASES)
def test_cli_validate_exits_2_with_the_message(
    cli_runs: dict[str, subprocess.CompletedProcess[str]], fixture: str, expected: str
) -> None:
    done = cli_runs[fixture]
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


# ---- whole-file errors --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert messages_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: no such file"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert messages_of(tmp_path) == [f"{tmp_path}: is a directory, expected a suite YAML file"]


def test_not_yaml_names_the_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "algorithms:\n  - name: grpo_zero\n budget: 5\n")  # line 3 is misindented
    [message] = messages_of(path)
    assert message.startswith(f"{path}:3: not valid YAML: ")


def test_top_level_scalar(tmp_path: Path) -> None:
    path = write(tmp_path, "just text\n")
    assert messages_of(path) == [f"{path}: expected a mapping of suite fields at the top level, got 'just text'"]


# ---- types and ranges ---------------------------------------------------------------------------


def test_minimal_suite_fills_defaults(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, MINIMAL))
    assert suite.budget.steps == 5 and suite.budget.completions is None
    assert suite.model.sft == type(suite.model.sft)()  # nested section at its defaults
    assert suite.model.lora is None
    assert suite.seeds == [0]
    assert suite.algorithms[0].name == "grpo_zero"
    assert suite.algorithms[0].label == "grpo_zero"  # the label defaults to the name
    assert suite.algorithms[0].rewards == {"answer_correct": 1.0, "format_strict": 0.1}


def test_float_fields_accept_ints_and_exponent_text(tmp_path: Path) -> None:
    # PyYAML reads `1e-4` (no dot) as the string "1e-4"; float fields parse it.
    path = write(tmp_path, MINIMAL + "model:\n  sft:\n    lr: 1e-4\nrollout:\n  temperature: 2\n")
    suite = load_suite(path)
    assert suite.model.sft.lr == 1e-4 and isinstance(suite.model.sft.lr, float)
    assert suite.rollout.temperature == 2.0 and isinstance(suite.rollout.temperature, float)


def test_int_fields_reject_bools_floats_and_exponent_text(tmp_path: Path) -> None:
    path = write(tmp_path, "algorithms:\n  - name: grpo_zero\nbudget:\n  steps: true\n  tokens: 1e6\n"
                           "eval:\n  size: 12.5\n")
    assert sorted(messages_of(path)) == [
        "budget.steps: expected an integer, got true",
        "budget.tokens: expected an integer, got '1e6' (write 1000000)",
        "eval.size: expected an integer, got 12.5",
    ]


def test_bool_field_rejects_text(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "model:\n  gradient_checkpointing: maybe\n")
    assert messages_of(path) == ["model.gradient_checkpointing: expected true or false, got 'maybe'"]


def test_nan_is_not_a_number_here(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "rollout:\n  temperature: .nan\n")
    assert messages_of(path) == ["rollout.temperature: expected a finite number, got nan"]


def test_null_for_a_required_value(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "rollout:\n  max_new_tokens: null\n")
    assert messages_of(path) == ["rollout.max_new_tokens: expected an integer, got null"]


def test_optional_section(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, MINIMAL + "model:\n  lora:\n    r: 8\n"))
    assert suite.model.lora == LoraConfig(r=8)
    assert suite.model.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert load_suite(write(tmp_path, MINIMAL + "model:\n  lora: null\n")).model.lora is None


def test_list_items_are_checked_with_their_index(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "model:\n  lora:\n    target_modules: [q_proj, {a: 1}]\n")
    assert messages_of(path) == ["model.lora.target_modules[1]: expected a string, got a mapping"]
    path = write(tmp_path, MINIMAL + "seeds: 0\n")
    assert messages_of(path) == ["seeds: expected a list, got 0"]


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "algorithms:\n  - name: grpo_zero\nbudget: 5\n")
    assert messages_of(path) == ["budget: expected a mapping, got 5"]


def test_unknown_key_without_a_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "eval:\n  xyzzy: 1\n")
    assert messages_of(path) == ["eval.xyzzy: unknown key; known: size, every, k, batch_size, scoring, headline"]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "algoritms: []\n")
    assert messages_of(path) == ["algoritms: unknown key (did you mean 'algorithms'?)"]


def test_threshold_numbers_are_accepted_as_text(tmp_path: Path) -> None:
    # `accuracy: 0.03` arrives from YAML as a float; the field keeps it as the text "0.03".
    suite = load_suite(write(tmp_path, MINIMAL + "check:\n  accuracy: 0.03\n  memory: 2%\n"))
    assert suite.check.accuracy == "0.03" and suite.check.memory == "2%"


def test_every_error_is_collected(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "algorithms:\n"
        "  - name: grpo_zero\n"
        "    model_reward_weight: -1\n"
        "budget:\n  steps: 0\n  wall_seconds: fast\n"
        "rollout:\n  top_p: 0\n"
        "eval:\n  every: -1\n"
        "seeds: [0, 0]\n"
    ))
    assert messages_of(path) == [
        "algorithms[0].model_reward_weight: must be >= 0, got -1.0",
        "budget.steps: must be > 0, got 0",
        "budget.wall_seconds: expected a number, got 'fast'",
        "rollout.top_p: must be > 0, got 0.0",
        "eval.every: must be >= 0, got -1",
        "seeds: 0 is listed more than once; seeds must be unique",
    ]


def test_a_bad_field_gives_one_message_not_a_cascade(tmp_path: Path) -> None:
    # budget.steps is wrong, so "set at least one limit" would be noise; min_steps is wrong,
    # so comparing it with max_steps is skipped.
    path = write(tmp_path, "algorithms:\n  - name: grpo_zero\nbudget:\n  steps: -5\ntask:\n  min_steps: x\n")
    assert messages_of(path) == ["task.min_steps: expected an integer, got 'x'", "budget.steps: must be > 0, got -5"]


# ---- overrides ----------------------------------------------------------------------------------


def test_overrides_set_values_parsed_as_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    suite = load_suite(path, ["budget.steps=7", "seeds=[0, 1]", "model.sft.lr=1e-4", "budget.tokens=100",
                              "model.name=Qwen/Qwen2.5-0.5B-Instruct"])
    assert suite.budget.steps == 7 and suite.budget.tokens == 100
    assert suite.seeds == [0, 1]
    assert suite.model.sft.lr == 1e-4
    assert suite.model.name == "Qwen/Qwen2.5-0.5B-Instruct"


def test_override_creates_an_optional_section(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, MINIMAL), ["model.lora.r=4"])
    assert suite.model.lora == LoraConfig(r=4)


def test_override_into_a_list_entry(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, MINIMAL), ["algorithms[0].label=zero", "algorithms[0].rewards.format_strict=0.5"])
    assert suite.algorithms[0].label == "zero"
    assert suite.algorithms[0].rewards == {"answer_correct": 1.0, "format_strict": 0.5}


def test_override_of_one_alias_leaves_the_other(tmp_path: Path) -> None:
    path = write(tmp_path, "algorithms: [&b {name: grpo_zero}, *b]\nbudget: {steps: 5}\n")
    suite = load_suite(path, ["algorithms[1].label=second"])
    assert [a.label for a in suite.algorithms] == ["grpo_zero", "second"]


def test_override_unknown_path_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    assert messages_of(path, ["budget.stepz=5"]) == [
        "budget.stepz: unknown key (did you mean 'steps'?) in --set budget.stepz=5"]
    assert messages_of(path, ["rollot.engine=hf"]) == [
        "rollot: unknown key (did you mean 'rollout'?) in --set rollot.engine=hf"]


def test_override_errors_and_file_errors_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "eval:\n  size: -1\n")
    assert messages_of(path, ["algorithms[3].label=x", "budget.steps.x=1", "budget"]) == [
        "algorithms[3]: no such entry, the suite lists 1 (in --set algorithms[3].label=x)",
        "budget.steps: is an integer, it has no key 'x' (in --set budget.steps.x=1)",
        "--set 'budget': expected key.path=value, e.g. budget.steps=5",
        "eval.size: must be > 0, got -1",
    ]


def test_override_value_is_type_checked(tmp_path: Path) -> None:
    assert messages_of(write(tmp_path, MINIMAL), ["rollout.temperature=hot"]) == [
        "rollout.temperature: expected a number, got 'hot'"]


# ---- helpers for reports, docs and `rlbench check` ----------------------------------------------


def test_parse_threshold() -> None:
    assert parse_threshold("5%") == (0.05, True)
    assert parse_threshold(" 10 % ") == (0.1, True)
    assert parse_threshold("0.02") == (0.02, False)
    assert parse_threshold(3) == (3.0, False)
    for bad in ("five", "-1%", "%", "nan"):
        with pytest.raises(UserError, match="expected 'N%'"):
            parse_threshold(bad)


def test_field_help_covers_every_field() -> None:
    rows = {path: (type_name, default, help) for path, type_name, default, help in field_help(Suite)}
    assert rows["budget.steps"] == ("int | None", None, "RL steps")
    assert rows["model.sft.lr"][:2] == ("float", 4e-3)
    assert rows["model.lora"][:2] == ("LoraConfig | None", None)
    assert rows["model.lora.r"][:2] == ("int", 16)
    assert rows["model.sft"][:2] == ("SFTConfig", "(section)")
    assert rows["algorithms"][:2] == ("list[AlgorithmConfig]", [])
    assert rows["algorithms[].rewards"][:2] == ("dict[str, float]", {"answer_correct": 1.0, "format_strict": 0.1})
    assert rows["algorithms[].params"][0] == "dict[str, any]"
    assert all(help for _, _, help in rows.values()), [p for p, (_, _, h) in rows.items() if not h]


def test_resolved_dict_is_plain_and_complete(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, MINIMAL))
    data = resolved_dict(suite)
    assert data["budget"] == {"steps": 5, "completions": None, "tokens": None, "wall_seconds": None, "flops": None}
    assert data["model"]["sft"]["steps"] == 400
    assert data["algorithms"][0]["label"] == "grpo_zero"
    # A suite made in code (not loaded) gets its label filled too.
    assert resolved_dict(Suite(algorithms=[AlgorithmConfig(name="ppo")]))["algorithms"][0]["label"] == "ppo"


# ---- checks that need the registries -------------------------------------------------------------


def test_reward_defaults_to_rules_for_grpo_zero_and_model_otherwise(tmp_path: Path) -> None:
    path = write(tmp_path, "algorithms:\n  - name: grpo_zero\n  - name: grpo\n  - name: ppo\nbudget:\n  steps: 5\n")
    suite = load_suite(path)
    assert [a.reward for a in suite.algorithms] == ["rules", "model", "model"]


def test_params_are_typed_and_keep_defaults(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, MINIMAL), ["algorithms[0].params.lr=1e-4"])
    assert suite.algorithms[0].params == {"lr": 1e-4}  # the text "1e-4" became a float
    params = algorithm_params(suite.algorithms[0])
    assert dataclasses.is_dataclass(params) and params.lr == 1e-4
    default = algorithm_params(AlgorithmConfig(name="grpo_zero"))
    assert dataclasses.replace(default, lr=1e-4) == params  # every other field at its default
    resolved = resolved_dict(suite)["algorithms"][0]["params"]
    assert resolved == dataclasses.asdict(params)


def test_ppo_needs_no_groups(tmp_path: Path) -> None:
    path = write(tmp_path, "algorithms:\n  - name: ppo\n    reward: rules\nbudget:\n  steps: 5\n"
                           "rollout:\n  completions_per_step: 30\n")
    assert load_suite(path).rollout.completions_per_step == 30


def test_group_of_one_is_refused_for_group_algorithms(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "rollout:\n  group_size: 1\n")
    [message] = messages_of(path)
    assert message == "rollout.group_size: must be >= 2, got 1 (grpo_zero uses it as its group size)"


def test_every_registered_name_in_a_full_suite(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "task: {name: gsm8k, path: /data/gsm8k}\n"
        "algorithms:\n"
        "  - {name: grpo_zero, rewards: {answer_correct: 1.0, format_strict: 0.1}}\n"
        "  - {name: grpo, label: grpo-both, reward: both}\n"
        "  - {name: ppo, reward: rules}\n"
        "budget: {completions: 256}\n"
        "rollout: {engine: vllm}\n"
    ))
    for probe in ("auto", "cpu", "torch_cuda", "nvml"):
        suite = load_suite(path, [f"probe={probe}"])
        assert suite.probe == probe
    assert [a.label for a in suite.algorithms] == ["grpo_zero", "grpo-both", "ppo"]


def test_suggested_step_sizes_suit_every_group_size(tmp_path: Path) -> None:
    # grpo_zero groups 4 completions, ppo (params.group_size 3) groups 3. 30 = 10 x 3 suits ppo, not
    # grpo_zero; values that suit both are multiples of lcm(4, 3) = 12: 24 and 36 are the nearest.
    path = write(tmp_path, "algorithms:\n  - name: grpo_zero\n  - {name: ppo, reward: rules, params: {group_size: 3}}\n"
                           "budget:\n  steps: 5\nrollout:\n  completions_per_step: 30\n")
    assert messages_of(path) == [
        "rollout.completions_per_step: must be a multiple of rollout.group_size (4) for grpo_zero; got 30 (try 24 or 36)"]
    # With grpo_zero's own group size 5, 30 = 6 x 5 = 10 x 3 suits both.
    suite = load_suite(path, ["algorithms[0].params.group_size=5"])
    assert suite.algorithms[0].params == {"group_size": 5}


def test_step_shape_is_the_group_size_rule_of_each_algorithm() -> None:
    from rlbench.algorithms.params import GRPOParams, PPOParams
    from rlbench.config import RolloutConfig, step_shape

    rollout = RolloutConfig(completions_per_step=64, group_size=4)
    shape = step_shape(GRPOParams(), rollout)
    assert (shape.group_size, shape.prompts_per_step) == (4, 16)  # GRPO follows rollout.group_size
    own = step_shape(GRPOParams(group_size=8), rollout)
    assert (own.group_size, own.prompts_per_step) == (8, 8)
    ppo = step_shape(PPOParams(), rollout)
    assert (ppo.group_size, ppo.prompts_per_step) == (1, 64)  # one completion per prompt, whatever the suite's


def test_one_precision_table_serves_the_checks_and_auto() -> None:
    from rlbench.config import PRECISION_MODES, ModelConfig, precision_mode
    from rlbench.config.schema import PRECISIONS

    assert PRECISIONS == ("auto", "fp32", "bf16-mixed", "bf16-pure")  # what a suite may name
    assert [precision_mode(ModelConfig(dtype=d)).name for d in ("float32", "bfloat16", "float16")] == [
        "fp32", "bf16-mixed", "fp16-pure"]
    assert {name: mode.dtype for name, mode in PRECISION_MODES.items() if mode.choice} == {
        "fp32": "float32", "bf16-mixed": "bfloat16", "bf16-pure": "bfloat16"}
