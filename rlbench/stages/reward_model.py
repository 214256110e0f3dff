"""The reward model stage (InstructGPT step 2): comparison pairs from the SFT model, Bradley-Terry.

1. Sample `samples_per_prompt` completions for each of `prompts` training problems from the SFT
   policy (the rollout engine, the suite's max_new_tokens, temperature and top_p).
2. Label each completion with the answer checker (`gold_correct`): the checker plays the
   lecture's human labeller who ranks the outputs.
3. Pairs: every (correct, incorrect) combination of completions of the same prompt, so a prompt
   with c correct and w incorrect completions gives c * w pairs (no cap; with the default 4
   samples that is at most 4 per prompt). Prompts whose completions are all right or all wrong
   give none.
4. Split the pairs by prompt (never one prompt on both sides) into train and held-out.
5. Train a scalar-head model initialised from the SFT policy (its backbone plus a zero head) with
   the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected), where a score is the head's value
   at the last real token of prompt + completion laid out exactly as the RL loop lays it out
   (left-padded prompt, then the sampled completion ids, right-padded), so the model is trained
   on what it will score.
6. Report pairwise accuracy (chosen scored above rejected) on train and held-out pairs, and on
   the held-out prompts' samples the AUC and classification accuracy.

`model.reward_model.kind: verifier` replaces step 5 by binary cross-entropy on every labelled
completion of the training prompts (`stages/verifier.py`); the rest is the same.

The result is a self-contained directory (weights, head, tokenizer, `scalar_head.json` with the
stats, and `samples.jsonl` / `pairs.jsonl`: every labelled completion with its final score and
every pair with its split), cached under `$RLBENCH_CACHE/reward_model/<hash>`. A suite may
instead point `model.reward_model.path` at a directory saved by `ScalarHeadModel.save`.

Simplifications: one pass of sampling (no re-labelling as the policy drifts), a constant
learning rate, and each pair trained as its own example (InstructGPT batches all pairs of a
prompt together to avoid over-fitting; here pairs per prompt are few).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

import torch

from rlbench.algorithms.losses import bradley_terry_loss
from rlbench.cache import cached_dir, stage_key
from rlbench.catalog import load_problems
from rlbench.config import RewardModelConfig, Suite
from rlbench.errors import UserError
from rlbench.models.batching import left_pad
from rlbench.models.heads import HEAD_FILE, ScalarHeadModel
from rlbench.models.optim import adamw, train_in_batches
from rlbench.rewards import gold_correct
from rlbench.rollout import SamplingParams
from rlbench.stages.verifier import classification_accuracy, roc_auc, train_verifier
from rlbench.tasks import Problem, encode_prompts

RM_VERSION = 1
PROMPT_SEED = 12345  # which training problems are sampled: not the RL runs' order (their seeds are small)
SAMPLE_SEED = 54321  # sampling and training-order seed
MIN_PAIRS = 20  # fewer comparison pairs than this cannot train or evaluate a reward model
SAMPLE_BATCH = 256  # sequences per generate call
SCORE_BATCH = 256  # sequences per scoring forward pass (no gradient)
MAX_GRAD_NORM = 1.0

OnStep = Callable[[int, int, str], None]


@dataclass(frozen=True)
class LabelledSample:
    """One sampled completion of a problem, with the answer checker's verdict."""

    problem: int  # index into the stage's problem list
    prompt_ids: list[int]
    completion_ids: list[int]  # real tokens only (EOS included when the model emitted it)
    text: str
    correct: bool


Pair = tuple[int, int]  # (chosen sample index, rejected sample index)


