"""Synthetic GSM8K-style word problems, generated deterministically from a seed.

Each problem is a chain of 1 to 4 arithmetic steps (+, -, *, /) told as a short story, for
example "Mia has 16 apples. She sells 3. She then has 2 times as many. How many apples does she
have now?", with the gold reasoning as terse calculator lines ("16-3=13\\n13*2=26") and the
answer "26". Every intermediate value is a positive integer: subtraction never goes below 1,
division is always exact, and values stay within 10 x max_number (so a 1M-parameter model can
learn them). Questions use printable ASCII only and are about 60 to 160 characters long.

Train and eval are disjoint by construction: the split of a problem is decided by a hash of its
canonical form (scenario + numbers + operations), which names, objects and wording do not enter;
eval is the tenth whose hash is 0 mod 10. No question appears twice within a list.

The same arithmetic chain comes back under other stories and wordings (with max_number 12 and 1-2
steps, 8,192 eval questions hold 2,007 distinct chains), and a model that solves one telling
tends to solve the others: `cluster_key` names the chain, and standard errors are clustered by it.

    problems = generate_problems("train", 20000, seed=0, min_steps=1, max_steps=2, max_number=50)

Simplifications: no distractor facts, no multi-quantity bookkeeping, one unknown per problem.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rlbench.errors import UserError
from rlbench.tasks import Problem

if TYPE_CHECKING:
    from rlbench.config import TaskConfig

MAX_FACTOR = 10  # largest multiplier or divisor, whatever max_number is
VALUE_CAP_PER_MAX_NUMBER = 10  # every value stays within 10 x max_number
EVAL_BUCKET = 0  # canonical hash % 10 == EVAL_BUCKET -> eval split
MAX_MISSES_IN_A_ROW = 20_000  # candidates without a new problem before the space counts as exhausted

NAMES: tuple[tuple[str, str], ...] = (  # name, subject pronoun
    ("Mia", "she"), ("Tom", "he"), ("Ava", "she"), ("Leo", "he"), ("Zoe", "she"), ("Sam", "he"),
    ("Ivy", "she"), ("Max", "he"), ("Ana", "she"), ("Ben", "he"), ("Eva", "she"), ("Jay", "he"),
    ("Lily", "she"), ("Omar", "he"), ("Nina", "she"), ("Raj", "he"),
)
THINGS = ("apples", "pens", "stamps", "marbles", "cards", "books", "eggs", "shells",
          "stickers", "cookies", "coins", "beads", "toys", "candles")


@dataclass(frozen=True)
class Scenario:
    """One story shape: an opener, clauses per operation, and closing questions.

    Templates are `str.format` strings over {name}, {P}/{p} (subject pronoun, capitalised or
    not), {a} (the start value), {b} (a step's operand) and the slots of one `nouns` entry.
    """

    key: str
    openers: tuple[str, ...]
    clauses: dict[str, tuple[str, ...]]
    questions: tuple[str, ...]
    nouns: tuple[dict[str, str], ...] = ({},)
    first_op: str | None = None  # the opener tells the first step itself, with {b}

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(self.clauses)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        key="items",
        openers=("{name} has {a} {things}.", "{name} owns {a} {things}."),
        clauses={
            "+": ("{P} buys {b} more.", "{P} finds {b} more.", "{P} gets {b} more."),
            "-": ("{P} gives away {b}.", "{P} loses {b}.", "{P} sells {b}."),
            "*": ("{P} then has {b} times as many.",),
            "/": ("{P} keeps 1/{b} of them.", "{P} keeps one of {b} equal piles."),
        },
        questions=("How many {things} does {p} have now?", "How many {things} does {name} have?"),
        nouns=tuple({"things": t} for t in THINGS),
    ),
    Scenario(
        key="money",
        openers=("{name} has ${a}.", "{name} saved ${a}."),
        clauses={
            "+": ("{P} earns ${b}.", "{P} is paid ${b}.", "{P} finds ${b}."),
            "-": ("{P} spends ${b}.", "{P} pays ${b} for a {item}.", "{P} loses ${b}."),
            "*": ("{P} then has {b} times as much.",),
            "/": ("{P} keeps 1/{b} of it.", "{P} keeps one of {b} equal shares."),
        },
        questions=("How many dollars does {p} have now?", "How much money does {name} have now?"),
        nouns=tuple({"item": i} for i in ("book", "hat", "toy", "ball", "lamp", "cake")),
    ),
    Scenario(
        key="liquid",
        openers=("A {container} holds {a} {unit} of {liquid}.", "A {container} has {a} {unit} of {liquid}."),
        clauses={
            "+": ("{b} {unit} are added.", "{b} more {unit} go in."),
            "-": ("{b} {unit} are used.", "{b} {unit} leak out."),
            "*": ("The amount is multiplied by {b}.",),
            "/": ("Only 1/{b} of it is kept.",),
        },
        questions=("How many {unit} are in the {container}?", "How many {unit} are there now?"),
        nouns=tuple({"container": c, "unit": u, "liquid": q}
                    for c in ("tank", "barrel", "jug", "pool") for u in ("liters", "cups")
                    for q in ("water", "oil", "juice")),
    ),
    Scenario(
        key="group",
        openers=("A {group} has {a} {members}.", "There are {a} {members} in a {group}."),
        clauses={
            "+": ("{b} new {members} join.", "{b} more {members} arrive."),
            "-": ("{b} {members} leave.", "{b} {members} go home."),
            "*": ("It becomes {b} times as big.",),
            "/": ("Only 1/{b} of them stay.",),
        },
        questions=("How many {members} are there now?", "How many {members} are in the {group}?"),
        nouns=tuple({"group": g, "members": m} for g, m in (
            ("club", "members"), ("class", "students"), ("team", "players"), ("camp", "kids"),
            ("choir", "singers"), ("bus", "riders"))),
    ),
    Scenario(
        key="packs",
        openers=("{name} buys {a} {packs} of {b} {things}.", "{name} has {a} {packs} with {b} {things} each."),
        clauses={
            "+": ("{P} finds {b} more.", "{P} gets {b} more {things}."),
            "-": ("{P} gives away {b}.", "{P} eats {b}."),
            "/": ("{P} keeps 1/{b} of them.",),
        },
        questions=("How many {things} does {p} have now?", "How many {things} does {name} have?"),
        nouns=tuple({"packs": p, "things": t} for p in ("boxes", "bags", "packs")
                    for t in ("pens", "cookies", "beads", "cards", "candies", "nuts")),
        first_op="*",
    ),
    Scenario(
        key="cost",
        openers=("{name} buys {a} {things} at ${b} each.", "{name} buys {a} {things} for ${b} each."),
        clauses={
            "+": ("{P} also pays ${b} for a bag.", "Shipping adds ${b}."),
            "-": ("{P} uses a ${b} coupon.", "{P} gets ${b} off."),
        },
        questions=("How many dollars does {p} pay?", "What is the total cost in dollars?"),
        nouns=tuple({"things": t} for t in ("pens", "books", "hats", "toys", "mugs", "cups", "shirts")),
        first_op="*",
    ),
)


@dataclass
class Chain:
    """A start value and its steps, each (operation, operand, result)."""

    start: int
    steps: list[tuple[str, int, int]] = field(default_factory=list)

    def canonical_key(self, scenario: Scenario) -> str:
        return scenario.key + "|" + str(self.start) + "".join(f"|{op}{b}" for op, b, _ in self.steps)

    def reasoning(self) -> str:
        lines, value = [], self.start
        for op, operand, result in self.steps:
            lines.append(f"{value}{op}{operand}={result}")
            value = result
        return "\n".join(lines)


def split_of(canonical_key: str) -> str:
    """'eval' for the tenth of canonical problems whose hash is 0 mod 10, 'train' for the rest."""
    digest = hashlib.blake2b(canonical_key.encode(), digest_size=8).digest()
    return "eval" if int.from_bytes(digest, "big") % 10 == EVAL_BUCKET else "train"


def _operands(op: str, value: int, max_number: int, cap: int) -> range | list[int]:
    """The operands that keep `value op operand` a positive integer within the cap."""
    if op == "+":
        return range(1, min(max_number, cap - value) + 1)
    if op == "-":
        return range(1, min(max_number, value - 1) + 1)
    if op == "*":
        return range(2, min(MAX_FACTOR, max_number, cap // value) + 1)
    return [d for d in range(2, min(MAX_FACTOR, max_number) + 1) if value % d == 0]


def _apply(op: str, value: int, operand: int) -> int:
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    return value // operand


def sample_chain(rng: random.Random, scenario: Scenario, n_steps: int, max_number: int) -> Chain | None:
    """A random chain of `n_steps` feasible steps for the scenario, or None when it gets stuck."""
    cap = VALUE_CAP_PER_MAX_NUMBER * max_number
    chain = Chain(start=rng.randint(2, max_number))
    value = chain.start
    for i in range(n_steps):
        ops = (scenario.first_op,) if i == 0 and scenario.first_op else scenario.ops
        choices = [(op, operands) for op in ops if (operands := _operands(op, value, max_number, cap))]
        if not choices:
            return None
        op, operands = rng.choice(choices)
        operand = rng.choice(operands)
        result = _apply(op, value, operand)
        chain.steps.append((op, operand, result))
        value = result
    return chain


def render_question(rng: random.Random, scenario: Scenario, chain: Chain) -> str:
    """The story of a chain with randomly chosen names, objects and wording."""
    name, pronoun = rng.choice(NAMES)
    slots = {"name": name, "P": pronoun.capitalize(), "p": pronoun, **rng.choice(scenario.nouns)}
    steps = chain.steps
    if scenario.first_op:  # the opener tells the first step
        sentences = [rng.choice(scenario.openers).format(a=chain.start, b=steps[0][1], **slots)]
        steps = steps[1:]
    else:
        sentences = [rng.choice(scenario.openers).format(a=chain.start, **slots)]
    for op, operand, _ in steps:
        sentences.append(rng.choice(scenario.clauses[op]).format(b=operand, **slots))
    sentences.append(rng.choice(scenario.questions).format(**slots))
    return " ".join(sentences)


def generate_problems(split: str, size: int, seed: int, min_steps: int = 1, max_steps: int = 2,
                      max_number: int = 50) -> list[Problem]:
    """`size` distinct problems of one split, the same list for the same arguments."""
    assert split in ("train", "eval"), f"split must be 'train' or 'eval', got {split!r}"
    if min_steps > max_steps:
        raise UserError(f"task.min_steps ({min_steps}) is greater than task.max_steps ({max_steps})")
    rng = random.Random(f"rlbench-synthetic/{split}/{seed}")
    problems: list[Problem] = []
    seen_questions: set[str] = set()
    misses = 0
    while len(problems) < size and misses < MAX_MISSES_IN_A_ROW:
        misses += 1
        scenario = rng.choice(SCENARIOS)
        chain = sample_chain(rng, scenario, rng.randint(min_steps, max_steps), max_number)
        if chain is None or split_of(chain.canonical_key(scenario)) != split:
            continue
        question = render_question(rng, scenario, chain)
        if question in seen_questions:
            continue
        seen_questions.add(question)
        misses = 0
        digest = hashlib.blake2b(question.encode(), digest_size=8).hexdigest()
        problems.append(Problem(id=f"synthetic-{split}-{digest}", question=question,
                                answer=str(chain.steps[-1][2]), reasoning=chain.reasoning()))
    if len(problems) < size:
        raise UserError(
            f"found only {len(problems)} distinct synthetic {split} problems for task.max_number={max_number}, "
            f"task.min_steps={min_steps}, task.max_steps={max_steps} ({size} asked for): "
            "raise task.max_number or task.max_steps, or ask for fewer problems")
    return problems


def cluster_key(problem: Problem) -> str:
    """The arithmetic chain a question tells, its story and wording stripped: the start value, then
    each operation with its operand and result, as in the gold reasoning ("16-3=13; 13*2=26").
    The scenario is left out too: "Mia has 16 apples. She sells 3." and "A tank holds 16 liters of
    water. 3 liters are used." are one chain."""
    return problem.reasoning.replace("\n", "; ")


def vocabulary() -> list[str]:
    """Every word the generator can write (templates, names, nouns), sorted: the embedded model's
    tokenizer gives each its own token, so a question costs about a third of its characters."""
    texts = [name for name, _ in NAMES] + [p for _, p in NAMES] + [p.capitalize() for _, p in NAMES] + list(THINGS)
    for scenario in SCENARIOS:
        texts += [*scenario.openers, *scenario.questions, *(c for cs in scenario.clauses.values() for c in cs)]
        texts += [value for nouns in scenario.nouns for value in nouns.values()]
    return sorted({w for text in texts for w in re.findall(r"[A-Za-z]+", re.sub(r"\{[^}]*\}", " ", text))})


def load_synthetic(cfg: TaskConfig, split: str, size: int | None, seed: int) -> list[Problem]:
    """Synthetic problems for a TaskConfig; size None means task.train_size (a tenth of it for eval)."""
    if size is None:
        size = cfg.train_size if split == "train" else max(1, cfg.train_size // 10)
    return generate_problems(split, size, seed, cfg.min_steps, cfg.max_steps, cfg.max_number)
