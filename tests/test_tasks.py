"""Tasks: the synthetic generator, the GSM8K loader, dispatch by name, prompts and demonstrations."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest

from rlbench.catalog import load_problems, problem_clusters
from rlbench.config import TaskConfig
from rlbench.errors import UserError
from rlbench.rewards import answer_correct, format_strict
from rlbench.tasks import Problem, demonstration, prompt_text
from rlbench.tasks.gsm8k import parse_solution
from rlbench.tasks.synthetic import generate_problems, split_of

GSM8K_DIR = Path(__file__).parents[2] / "shared/data/gsm8k"
needs_gsm8k = pytest.mark.skipif(not (GSM8K_DIR / "test.jsonl").exists(),
                                 reason=f"real GSM8K not found at {GSM8K_DIR}")
QUESTION_CHARS = set(string.printable) - set("\t\n\r\x0b\x0c")


def calculator_lines(reasoning: str) -> list[tuple[int, str, int, int]]:
    """'16-3=13\\n13*2=26' -> [(16, '-', 3, 13), (13, '*', 2, 26)]."""
    lines = []
    for line in reasoning.split("\n"):
        left, result = line.split("=")
        op = next(c for c in "+-*/" if c in left)
        a, b = left.split(op)
        lines.append((int(a), op, int(b), int(result)))
    return lines


# --- synthetic -------------------------------------------------------------------------------


def test_same_seed_same_problems_in_another_process() -> None:
    # Within one process a hash-order dependence (iterating a set of strings) cannot show: compare with a
    # process started under another hash seed.
    code = ("import hashlib; from rlbench.tasks.synthetic import generate_problems; "
            "print(hashlib.sha256(repr([(p.question, p.answer) for p in "
            "generate_problems('train', 300, seed=0)]).encode()).hexdigest())")
    here = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONHASHSEED": "1"}).stdout
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "2"}).stdout
    assert here == there and len(here.strip()) == 64


def test_same_seed_same_list_and_different_seed_different_list() -> None:
    first = generate_problems("train", 300, seed=0)
    assert first == generate_problems("train", 300, seed=0)
    other = generate_problems("train", 300, seed=1)
    assert [p.question for p in first] != [p.question for p in other]
    assert len({p.question for p in first} & {p.question for p in other}) < 30


def test_splits_are_disjoint_and_free_of_duplicates() -> None:
    train = generate_problems("train", 20000, seed=0, min_steps=1, max_steps=4)
    evals = generate_problems("eval", 2000, seed=0, min_steps=1, max_steps=4)
    train_questions = {p.question for p in train}
    eval_questions = {p.question for p in evals}
    assert len(train_questions) == 20000 and len(eval_questions) == 2000
    assert len({p.id for p in train} | {p.id for p in evals}) == 22000
    assert not train_questions & eval_questions


def test_split_of_sends_a_tenth_to_eval_whatever_the_wording() -> None:
    keys = [f"items|{a}|+{b}" for a in range(2, 52) for b in range(1, 41)]  # 2,000 canonical problems
    eval_share = sum(split_of(key) == "eval" for key in keys) / len(keys)
    assert 0.08 < eval_share < 0.12, eval_share


# Splits of known canonical keys, as blake2b (digest 8 bytes, big-endian, mod 10 == EVAL_BUCKET) gives them
# on every machine and in every process: a salted hash (Python's hash()) or another digest would move
# about nine in ten of the eval keys here, and the eval split would no longer be the same problems.
KNOWN_SPLITS = {
    "items|4|+2": "eval", "items|4|+5": "eval", "items|5|+1": "eval", "items|9|+3": "eval", "items|10|+1": "eval",
    "items|2|+1": "train", "items|3|+1": "train", "items|4|+1": "train", "items|16|-3|*2": "train",
}


def test_split_of_known_keys_is_pinned() -> None:
    assert {key: split_of(key) for key in KNOWN_SPLITS} == KNOWN_SPLITS


def test_arithmetic_is_integer_and_the_last_line_is_the_answer() -> None:
    problems = generate_problems("train", 3000, seed=3, min_steps=1, max_steps=4, max_number=20)
    for problem in problems:
        lines = calculator_lines(problem.reasoning)
        assert 1 <= len(lines) <= 4
        for previous, current in zip(lines, lines[1:]):
            assert current[0] == previous[3], problem  # each line starts from the last result
        for a, op, b, result in lines:
            assert b <= 20 and result >= 1 and result <= 200  # operands <= max_number, values <= 10x
            exact = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if a % b == 0 else None}[op]
            assert exact == result, problem
        assert problem.answer == str(lines[-1][3])
        assert problem.question == problem.question.strip()
        assert set(problem.question) <= QUESTION_CHARS, problem.question


def test_steps_and_question_length_follow_the_knobs() -> None:
    problems = generate_problems("train", 1000, seed=0, min_steps=3, max_steps=3, max_number=9)
    assert {len(p.reasoning.split("\n")) for p in problems} == {3}
    lines = [line for p in problems for line in calculator_lines(p.reasoning)]
    assert max(b for _, _, b, _ in lines) <= 9 and max(a for a, _, _, _ in lines) <= 90  # values <= 10x9
    two_step = generate_problems("train", 2000, seed=0, min_steps=1, max_steps=2)
    lengths = sorted(len(p.question) for p in two_step)
    assert lengths[0] >= 45 and lengths[-1] <= 160, (lengths[0], lengths[-1])
    assert {len(p.reasoning.split("\n")) for p in two_step} == {1, 2}


def test_all_four_operations_appear() -> None:
    problems = generate_problems("train", 500, seed=0, min_steps=2, max_steps=2)
    ops = {op for p in problems for _, op, _, _ in calculator_lines(p.reasoning)}
    assert ops == {"+", "-", "*", "/"}
    assert any("$" in p.question for p in problems)


def test_twenty_thousand_distinct_problems() -> None:
    # How long it takes is benchmarks/test_micro.py::test_generate_twenty_thousand_problems's figure.
    problems = generate_problems("train", 20000, seed=0, min_steps=1, max_steps=4)
    assert len(problems) == 20000 and len({p.question for p in problems}) == 20000


def test_demonstrations_score_full_marks() -> None:
    problems = generate_problems("train", 300, seed=0, min_steps=1, max_steps=4)
    problems += generate_problems("eval", 100, seed=0, min_steps=1, max_steps=4)
    for problem in problems:
        completion = demonstration(problem)
        assert format_strict(completion, problem) == 1.0, completion
        assert answer_correct(completion, problem) == 1.0, completion


def test_impossible_knobs_are_user_errors() -> None:
    with pytest.raises(UserError, match="min_steps"):
        generate_problems("train", 10, seed=0, min_steps=3, max_steps=2)
    with pytest.raises(UserError, match="found only .* distinct synthetic eval problems"):
        generate_problems("eval", 5000, seed=0, min_steps=1, max_steps=1, max_number=2)


# --- dispatch, prompts, demonstrations -------------------------------------------------------


def test_load_problems_dispatches_by_name() -> None:
    cfg = TaskConfig(name="synthetic", min_steps=2, max_steps=2, max_number=30, train_size=50)
    problems = load_problems(cfg, "train", None, seed=0)  # None: task.train_size
    assert len(problems) == 50
    assert problems == generate_problems("train", 50, seed=0, min_steps=2, max_steps=2, max_number=30)
    assert len(load_problems(cfg, "eval", None, seed=0)) == 5  # a tenth of train_size
    assert len(load_problems(cfg, "eval", 12, seed=0)) == 12
    with pytest.raises(UserError, match="did you mean 'synthetic'"):
        load_problems(TaskConfig(name="synthetik"), "train", 5, seed=0)


def test_prompt_and_demonstration_text() -> None:
    problem = Problem(id="p", question="Mia has 16 apples. She sells 3. How many?", answer="13",
                      reasoning="16-3=13")
    assert prompt_text(problem) == "Q: Mia has 16 apples. She sells 3. How many?\n"
    assert demonstration(problem) == "<reasoning>\n16-3=13\n</reasoning>\n<answer>\n13\n</answer>\n"


# --- GSM8K ------------------------------------------------------------------------------------


def test_parse_solution_strips_annotations_and_commas() -> None:
    answer, reasoning = parse_solution("He pays 80,000+50,000=$<<80000+50000=130000>>130,000\n#### 130,000")
    assert answer == "130000"
    assert reasoning == "He pays 80,000+50,000=$130,000"
    with pytest.raises(ValueError):
        parse_solution("no final line")


@needs_gsm8k
def test_real_gsm8k_test_file_parses() -> None:
    problems = load_problems(TaskConfig(name="gsm8k", path=str(GSM8K_DIR / "test.jsonl")), "eval", None, 0)
    assert len(problems) == 1319
    assert problems[0].answer == "18"
    assert problems[0].reasoning.startswith("Janet sells 16 - 3 - 4 = 9 duck eggs a day.")
    for problem in problems:
        assert problem.answer.lstrip("-").replace(".", "", 1).isdigit(), problem.answer
        assert "<<" not in problem.reasoning and "####" not in problem.reasoning
        assert problem.question and problem.reasoning
    assert len({p.id for p in problems}) == 1319


@needs_gsm8k
def test_real_gsm8k_directory_maps_splits_and_shuffles_by_seed() -> None:
    cfg = TaskConfig(name="gsm8k", path=str(GSM8K_DIR))
    everything = load_problems(cfg, "eval", None, seed=0)
    assert len(everything) == 1319
    assert len(load_problems(cfg, "train", None, seed=0)) == 7473
    sample = load_problems(cfg, "eval", 20, seed=0)
    assert sample == load_problems(cfg, "eval", 20, seed=0)
    assert sample != load_problems(cfg, "eval", 20, seed=1)
    assert sample != everything[:20] and set(sample) <= set(everything)


ROWS = [
    {"question": "Ann has 3 pens and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
    {"question": " A car costs $1,200 and a bike $300. Total? ", "answer": "1,200+300=<<1200+300=1500>>1,500\n#### 1,500"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n", encoding="utf-8")
    return path


def test_small_jsonl_file(tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    problems = load_problems(TaskConfig(name="gsm8k", path=str(file)), "eval", None, seed=0)
    assert problems == [
        Problem(id="gsm8k-eval-0", question=ROWS[0]["question"], answer="7", reasoning="3+4=7"),
        Problem(id="gsm8k-eval-1", question="A car costs $1,200 and a bike $300. Total?", answer="1500",
                reasoning="1,200+300=1,500"),
    ]
    assert answer_correct(demonstration(problems[1]), problems[1]) == 1.0


def test_directory_with_train_and_test_files(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", ROWS[:1])
    write_jsonl(tmp_path / "test.jsonl", ROWS[1:])
    cfg = TaskConfig(name="gsm8k", path=str(tmp_path))
    assert [p.answer for p in load_problems(cfg, "train", None, 0)] == ["7"]
    assert [p.answer for p in load_problems(cfg, "eval", None, 0)] == ["1500"]


def test_parquet_file(tmp_path: Path) -> None:
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "main").mkdir()
    pq.write_table(pyarrow.Table.from_pylist(ROWS), tmp_path / "main" / "test-00000-of-00001.parquet")
    problems = load_problems(TaskConfig(name="gsm8k", path=str(tmp_path)), "eval", None, 0)
    assert [p.answer for p in problems] == ["7", "1500"]


def test_local_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist.*task.path"):
        load_problems(TaskConfig(name="gsm8k", path=str(tmp_path / "nowhere")), "eval", None, 0)
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(UserError, match="no test.jsonl"):
        load_problems(TaskConfig(name="gsm8k", path=str(tmp_path)), "eval", None, 0)
    bad_row = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], {"question": "q", "answer": "no marks"}])
    with pytest.raises(UserError, match="row 2"):
        load_problems(TaskConfig(name="gsm8k", path=str(bad_row)), "eval", None, 0)
    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 2"):
        load_problems(TaskConfig(name="gsm8k", path=str(bad_json)), "eval", None, 0)


def test_unreachable_hub_is_a_user_error(tmp_path: Path) -> None:
    # offline mode makes datasets fail at once instead of retrying the network for half a minute
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    code = ("from rlbench.config import TaskConfig\nfrom rlbench.errors import UserError\n"
            "from rlbench.catalog import load_problems\n"
            "try:\n    load_problems(TaskConfig(name='gsm8k'), 'eval', 5, 0)\n"
            "except UserError as err:\n    print(err)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert "could not load openai/gsm8k" in result.stdout, result.stderr
    assert "pass task.path to a local copy" in result.stdout


def test_synthetic_clusters_are_arithmetic_chains() -> None:
    # quickstart's task (1-2 steps, numbers up to 12): 8,192 distinct eval questions tell 2,007 distinct chains
    cfg = TaskConfig(name="synthetic", min_steps=1, max_steps=2, max_number=12)
    problems = load_problems(cfg, "eval", 8192, seed=0)
    keys, cluster_by = problem_clusters(cfg, problems)
    assert cluster_by == "arithmetic chain" and len(set(keys)) == 2007
    by_key: dict[str, list[Problem]] = {}
    for key, problem in zip(keys, problems):
        by_key.setdefault(key, []).append(problem)
        assert key == problem.reasoning.replace("\n", "; ") and not any(c.isalpha() for c in key)
    repeated = max(by_key.values(), key=len)
    assert len({p.question for p in repeated}) == len(repeated) > 1  # one chain, several wordings
    assert len({(p.reasoning, p.answer) for p in repeated}) == 1


def test_gsm8k_problems_are_their_own_clusters(tmp_path: Path) -> None:
    cfg = TaskConfig(name="gsm8k", path=str(write_jsonl(tmp_path / "mine.jsonl", ROWS)))
    problems = load_problems(cfg, "eval", None, seed=0)
    assert problem_clusters(cfg, problems) == (["gsm8k-eval-0", "gsm8k-eval-1"], "problem")
