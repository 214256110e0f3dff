"""Answer checking: pull the final answer out of a completion and compare it with the gold answer.

Extraction is a named, versioned pipeline (in the spirit of lm-evaluation-harness's filters).
The first filter that finds something wins:

1. `answer_tag`     the content of the first non-empty `<answer>...</answer>`: its last number if
                    it holds one, else the stripped text itself
2. `hash_marks`     the number after the last `#### ` (GSM8K's solution format)
3. `boxed`          the last number inside the last `\\boxed{...}`
4. `the_answer_is`  the number after the last "The answer is" (or "The final answer is")
5. `last_number`    the last number anywhere in the text

Version 1 also had an `a_line` filter (a last line `A: N`) before `last_number`. It was removed
without changing any result, so the version stays 1: where that filter matched, the text's last
line is "A:", the number, at most a period and spaces, so its number is the last number of the
text and the last-number filter returns the same string (checked on 400,000 random texts built from those
characters; tests/test_answers.py keeps such inputs).

A number may carry a leading minus, a `$`, `,` thousands separators, a decimal part and a `%`.
Numbers come back in canonical form (`"$1,000.50"` -> `"1000.5"`), so equal answers are equal
strings (which is what majority voting needs). Change `EXTRACTOR_VERSION` whenever a rule above
changes: reports record it, and accuracies from different versions are not comparable.

    extract_answer("<reasoning>\\n9*2=18\\n</reasoning>\\n<answer>\\n$18\\n</answer>\\n")  # "18"
    answers_match("18.00", "18")  # True

Model text is never evaluated, and numbers are compared exactly (as canonical digit strings, no floats).
"""

from __future__ import annotations

import re
from collections.abc import Callable

EXTRACTOR_VERSION = "1"

# A number as written in text: optional sign (not when it is a binary minus, as in "16-3"),
# optional "$", digits with optional "," thousands groups, optional decimals, optional "%".
_NUMBER = r"(?:(?<![\w)\]])-)?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?%?|(?:(?<![\w)\]])-)?\$?\.\d+%?"
NUMBER_RE = re.compile(_NUMBER)

_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_HASH_MARKS_RE = re.compile(r"####\s*(" + _NUMBER + ")")
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
_THE_ANSWER_IS_RE = re.compile(r"the (?:final )?answer is\s*:?\s*(" + _NUMBER + ")", re.IGNORECASE)

# A whole answer string that is a number: "$1,000", "18.00.", "-3", "50%", "26 dollars".
_NUMERIC_ANSWER_RE = re.compile(
    r"^(?P<sign>-)?(?:\$\s?)?(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+|(?=\.\d))(?:\.(?P<frac>\d+))?%?"
    r"(?:\s+[A-Za-z][A-Za-z ]*)?\.?$"
)


def canonical_number(text: str) -> str | None:
    """The canonical form of a numeric answer ("$1,000.50" -> "1000.5", "18.00" -> "18"), else None.

    Accepts an optional minus, `$`, `,` thousands separators, decimals, `%`, trailing unit words
    ("26 dollars") and a trailing period. Anything else (fractions, expressions, two numbers) is
    not a number here.
    """
    match = _NUMERIC_ANSWER_RE.match(text.strip())
    if match is None:
        return None
    integer = match["int"].replace(",", "").lstrip("0") or "0"
    fraction = (match["frac"] or "").rstrip("0")
    digits = integer + ("." + fraction if fraction else "")
    return "-" + digits if match["sign"] and digits != "0" else digits


def _last_number(text: str) -> str | None:
    numbers = NUMBER_RE.findall(text)
    return canonical_number(numbers[-1]) if numbers else None


def _from_answer_tag(text: str) -> str | None:
    for content in _ANSWER_TAG_RE.findall(text):
        content = content.strip()
        if content:
            return _last_number(content) or content
    return None


def _from_hash_marks(text: str) -> str | None:
    found = _HASH_MARKS_RE.findall(text)
    return canonical_number(found[-1]) if found else None


def _from_boxed(text: str) -> str | None:
    found = _BOXED_RE.findall(text)
    return _last_number(found[-1]) if found else None


def _from_the_answer_is(text: str) -> str | None:
    found = _THE_ANSWER_IS_RE.findall(text)
    return canonical_number(found[-1]) if found else None


EXTRACTION_PIPELINE: tuple[tuple[str, Callable[[str], str | None]], ...] = (
    ("answer_tag", _from_answer_tag),
    ("hash_marks", _from_hash_marks),
    ("boxed", _from_boxed),
    ("the_answer_is", _from_the_answer_is),
    ("last_number", _last_number),
)


def extract_answer(text: str) -> str | None:
    """The final answer of a completion (see the module docstring for the order), or None."""
    for _name, extractor in EXTRACTION_PIPELINE:
        answer = extractor(text)
        if answer is not None:
            return answer
    return None


def normalize_text_answer(text: str) -> str:
    """A non-numeric answer for string comparison: lower case, single spaces, no trailing period."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def answers_match(predicted: str | None, gold: str) -> bool:
    """True when `predicted` equals `gold`: exactly as numbers when gold is a number, else as text.

    "1,000" == "1000", "$18.00" == "18", "26 dollars" == "26", "-3" != "3", None never matches.
    """
    if predicted is None:
        return False
    gold_number = canonical_number(gold)
    if gold_number is not None:
        return canonical_number(predicted) == gold_number
    return normalize_text_answer(predicted) == normalize_text_answer(gold)


SCORERS: dict[str, Callable[[str], str | None]] = {
    "pipeline": extract_answer,  # the order above: answer tag, ####, boxed, "the answer is", last number
    "strict": _from_answer_tag,  # lm-evaluation-harness's strict-match: only the required format counts
    "flexible": _last_number,  # flexible-extract: the last number anywhere in the completion
}
"""Named, versioned answer extractions (`eval.scoring`, `eval.headline`): each reads one answer."""