def sample_completions(policy: torch.nn.Module, tokenizer, problems: list[Problem], samples_per_prompt: int,
                       sampling: SamplingParams, seed: int, on_batch: Callable[[int, int], None] | None = None,
                       batch_sequences: int = SAMPLE_BATCH) -> list[LabelledSample]:
    """`samples_per_prompt` completions of every problem from `policy`, labelled by `gold_correct`.

    Samples of one problem are adjacent. Generation is batched, `batch_sequences` sequences at a
    time (whole groups of one prompt per batch); `on_batch(done, total)` is called after each batch.
    """
    from rlbench.rollout.hf import HFEngine

    engine = HFEngine(policy, tokenizer)
    prompt_ids = encode_prompts(tokenizer, problems)
    prompts_per_batch = max(1, batch_sequences // samples_per_prompt)
    starts = range(0, len(problems), prompts_per_batch)
    samples: list[LabelledSample] = []
    for batch_index, start in enumerate(starts):
        batch = range(start, min(start + prompts_per_batch, len(problems)))
        indices = [i for i in batch for _ in range(samples_per_prompt)]
        rollout = engine.generate([prompt_ids[i] for i in batch], samples_per_prompt, sampling, seed=seed + batch_index)
        verdicts = gold_correct(rollout.texts, [problems[i] for i in indices])
        for row, i in enumerate(indices):
            length = int(rollout.lengths[row])
            samples.append(LabelledSample(i, prompt_ids[i], rollout.completion_ids[row, :length].tolist(),
                                          rollout.texts[row], verdicts[row] == 1.0))
        if on_batch is not None:
            on_batch(batch_index + 1, len(starts))
    return samples


def comparison_pairs(samples: list[LabelledSample]) -> list[Pair]:
    """Every (correct, incorrect) combination of samples of the same problem, as index pairs."""
    by_problem: dict[int, list[int]] = {}
    for index, s in enumerate(samples):
        by_problem.setdefault(s.problem, []).append(index)
    pairs: list[Pair] = []
    for indices in by_problem.values():
        correct = [i for i in indices if samples[i].correct]
        incorrect = [i for i in indices if not samples[i].correct]
        pairs += list(product(correct, incorrect))
    return pairs


def split_by_prompt(pairs: list[Pair], samples: list[LabelledSample], heldout_fraction: float,
                    seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out) pairs; a problem's pairs all go to one side. At least one problem each side."""
    problems = sorted({samples[c].problem for c, _ in pairs})
    assert len(problems) >= 2, "need pairs from at least two problems to hold some out"
    order = torch.randperm(len(problems), generator=torch.Generator().manual_seed(seed)).tolist()
    n_heldout = min(len(problems) - 1, max(1, round(heldout_fraction * len(problems))))
    heldout = {problems[i] for i in order[:n_heldout]}
    train = [p for p in pairs if samples[p[0]].problem not in heldout]
    held = [p for p in pairs if samples[p[0]].problem in heldout]
    return train, held


def pack_sequences(samples: list[LabelledSample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [N, P + T] in the RL rollout's layout: the left-padded prompt,
    then the completion right-padded (what `ScalarHeadModel.score` reads at the last real token)."""
    prompt_ids, prompt_mask = left_pad([s.prompt_ids for s in samples], pad_id)
    width = max(1, max(len(s.completion_ids) for s in samples))
    completion_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        completion_ids[row, :len(s.completion_ids)] = torch.tensor(s.completion_ids, dtype=torch.long)
        completion_mask[row, :len(s.completion_ids)] = 1
    return torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)


def pair_scores(model: ScalarHeadModel, samples: list[LabelledSample], pairs: list[Pair],
                pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen scores [P], rejected scores [P]) from one forward pass over all 2P sequences."""
    rows = [samples[c] for c, _ in pairs] + [samples[r] for _, r in pairs]
    scores = model.score(*pack_sequences(rows, pad_id))
    return scores[:len(pairs)], scores[len(pairs):]


@torch.no_grad()
def score_samples(model: ScalarHeadModel, samples: list[LabelledSample], pad_id: int,
                  batch_size: int = SCORE_BATCH) -> torch.Tensor:
    """[N] the model's score of every sample, in order."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model.score(*pack_sequences(samples[i:i + batch_size], pad_id))
                          for i in range(0, len(samples), batch_size)])
    finally:
        model.train(was_training)


def pairwise_accuracy(scores: torch.Tensor, pairs: list[Pair]) -> float:
    """Fraction of pairs whose chosen sample scores strictly above the rejected one (ties count wrong)."""
    if not pairs:
        return float("nan")
    chosen, rejected = torch.tensor(pairs).T
    return float((scores[chosen] > scores[rejected]).float().mean())


def train_reward_model(model: ScalarHeadModel, samples: list[LabelledSample], pairs: list[Pair],
                       cfg: RewardModelConfig, pad_id: int, seed: int,
                       on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """`cfg.steps` AdamW steps of the Bradley-Terry loss on `cfg.batch_size` pairs each, in place.

    Pairs are visited in shuffled passes (every pair once per pass). Returns the loss of each step;
    `on_step(step, loss)` is called after each.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = adamw(model.parameters(), lr=cfg.lr)
    model.train()
    return train_in_batches(model, optimizer, pairs, cfg.steps, cfg.batch_size, generator,
                            lambda batch: bradley_terry_loss(*pair_scores(model, samples, batch, pad_id)),
                            MAX_GRAD_NORM, on_step)


def reward_model_key(policy_dir: Path, suite: Suite) -> str:
    """Hash of everything that determines the trained reward model, with the numerics environment
    (`stage_key`); `kind` only when it is not the default pairwise."""
    rm_settings = asdict(suite.model.reward_model)
    if rm_settings["kind"] == "pairwise":
        del rm_settings["kind"]
    return stage_key({
        "policy": policy_dir.name,  # an SFT directory's name is the hash of its base, settings and task
        "model": suite.model.name, "dtype": suite.model.dtype,
        "reward_model": rm_settings, "task": asdict(suite.task),
        "max_new_tokens": suite.rollout.max_new_tokens, "temperature": suite.rollout.temperature,
        "top_p": suite.rollout.top_p, "version": RM_VERSION,
    })


def prepare_reward_model(policy_dir: Path, suite: Suite, on_step: OnStep | None = None) -> tuple[Path, dict, bool]:
    """The reward model directory for this suite: loaded from `model.reward_model.path`, or trained
    from the SFT policy at `policy_dir` (cached). Returns (directory, stats, cache_hit)."""
    cfg = suite.model.reward_model
    if cfg.path is not None:
        path = _check_saved(Path(cfg.path).expanduser(), policy_dir)
        return path, _saved_stats(path), True

    path, hit = cached_dir("reward_model", reward_model_key(policy_dir, suite),
                           lambda tmp: build_reward_model(policy_dir, suite, tmp, on_step))
    return path, _saved_stats(path), hit


def build_reward_model(policy_dir: Path, suite: Suite, out_dir: Path, on_step: OnStep | None = None) -> dict:
    """Sample, label, pair, train and save into `out_dir`; returns the stats."""
    from rlbench.models.embedded import load_pretrained_pair
    from rlbench.models.loading import torch_dtype

    cfg = suite.model.reward_model
    dtype = torch_dtype(suite.model.dtype)
    start = time.perf_counter()
    problems = load_problems(suite.task, "train", cfg.prompts, PROMPT_SEED)
    policy, tokenizer = load_pretrained_pair(policy_dir, dtype)
    sampling = SamplingParams(suite.rollout.max_new_tokens, suite.rollout.temperature, suite.rollout.top_p)
    samples = sample_completions(
        policy, tokenizer, problems, cfg.samples_per_prompt, sampling, SAMPLE_SEED,
        on_batch=None if on_step is None else lambda done, total: on_step(done, total, "sampling completions"))
    del policy
    sample_seconds = time.perf_counter() - start

    pairs = comparison_pairs(samples)
    n_problems = len({samples[c].problem for c, _ in pairs})
    n_correct = sum(s.correct for s in samples)
    if len(pairs) < MIN_PAIRS or n_problems < 2:
        raise UserError(
            f"model.reward_model: only {len(pairs)} comparison pairs from {len(problems)} prompts x "
            f"{cfg.samples_per_prompt} samples ({n_correct} of {len(samples)} completions correct; at least "
            f"{MIN_PAIRS} pairs from 2 prompts are needed); raise prompts or samples_per_prompt"
            + (", or the SFT stage (model.sft.steps or demonstrations) so that the SFT model is sometimes right" if n_correct < len(samples) / 2 else ""))
    train_pairs, heldout_pairs = split_by_prompt(pairs, samples, cfg.heldout_fraction, SAMPLE_SEED)

    model = ScalarHeadModel.from_pretrained(policy_dir, dtype)
    pad_id = tokenizer.pad_token_id
    train_start = time.perf_counter()
    report_step = None if on_step is None else lambda step, loss: on_step(step, cfg.steps, f"loss {loss:.3f}")
    heldout_problems = {samples[c].problem for c, _ in heldout_pairs}
    if cfg.kind == "verifier":  # every labelled completion of a training prompt, right or wrong
        train_samples = [i for i, s in enumerate(samples) if s.problem not in heldout_problems]
        losses = train_verifier(model, samples, train_samples, cfg, lambda rows: pack_sequences(rows, pad_id),
                                SAMPLE_SEED, report_step)
    else:
        losses = train_reward_model(model, samples, train_pairs, cfg, pad_id, SAMPLE_SEED, report_step)
    train_seconds = time.perf_counter() - train_start
    scores = score_samples(model, samples, pad_id)
    heldout = [i for i, s in enumerate(samples) if s.problem in heldout_problems]
    held_scores, held_correct = [float(scores[i]) for i in heldout], [samples[i].correct for i in heldout]

    stats = {
        "reward_model/prompts": len(problems),
        "reward_model/samples": len(samples),
        "reward_model/sample_accuracy": n_correct / len(samples),
        "reward_model/pairs": len(pairs),
        "reward_model/train_pairs": len(train_pairs),
        "reward_model/heldout_pairs": len(heldout_pairs),
        "reward_model/steps": cfg.steps,
        "reward_model/final_loss": losses[-1] if losses else math.log(2),
        "reward_model/train_accuracy": pairwise_accuracy(scores, train_pairs),
        "reward_model/heldout_accuracy": pairwise_accuracy(scores, heldout_pairs),
        "reward_model/kind": cfg.kind,
        "reward_model/heldout_auc": roc_auc(held_scores, held_correct),  # samples of the held-out pairs' prompts
        "reward_model/heldout_classification_accuracy": classification_accuracy(held_scores, held_correct),
        "reward_model/sample_seconds": sample_seconds,
        "reward_model/train_seconds": train_seconds,
        "reward_model/seconds": time.perf_counter() - start,  # the whole stage: sampling, training, scoring
    }
    model.save(out_dir, meta=stats)
    tokenizer.save_pretrained(out_dir)
    _write_jsonl(out_dir / "samples.jsonl", (
        {"problem_id": problems[s.problem].id, "completion_ids": s.completion_ids, "text": s.text,
         "correct": s.correct, "score": float(score)} for s, score in zip(samples, scores)))
    _write_jsonl(out_dir / "pairs.jsonl", (
        {"chosen": c, "rejected": r, "split": split}
        for split, split_pairs in (("train", train_pairs), ("heldout", heldout_pairs)) for c, r in split_pairs))
    return stats


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


def _saved_stats(path: Path) -> dict:
    meta = path / "scalar_head.json"
    return json.loads(meta.read_text()) if meta.exists() else {}


def _check_saved(path: Path, policy_dir: Path) -> Path:
    """Check that `path` is a saved scalar-head model that reads the policy's token ids."""
    from transformers import AutoConfig

    where = "model.reward_model.path"
    if not path.is_dir():
        raise UserError(f"{where}: {path} is not a directory; give a saved reward model or leave it unset to train one")
    from rlbench.models.loading import is_sequence_classifier

    missing = [name for name in ("config.json", HEAD_FILE) if not (path / name).exists()]
    if missing == [HEAD_FILE] and is_sequence_classifier(path):
        missing = []  # a one-label AutoModelForSequenceClassification directory (a hub reward model)
    if missing:
        raise UserError(f"{where}: {path} is not a saved reward model (no {' or '.join(missing)}); "
                        "save one with ScalarHeadModel.save or leave the path unset to train one")
    rm_vocab = AutoConfig.from_pretrained(path).vocab_size
    policy_vocab = AutoConfig.from_pretrained(policy_dir).vocab_size
    if rm_vocab != policy_vocab:
        raise UserError(f"{where}: {path} has a vocabulary of {rm_vocab} tokens but the policy has {policy_vocab}; "
                        "a reward model must read the policy's token ids")
    if (path / "tokenizer_config.json").exists() and (policy_dir / "tokenizer_config.json").exists():
        from rlbench.models.tokenizer import load_saved_tokenizer

        if load_saved_tokenizer(path).get_vocab() != load_saved_tokenizer(policy_dir).get_vocab():
            raise UserError(f"{where}: {path} has a different tokenizer from the policy; "
                            "a reward model must read the policy's token ids")
    return path
