"""Tasks: GSM8K-style math word problems, how a policy is prompted with them, and the gold completion.

A task is a function listed in the catalog (rlbench/catalog.py), `(cfg: TaskConfig, split, size, seed) -> list[Problem]`:

- `synthetic` (rlbench/tasks/synthetic.py): generated offline from a seed, short enough for the
  embedded 1M-parameter model; train and eval are disjoint by construction.
- `gsm8k` (rlbench/tasks/gsm8k.py): the real GSM8K, from the hub (`openai/gsm8k`) or a local
  copy given as `task.path`; its train file is the train split, its test file the eval split.

Every completion is asked to follow the lecture's strict format:

    <reasoning>
    16-3=13
    13*2=26
    </reasoning>
    <answer>
    26
    </answer>

    problems = catalog.load_problems(suite.task, "eval", size=512, seed=0)
    text = prompt_text(problems[0])          # "Q: ...\\n"
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "eval")

SYSTEM_PROMPT = (
    "Solve the math problem. Respond in the following format:\n"
    "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"
    "The answer is a single number."
)


@dataclass(frozen=True)
class Problem:
    """One word problem with its gold answer."""

    id: str
    """unique within a split, stable for the same task, split and seed"""
    question: str
    """the problem statement"""
    answer: str
    """gold final answer, a plain number such as "18" """
    reasoning: str
    """gold reasoning, e.g. "16-3-4=9\\n9*2=18" ("" when there is none)"""


def prompt_text(problem: Problem) -> str:
    """What the policy is conditioned on: the plain-text prompt (chat models get SYSTEM_PROMPT too)."""
    return f"Q: {problem.question}\n"


def encode_prompts(tokenizer, problems: list[Problem]) -> list[list[int]]:
    """Prompt token ids, the one place prompts are built for every stage (SFT, reward model, RL, eval).

    A tokenizer with a chat template (hub instruct models) gets SYSTEM_PROMPT and the question as a
    system and a user message, with the generation prompt added; the embedded model's tokenizer has
    no template and gets `prompt_text` with a BOS token.
    """
    if getattr(tokenizer, "chat_template", None):
        return [
            list(tokenizer.apply_chat_template(
                [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": p.question}],
                add_generation_prompt=True, tokenize=True, return_dict=False))
            for p in problems
        ]
    return tokenizer([prompt_text(p) for p in problems])["input_ids"]


def truncate_prompts(prompts: list[list[int]], max_tokens: int) -> tuple[list[list[int]], float]:
    """Keep the last `max_tokens` ids of each prompt (the question and the generation prompt sit at
    the end); returns the prompts and the fraction that were cut."""
    cut = sum(len(p) > max_tokens for p in prompts)
    return [p[-max_tokens:] for p in prompts], cut / max(len(prompts), 1)


def demonstration(problem: Problem) -> str:
    """The gold completion of a problem in the strict format."""
    return f"<reasoning>\n{problem.reasoning}\n</reasoning>\n<answer>\n{problem.answer}\n</answer>\n"
