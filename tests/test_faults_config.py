"""Hostile and broken suite files: each gives exit 2 and one line, never a traceback or a hang.

Cases from issue 17: a suite name that walks out of the output folder (1), a YAML alias bomb, a
huge file and deep nesting (6), duplicate keys (12), seeds torch cannot take and a quadratic
duplicate check (14), a 300-character name (11).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from rlbench.cli import main
from rlbench.config import AlgorithmConfig, BudgetConfig, Suite, load_suite
from rlbench.config.checks import check_suite
from rlbench.config.yaml_safe import MAX_BYTES, MAX_DEPTH
from rlbench.errors import UserError

BODY = "algorithms:\n  - name: grpo_zero\nbudget: {steps: 1}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip()]


def traced_peak_mib(call):
    """(what `call()` returns, the peak of Python heap memory it allocated, in MiB). A count of work
    rather than a time: the same on a slow, a busy or a fast machine."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Each level is a list of `width` aliases of the level below: width**levels values in ~400 bytes."""
    lines = ["l0: &l0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n" + BODY


# ---- 1 and 11: names that are not a safe directory name -------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("name", "../../escaped_by_name"),
    ("name", "/tmp/absolute_name"),
    ("name", "x" * 300),
    ("name", "a/b"),
    ("name", ".."),
    ("label", "lab[/x]"),
    ("label", "../runs"),
])
def test_unsafe_names_and_labels_exit_2_with_one_line(tmp_path: Path, capsys, field: str, value: str) -> None:
    if field == "name":
        text = f"name: '{value}'\n" + BODY
    else:
        text = f"algorithms:\n  - name: grpo_zero\n    label: '{value}'\nbudget: {{steps: 1}}\n"
    code, lines = validate(write(tmp_path, text), capsys)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {field if field == 'name' else 'algorithms[0].label'}: ")


def test_safe_names_and_labels_are_accepted(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, "name: gpu-memory_v2.1\nalgorithms:\n  - name: ppo\n    label: ppo_rules-2\n"
                                       "    reward: rules\nbudget: {steps: 1}\n"))
    assert suite.name == "gpu-memory_v2.1" and suite.algorithms[0].label == "ppo_rules-2"


# ---- 6: bounded YAML ------------------------------------------------------------------------------


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path, capsys) -> None:
    text = alias_bomb()
    assert len(text.encode()) < 600  # 9**9 = 387 million values once expanded
    path = write(tmp_path, text)
    (code, lines), peak_mib = traced_peak_mib(lambda: validate(path, capsys))
    # Refused on the composed graph of 90 nodes: expanded, 387 million values would take gigabytes.
    assert peak_mib < 16, peak_mib
    assert code == 2 and len(lines) == 1
    assert "expands to more than 100,000 values through aliases" in lines[0]


def test_a_few_aliases_still_work_and_do_not_share_objects(tmp_path: Path) -> None:
    path = write(tmp_path, "algorithms:\n  - {name: grpo_zero, params: &d {lr: 1.0e-4}}\n"
                           "  - {name: grpo_zero, label: second, params: *d}\nbudget: {steps: 1}\n")
    suite = load_suite(path, ["algorithms[1].params.lr=2e-4"])
    assert [a.params["lr"] for a in suite.algorithms] == [1e-4, 2e-4]


def test_deep_nesting_is_refused_without_a_recursion_error(tmp_path: Path, capsys) -> None:
    code, lines = validate(write(tmp_path, "description: " + "[" * 600 + "]" * 600 + "\n" + BODY), capsys)
    assert code == 2 and len(lines) == 1
    assert f"nested more than {MAX_DEPTH} levels deep" in lines[0]


def test_a_huge_file_is_refused_before_parsing(tmp_path: Path, capsys) -> None:
    path = tmp_path / "suite.yaml"
    with open(path, "w") as fh:
        fh.write(BODY + "seeds:\n")
        fh.write("  - 1\n" * (MAX_BYTES // 5))  # over the limit; would be a 200,000-entry list
    (code, lines), peak_mib = traced_peak_mib(lambda: validate(path, capsys))
    # Refused before parsing: the 1 MiB read is all it holds (a file just under the limit, 174,000
    # entries, parses at a peak of 103 MiB).
    assert peak_mib < 16, peak_mib
    assert code == 2 and len(lines) == 1 and "too large for a suite file" in lines[0]


def test_a_set_value_is_bounded_too(tmp_path: Path) -> None:
    bomb = "[" * 100 + "]" * 100
    with pytest.raises(UserError, match=r"cannot parse the value .*\(nested more than"):
        load_suite(write(tmp_path, BODY), [f"description={bomb}"])


# ---- 12: duplicate keys ---------------------------------------------------------------------------


def test_a_duplicate_key_is_an_error_naming_both_lines(tmp_path: Path, capsys) -> None:
    code, lines = validate(write(tmp_path, BODY + "budget: {steps: 1000000}\n"), capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].endswith("suite.yaml:4: duplicate key 'budget' (first given on line 3); give each key once")


def test_nested_duplicate_keys_and_merge_keys(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=":4: duplicate key .steps. \\(first given on line 3\\)"):
        load_suite(write(tmp_path, "algorithms: [{name: grpo_zero}]\nbudget:\n  steps: 1\n  steps: 2\n"))
    # A merge key (`<<`) is not a duplicate: the mapping may override what it merges.
    suite = load_suite(write(tmp_path, "algorithms: [{name: grpo_zero}]\n"
                                       "budget: {<<: {steps: 1, tokens: 100}, steps: 2}\n"))
    assert suite.budget.steps == 2 and suite.budget.tokens == 100


# ---- 14: seeds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [2**64, 2**32, -1])
def test_seeds_outside_what_runs_can_use_exit_2(tmp_path: Path, capsys, seed: int) -> None:
    code, lines = validate(write(tmp_path, BODY + f"seeds: [0, {seed}]\n"), capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0] == f"error: seeds[1]: must be between 0 and 4294967295 (2**32 - 1), got {seed}"


class CountedSeed(int):
    """An int that counts the equality tests made on it (`calls[0]`)."""

    calls = [0]

    def __eq__(self, other: object) -> bool:
        CountedSeed.calls[0] += 1
        return int(self) == other

    __hash__ = int.__hash__


def test_the_duplicate_seed_check_is_linear() -> None:
    # The old check compared every pair: 50k seeds took half a minute. Counting the comparisons (not
    # timing them, which depends on the machine) tells one pass from every pair: 3,000 seeds in one
    # pass compare a few times (the repeats' hash lookups), pairwise 4.5 million times.
    seeds = [CountedSeed(s) for s in [*range(3_000), 7, 7, 9]]
    suite = Suite(algorithms=[AlgorithmConfig()], budget=BudgetConfig(steps=1), seeds=seeds)
    errors: list[tuple[str, str]] = []
    CountedSeed.calls[0] = 0
    check_suite(suite, errors)
    assert CountedSeed.calls[0] <= len(seeds), CountedSeed.calls[0]
    assert errors == [("seeds", "7 is listed more than once; seeds must be unique"),
                      ("seeds", "9 is listed more than once; seeds must be unique")]
