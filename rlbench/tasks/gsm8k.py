"""GSM8K (Cobbe et al., 2021, MIT licence): grade-school math word problems, from the hub or a local copy.

Sources, by `task.path`:
- unset: `datasets.load_dataset("openai/gsm8k", "main")` (needs the hub or a warm datasets cache);
- a `.jsonl` or `.parquet` file: that file serves both splits (point at a directory to keep
  training and evaluation problems apart);
- a directory: its `train*.jsonl`/`train*.parquet` file is the train split and its
  `test*.jsonl`/`test*.parquet` file the eval split (searched recursively, so the hub's
  `main/train-00000-of-00001.parquet` layout works too).

Each row has `question` and `answer`; the answer is a worked solution ending in `#### N`. The gold
answer is N with thousands commas removed; the gold reasoning is the solution before `####` with
the `<<48/2=24>>` calculator annotations removed.

    problems = load_gsm8k(TaskConfig(name="gsm8k", path="data/gsm8k"), "eval", size=None, seed=0)
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlbench.errors import UserError
from rlbench.tasks import Problem

if TYPE_CHECKING:
    from rlbench.config import TaskConfig

HUB_NAME = "openai/gsm8k"
HUB_CONFIG = "main"
SPLIT_FILES = {"train": "train", "eval": "test"}  # our split -> the file/hub split that holds it
SUFFIXES = (".jsonl", ".parquet")

_CALCULATOR_RE = re.compile(r"<<[^>]*>>")

LOCAL_COPY_HINT = ("pass task.path to a local copy (a .jsonl or .parquet file, or a directory holding "
                   "train and test files)")


def parse_solution(solution: str) -> tuple[str, str]:
    """(answer, reasoning) of a GSM8K solution: "...<<9*2=18>>18...\\n#### 18" -> ("18", "...18...")."""
    reasoning, marks, final = solution.rpartition("####")
    if not marks:
        raise ValueError(f"no '#### <answer>' line in solution: {solution[-80:]!r}")
    answer = final.strip().replace(",", "")
    return answer, _CALCULATOR_RE.sub("", reasoning).strip()


def cluster_key(problem: Problem) -> str:
    """GSM8K's problems are written one by one: each is its own cluster."""
    return problem.id


def rows_to_problems(rows: list[dict[str, Any]], source: str, split: str) -> list[Problem]:
    """Problems from GSM8K rows; a malformed row is a UserError naming the source and row."""
    problems = []
    for index, row in enumerate(rows):
        try:
            answer, reasoning = parse_solution(row["answer"])
            question = row["question"].strip()
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise UserError(f"{source}: row {index + 1} is not a GSM8K row with 'question' and "
                            f"'answer' ending in '#### N' ({err})") from None
        problems.append(Problem(id=f"gsm8k-{split}-{index}", question=question, answer=answer,
                                reasoning=reasoning))
    return problems


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a local .jsonl or .parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # installed with datasets

        return pq.read_table(path).to_pylist()
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}: line {number} is not valid JSON ({err})") from None
    return rows


def local_file(path: Path, split: str) -> Path:
    """The file holding `split` under task.path (the path itself when it is a file)."""
    if not path.exists():
        raise UserError(f"task.path '{path}' does not exist: {LOCAL_COPY_HINT}")
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise UserError(f"task.path '{path}' is not a .jsonl or .parquet file")
        return path
    stem = SPLIT_FILES[split]
    found = sorted(p for p in path.rglob(f"{stem}*") if p.is_file() and p.suffix in SUFFIXES)
    if not found:
        raise UserError(f"task.path '{path}' holds no {stem}.jsonl or {stem}*.parquet file "
                        f"for the {split} split")
    return found[0]


def hub_rows(split: str) -> list[dict[str, Any]]:
    """The rows of one split of openai/gsm8k from the hub (or the datasets cache)."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"loading {HUB_NAME} from the hub needs the `datasets` package; "
                        f"install it or {LOCAL_COPY_HINT}") from None
    try:
        dataset = datasets.load_dataset(HUB_NAME, HUB_CONFIG, split=SPLIT_FILES[split])
    except Exception as err:  # network, auth and cache errors all mean the same thing here
        raise UserError(f"could not load {HUB_NAME} from the hub ({type(err).__name__}: {err}); "
                        f"{LOCAL_COPY_HINT}") from None
    return list(dataset)


def load_gsm8k(cfg: TaskConfig, split: str, size: int | None, seed: int) -> list[Problem]:
    """GSM8K problems of a split: all of them in file order (size None), else `size` after a seeded shuffle."""
    if cfg.path is None:
        source, rows = HUB_NAME, hub_rows(split)
    else:
        file = local_file(Path(cfg.path).expanduser(), split)
        source, rows = str(file), read_rows(file)
    problems = rows_to_problems(rows, source, split)
    if size is None:
        return problems
    random.Random(seed).shuffle(problems)
    return problems[:size]
