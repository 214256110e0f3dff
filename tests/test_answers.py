"""Answer extraction and matching: each filter of the pipeline, its priority, and number formats."""

from __future__ import annotations

import pytest

from rlbench.tasks.answers import (
    EXTRACTION_PIPELINE,
    EXTRACTOR_VERSION,
    NUMBER_RE,
    answers_match,
    canonical_number,
    extract_answer,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # answer tag: its number, stripped of $ and separators
        ("<reasoning>\n16-3=13\n13*2=26\n</reasoning>\n<answer>\n26\n</answer>\n", "26"),
        ("<answer>\n$1,000\n</answer>", "1000"),
        ("<answer>x = -3</answer>", "-3"),
        ("<answer>18 dollars</answer>", "18"),
        ("<answer>3+4=7</answer>", "7"),  # the last number of the tag
        ("<answer>seven</answer>", "seven"),  # no number: the text itself
        ("<answer>\n</answer> so 12", "12"),  # empty tag falls through to the last number
        ("<answer> </answer><answer>5</answer>", "5"),  # first non-empty tag
        ("I think 4 <answer>9</answer> then 11", "9"),  # the tag beats later numbers
        # GSM8K's #### line
        ("9*2=18\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("#### -5", "-5"),
        # boxed
        ("so \\boxed{42} and 7 more", "42"),
        ("\\boxed{1} then \\boxed{$3.50}", "3.5"),
        # "the answer is"
        ("The answer is 18. Check: 2*9", "18"),
        ("so the final answer is: $70,000.", "70000"),
        ("the answer is 5 ... no, the answer is 6, 7 remain", "6"),
        # a last line "A: N" (version 1 had a filter for it; the last number gives the same)
        ("working 3 4\nA: 12", "12"),
        ("A: 4\nA: $1,200.", "1200"),
        ("A: -7 \n", "-7"),
        # the last number of the text
        ("16-3=13\n13*2=26", "26"),  # a binary minus is not a sign: 13, not -3
        ("she owes -$5", "-5"),
        ("about 0.50 liters", "0.5"),
        ("grew by 50%", "50"),
        ("12,345,678 people", "12345678"),
        ("1,2345", "2345"),  # not a thousands group: "1" then "2345"
        ("x=-3", "-3"),
        ("", None),
        ("no numbers here", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_pipeline_order_is_documented() -> None:
    names = [name for name, _ in EXTRACTION_PIPELINE]
    assert names == ["answer_tag", "hash_marks", "boxed", "the_answer_is", "last_number"]
    assert EXTRACTOR_VERSION == "1"
    # priority: #### beats boxed, boxed beats "the answer is", which beats the last number
    assert extract_answer("\\boxed{2}\n#### 1") == "1"
    assert extract_answer("The answer is 3. \\boxed{2} then 9") == "2"
    assert extract_answer("The answer is 3. Also 9") == "3"


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        ("1,000", "1000", True),
        ("18.00", "18", True),
        ("18.0", "18", True),
        ("18.", "18", True),
        ("$18", "18", True),
        ("18%", "18", True),
        ("26 dollars", "26", True),
        ("007", "7", True),
        ("0.50", ".5", True),
        ("-0", "0", True),
        ("-3", "-3", True),
        ("-3", "3", False),
        ("18.5", "18", False),
        ("180", "18", False),
        ("18 or 20", "18", False),  # two numbers are not a number
        ("1/2", "0.5", False),  # fractions are not parsed
        ("2+2", "4", False),  # never evaluated
        (None, "3", False),
        ("", "3", False),
        ("Paris", "paris.", True),  # non-numeric gold: normalized text equality
        ("New  York", "new york", True),
        ("Rome", "Paris", False),
        ("18", "eighteen", False),
    ],
)
def test_answers_match(predicted: str | None, gold: str, expected: bool) -> None:
    assert answers_match(predicted, gold) is expected


def test_long_numbers_compare_exactly() -> None:
    # 30 digits: a float or a 28-digit Decimal context would round these to equal
    assert not answers_match("100000000000000000000000000001", "100000000000000000000000000000")
    assert answers_match("100,000,000,000,000,000,000,000,000,001", "100000000000000000000000000001")


def test_every_number_the_scanner_finds_is_canonical() -> None:
    text = "-$5 and $ 1,000.50 then .5% or 007, 3.14 x=-2 12,345"
    found = NUMBER_RE.findall(text)
    assert found == ["-$5", "$ 1,000.50", ".5%", "007", "3.14", "-2", "12,345"]
    assert [canonical_number(n) for n in found] == ["-5", "1000.5", "0.5", "7", "3.14", "-2", "12345"]


# Several candidates for every rule: each filter picks the one its rule names, never another.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # answer tag: the first non-empty tag, and the last number inside it
        ("<answer>1 or 2</answer> <answer>3 or 4</answer>", "2"),
        ("<answer>\n</answer><answer>x 5, 6</answer><answer>7</answer> 8", "6"),
        # #### marks: the last one, whatever numbers come after it
        ("#### 1\n#### 2\n#### 3 then 4", "3"),
        ("#### 10 #### -20 and 30", "-20"),
        # boxed: the last box, its last number
        ("\\boxed{1, 2} \\boxed{3, 4} 5", "4"),
        # "the answer is": the last one, not the first and not a later number
        ("The answer is 1. The answer is 2. The final answer is 3, not 4", "3"),
        # the last number of the text, with numbers on every line
        ("A: 1\nA: 2\nthen 3 and 4", "4"),
        ("A: 5\nA: 6", "6"),
        ("5 apples\nA: 9\n10 left", "10"),  # an "A: N" line that is not the last line
    ],
)
def test_every_rule_takes_its_own_candidate_among_several(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


# Each filter alone, so that a filter that returned another candidate could not hide behind one
# earlier in the pipeline.
@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("answer_tag", "<answer></answer><answer>a 1 b 2</answer><answer>3</answer>", "2"),
        ("answer_tag", "<answer>Paris</answer>", "Paris"),
        ("answer_tag", "no tag 5", None),
        ("hash_marks", "#### 7\n#### 8\n9", "8"),
        ("hash_marks", "no marks 5", None),
        ("boxed", "\\boxed{1} \\boxed{2 3}", "3"),
        ("boxed", "\\boxed{none} 5", None),
        ("the_answer_is", "the answer is 1; the answer is 2; 3", "2"),
        ("the_answer_is", "no phrase 5", None),
        ("last_number", "1 2 3", "3"),
        ("last_number", "none", None),
    ],
)
def test_each_filter_alone(name: str, text: str, expected: str | None) -> None:
    assert dict(EXTRACTION_PIPELINE)[name](text) == expected
