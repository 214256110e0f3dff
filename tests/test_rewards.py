"""Rule rewards on hand-made completions, weighted scoring and weight validation."""

from __future__ import annotations

import pytest

from rlbench.catalog import REWARDS, rule_functions
from rlbench.errors import UserError
from rlbench.rewards import (
    answer_correct,
    answer_is_number,
    format_soft,
    format_strict,
    gold_correct,
    score_rules,
    tag_count,
)
from rlbench.tasks import Problem, demonstration

PROBLEM = Problem(id="p0", question="Mia has 16 apples. She sells 3. She then has 2 times as many. How many?",
                  answer="26", reasoning="16-3=13\n13*2=26")
STRICT = "<reasoning>\n16-3=13\n13*2=26\n</reasoning>\n<answer>\n26\n</answer>\n"
WRONG = "<reasoning>\n16-3=13\n13*2=25\n</reasoning>\n<answer>\n25\n</answer>\n"
ONE_LINE = "<reasoning>16-3=13, 13*2=26</reasoning> <answer>26</answer>"
TRAILING = STRICT + "Q: more text"  # 12 characters after </answer>\n
NO_TAGS = "16-3=13\n13*2=26"
WORDS = "<reasoning>\nsixteen less three, doubled\n</reasoning>\n<answer>\ntwenty-six\n</answer>\n"


def test_demonstration_is_the_strict_completion() -> None:
    assert demonstration(PROBLEM) == STRICT


@pytest.mark.parametrize(
    ("completion", "strict", "soft"),
    [
        (STRICT, 1.0, 1.0),
        (WRONG, 1.0, 1.0),  # format says nothing about correctness
        (ONE_LINE, 0.0, 1.0),  # tags without their own lines
        (TRAILING, 0.0, 1.0),  # text after </answer>
        (" " + STRICT, 0.0, 1.0),  # must start with <reasoning>
        (STRICT[:-1], 0.0, 1.0),  # the final newline is part of the format
        ("<answer>\n26\n</answer>\n<reasoning>\nx\n</reasoning>\n", 0.0, 0.0),  # wrong order
        (NO_TAGS, 0.0, 0.0),
        ("", 0.0, 0.0),
    ],
)
def test_format_rewards(completion: str, strict: float, soft: float) -> None:
    assert format_strict(completion, PROBLEM) == strict
    assert format_soft(completion, PROBLEM) == soft


@pytest.mark.parametrize(
    ("completion", "correct", "is_number"),
    [
        (STRICT, 1.0, 1.0),
        (WRONG, 0.0, 1.0),
        (ONE_LINE, 1.0, 1.0),
        (NO_TAGS, 1.0, 0.0),  # the checker falls back to the last number; no <answer> tag
        ("<answer>$26.00</answer>", 1.0, 1.0),
        ("<answer>26 apples</answer>", 1.0, 1.0),
        ("<answer>-26</answer>", 0.0, 1.0),
        (WORDS, 0.0, 0.0),
        ("<answer></answer>", 0.0, 0.0),
        ("", 0.0, 0.0),
    ],
)
def test_answer_rewards(completion: str, correct: float, is_number: float) -> None:
    assert answer_correct(completion, PROBLEM) == correct
    assert answer_is_number(completion, PROBLEM) == is_number


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (STRICT, 1.0),  # four tags once each, nothing after </answer>\n
        (STRICT[:-1], 1.0),  # "</answer>" at the very end: still nothing after it
        (TRAILING, 1.0 - 0.012),  # 12 characters after </answer>\n cost 0.001 each
        (STRICT + "x" * 1000, 0.75),  # the penalty is at most one tag's worth
        (ONE_LINE, 0.0),  # no tag on its own line
        ("<reasoning>\nx\n</reasoning>\n26", 0.5),  # two reasoning tags
        (STRICT + STRICT, 0.0),  # every tag twice: none counts, and no penalty applies
        ("", 0.0),
    ],
)
def test_tag_count(completion: str, expected: float) -> None:
    assert tag_count(completion, PROBLEM) == pytest.approx(expected)


def test_every_reward_is_registered_with_help() -> None:
    assert REWARDS.names() == ["answer_correct", "answer_is_number", "format_soft", "format_strict", "tag_count"]
    for entry in REWARDS.entries():
        assert entry.help and "\n" not in entry.help
        assert entry.obj(STRICT, PROBLEM) == 1.0  # the gold completion earns every reward in full


WEIGHTS = {"answer_correct": 1.0, "format_strict": 0.1}


def test_score_rules_weights_raw_values() -> None:
    other = Problem(id="p1", question="?", answer="7", reasoning="3+4=7")
    completions = [STRICT, ONE_LINE, "<reasoning>\n3+4=7\n</reasoning>\n<answer>\n8\n</answer>\n"]
    problems = [PROBLEM, PROBLEM, other]
    totals, per_reward = score_rules(completions, problems, WEIGHTS, rule_functions(WEIGHTS))
    assert per_reward == {"answer_correct": [1.0, 1.0, 0.0], "format_strict": [1.0, 0.0, 1.0]}
    # 1*1 + 0.1*1 = 1.1; 1*1 + 0.1*0 = 1.0; 1*0 + 0.1*1 = 0.1
    assert totals == pytest.approx([1.1, 1.0, 0.1])
    negative, _ = score_rules(completions, problems, {"format_soft": -0.5}, rule_functions(["format_soft"]))
    assert negative == [-0.5, -0.5, -0.5]
    assert score_rules([], [], {"answer_correct": 1.0}, rule_functions(["answer_correct"])) == (
        [], {"answer_correct": []})
    with pytest.raises(UserError, match="did you mean 'answer_correct'"):
        rule_functions({"answer_corect": 1.0})


def test_gold_correct_is_the_answer_checker() -> None:
    assert gold_correct([STRICT, WRONG, NO_TAGS, ""], [PROBLEM] * 4) == [1.0, 0.0, 1.0, 0.0]


