"""One run: an algorithm x seed trained under the suite's budget, measured phase by phase.

This is the shared loop for every recipe. Each step:

    generate      sample completions_per_step completions (policy)
    score         rule rewards and/or the reward model, plus the gold answer check (reward)
    ref_logprobs  log-probs under the frozen reference (reference)
    values        value estimates (value)
    advantages    the algorithm's advantage estimator (pure math, no model)
    update        policy optimisation (policy)
    value_update  value optimisation (value)

A recipe whose `completion_source` is "gold" (sft_more) trains on the task's demonstrations
instead: no generate phase, the step's problems with their gold solutions become the batch, and
the update is supervised.

Each phase runs inside the memory probe and a timer (advantages, pure math, only inside a probe
that asks for it); `train()` steps until the budget's first limit is reached (`measure/budget.py`),
evaluating every `eval.every` steps. Model FLOPs are counted per phase from token counts and model
shapes (`measure/flops.py`), so a `budget.flops` limit stops every run at the same step on any
machine. The runner starts each run in a fresh process (`python -m rlbench.worker`), so memory
figures belong to this run alone; `rlbench estimate` builds the same run on fake tensors.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from rlbench.algorithms.advantages import zero_variance_fraction
from rlbench.algorithms.base import Algorithm, Batch
from rlbench.algorithms.losses import masked_mean
from rlbench.catalog import load_problems, rule_functions
from rlbench.config import AlgorithmConfig, Suite
from rlbench.distributed import Dist
from rlbench.measure.budget import Budget, StepCounts
from rlbench.measure.phases import PhaseStats
from rlbench.measure.probing import PhaseMemory, RunProbe
from rlbench.models.batching import backward_in_micro_batches, in_micro_batches, micro_batches
from rlbench.models.forward import completion_logprobs, completion_logprobs_and_entropy
from rlbench.rewards import gold_correct, noisy_rewards, score_rules
from rlbench.rollout import Rollout, SamplingParams
from rlbench.tasks import Problem, encode_prompts, truncate_prompts
from rlbench.train.parts import RunParts, run_parts
from rlbench.train.roles import load_roles, measured_load


class Run:
    """Everything one run holds: roles, optimizers, engine, probe, data, budget and metrics.

    Built from `RunParts` (see rlbench/train/parts.py), which it never changes: `Run.build` resolves
    them from the suite, the estimator builds its own and constructs the same class.
    """

    def __init__(self, suite: Suite, algo_cfg: AlgorithmConfig, seed: int, policy_dir: Path,
                 reward_dir: Path | None, parts: RunParts) -> None:
        self.suite, self.algo_cfg, self.seed, self.parts = suite, algo_cfg, seed, parts
        self.algorithm: Algorithm = parts.algorithm
        self.schedule = parts.schedule
        self.supervised = self.algorithm.completion_source == "gold"
        # Log-probs the update trains on: at the sampling temperature for sampled completions, at
        # temperature 1 (plain cross-entropy) for demonstrations.
        self.logprob_temperature = 1.0 if self.supervised else suite.rollout.temperature
        self.passes = self.schedule.passes  # optimisation passes over each batch (read by measure/)
        self.probe: RunProbe = parts.probe
        self.dist: Dist = parts.dist
        self.precision = parts.precision  # resolved once: every load and phase reads it
        self.device = parts.device
        self.group_size, self.prompts_per_step = parts.shape.group_size, parts.shape.prompts_per_step
        assert suite.rollout.completions_per_step % self.group_size == 0, "validated in config"
        self.phases = PhaseStats()
        self.role_load_bytes: dict[str, dict[str, int]] = {}  # role -> probe -> bytes
        self.step_metrics: list[dict[str, Any]] = []
        torch.manual_seed(seed)
        self.roles = self.algorithm.roles()
        loaded = load_roles(suite, parts, policy_dir, reward_dir, self.role_load_bytes)
        self.policy, self.tokenizer, self.optimizer = loaded.policy, loaded.tokenizer, loaded.optimizer
        self.reference, self.reward_model = loaded.reference, loaded.reward_model
        self.value_model, self.value_optimizer = loaded.value_model, loaded.value_optimizer
        self.engine = measured_load(self.probe, "rollout", lambda: parts.engine(
            self.policy, self.tokenizer, parts.engine_options), self.role_load_bytes)
        self.flop_shapes = self._flop_shapes(loaded.weights_of)
        self.train_problems = self._training_problems(seed)
        self.order = torch.randperm(len(self.train_problems), generator=torch.Generator().manual_seed(seed)).tolist()
        self.cursor = 0
        self.budget = Budget(suite.budget)
        self.sampling = SamplingParams(suite.rollout.max_new_tokens, suite.rollout.temperature, suite.rollout.top_p,
                                       ignore_eos=suite.rollout.ignore_eos)

    def _training_problems(self, seed: int) -> list[Problem]:
        """The problems a run draws its prompts from: the train split, except that a supervised recipe
        on a suite with a fixed demonstration set (`model.sft.demonstrations`) trains on those same
        demonstrations, or, for one that asks for fresh ones (`fresh_demonstrations`: sft_new_data),
        on train problems not among them."""
        from rlbench.stages.demonstrations import demonstration_problems, fresh_problems

        demonstrations = demonstration_problems(self.suite.task, self.suite.model.sft) if self.supervised else None
        if demonstrations is None:
            return load_problems(self.suite.task, "train", self.suite.task.train_size, seed)
        if getattr(self.algorithm, "fresh_demonstrations", False):
            return fresh_problems(self.suite.task, demonstrations, seed)
        return demonstrations

    @classmethod
    def build(cls, suite: Suite, algo_cfg: AlgorithmConfig, seed: int, policy_dir: Path, reward_dir: Path | None,
              probe: RunProbe, algorithm: Algorithm | None = None, dist: Dist | None = None) -> Run:
        """A run with the parts `run_parts` resolves from the suite: `algorithm` defaults to the
        catalog's recipe for `algo_cfg` (any object implementing the `Algorithm` protocol runs the
        same loop); `dist`: this rank of a distributed run (rlbench/distributed.py)."""
        parts = run_parts(suite, algo_cfg, probe, seed=seed, policy_dir=policy_dir, algorithm=algorithm, dist=dist)
        return cls(suite, algo_cfg, seed, policy_dir, reward_dir, parts)

    # -- roles ----------------------------------------------------------------------------------
    def _flop_shapes(self, weights_of: dict[str, str]) -> dict[str, Any]:
        """Each role's N, L, d for the FLOP count; a role computing with another's weights (a LoRA
        reference: the policy's module) has that role's shape."""
        from rlbench.measure.flops import flop_shape

        shapes = {role: flop_shape(model) for role, (model, _) in self.role_models().items()}
        shapes.update({role: shapes[owner] for role, owner in weights_of.items()})
        return shapes

    def role_models(self) -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer | None]]:
        models = {"policy": (self.policy, self.optimizer), "reference": (self.reference, None),
                  "reward": (self.reward_model, None), "value": (self.value_model, self.value_optimizer)}
        return {role: pair for role, pair in models.items() if pair[0] is not None}

    # -- measurement ----------------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time and measure a phase; it computes in the precision's dtype (autocast under bf16-mixed)."""
        start = time.perf_counter()
        memory: dict[str, PhaseMemory] = {}
        static_start = self.static_bytes()
        try:
            with self.dist.phase(name), self.probe.phase(name) as memory, \
                    self.precision.context(self.device):
                yield
        finally:
            static_end = self.static_bytes()
            self.phases.add(name, time.perf_counter() - start, memory, static_end - static_start, static_end)

    def static_bytes(self) -> int:
        """Every role's static bytes (weights, master weights, gradients, optimizer state, buffers)."""
        from rlbench.measure.static import role_static_bytes

        return sum(role_static_bytes(model, optimizer, self.precision.compute_dtype)["total"]
                   for model, optimizer in self.role_models().values())

    # -- one step -------------------------------------------------------------------------------
    def next_prompts(self) -> list[Problem]:
        problems = []
        for _ in range(self.prompts_per_step):
            if self.cursor == len(self.order):
                self.cursor = 0
            problems.append(self.train_problems[self.order[self.cursor]])
            self.cursor += 1
        return problems

    def step(self) -> dict[str, Any]:
        step_start = time.perf_counter()
        times_before = dict(self.phases.seconds)
        prompts = self.dist.local_prompts(self.next_prompts())  # this rank's slice (all of them in one process)
        problems = [p for p in prompts for _ in range(self.group_size)]  # one per completion
        prompt_ids, prompt_truncation = truncate_prompts(encode_prompts(self.tokenizer, prompts),
                                                         self.suite.model.max_prompt_tokens)

        if self.supervised:  # the demonstrations, as a rollout: nothing is generated
            from rlbench.rollout.demonstrations import demonstration_rollout

            rollout = demonstration_rollout(self.tokenizer, prompts, prompt_ids, self.group_size, self.device)
        else:
            with self.phase("generate"), self.dist.rollout_context(self.policy):
                rollout = self.engine.generate(prompt_ids, self.group_size, self.sampling,
                                               seed=self.dist.sampling_seed(self.seed * 1_000_003 + self.budget.steps))
        with self.phase("score"):
            rewards, reward_parts = self._score(rollout, problems)
            gold = torch.tensor(gold_correct(rollout.texts, problems), device=rewards.device)
        old_logprobs = rollout.logprobs
        if self.engine.has_own_weights and not self.supervised:  # e.g. vLLM: its log-probs are not the policy's
            with self.phase("old_logprobs"), torch.no_grad():
                old_logprobs = self._logprobs(self.policy, rollout)
        batch = Batch(rollout, problems, self.group_size, rewards, gold, old_logprobs)
        if "reference" in self.roles:
            with self.phase("ref_logprobs"), torch.no_grad():
                batch.ref_logprobs = self.reference_logprobs(rollout)
        if self.value_model is not None:
            with self.phase("values"), torch.no_grad():
                batch.values = self._in_micro_batches(rollout, self._values)
        lengths = rollout.attention_mask.sum(-1).tolist()  # this rank's sequences, real tokens each
        counts = StepCounts(prompts=len(prompts), completions=len(problems), tokens=rollout.num_tokens,
                            sequence_tokens=sum(lengths), flops_by_phase=self.step_flops(rollout),
                            bytes_by_phase=self.step_bytes(rollout))
        # Every rank's rows, so that advantages see the whole batch (a no-op in one process).
        batch, reward_parts = self.dist.gather_batch(batch, reward_parts, self.tokenizer.pad_token_id)
        rollout, rewards, gold = batch.rollout, batch.rewards, batch.gold
        advantages_start = time.perf_counter()  # pure math: timed, measured only by a probe that asks to
        with self.probe.phase("advantages") if self.probe.measures_advantages else nullcontext():
            self.algorithm.compute_advantages(batch)
        self.phases.add("advantages", time.perf_counter() - advantages_start)
        with self.phase("update"):
            update_stats = self._update_policy(batch)
        if self.value_model is not None:
            with self.phase("value_update"):
                update_stats.update(self._update_value(batch))
        with self.phase("sync_weights") if self.engine.has_own_weights else nullcontext():  # e.g. vLLM's copy
            self.engine.sync_weights(self.policy)

        # Counts summed and seconds maxed over ranks: every rank stops on the same step.
        counts, step_seconds = self.dist.budget_reduce(counts, time.perf_counter() - step_start)
        self.budget.add(counts, step_seconds, self.passes)
        metrics: dict[str, Any] = {
            "step": self.budget.steps,
            "completions": self.budget.completions,
            "flops": self.budget.flops,
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "gold/accuracy": float(gold.mean()),
            "learning/zero_variance_groups": zero_variance_fraction(rewards, self.group_size)
            if self.group_size > 1 else 0.0,
            "learning/completion_length": float(rollout.lengths.float().mean()),
            "learning/truncation_rate": float(rollout.truncated.float().mean()),
            "learning/prompt_truncation_rate": prompt_truncation,
            "time/step_s": step_seconds,
            **{f"reward/{k}": sum(v) / len(v) for k, v in reward_parts.items()},
            **{f"time/{k}_s": self.phases.seconds[k] - times_before.get(k, 0.0) for k in self.phases.seconds},
            **update_stats,
            **batch.stats,
        }
        self.step_metrics.append(metrics)
        return metrics

    # -- the loop -------------------------------------------------------------------------------
    def train(self, on_step: Callable[[dict[str, Any]], None] = lambda metrics: None,
              eval_problems: list[Problem] | None = None) -> tuple[str, list[dict[str, Any]]]:
        """Steps until the budget's first limit is reached; returns that limit's name and the
        evaluations made on the way. `on_step(metrics)` follows every step (the worker writes
        steps.jsonl and reports progress); with `eval_problems`, the policy is evaluated on them
        every `eval.every` steps (each result with its step and completions)."""
        every = self.suite.eval.every
        evals: list[dict[str, Any]] = []
        while (stopped_by := self.budget.exhausted()) is None:
            metrics = self.step()
            on_step(metrics)
            if eval_problems is not None and every and metrics["step"] % every == 0:
                evals.append(self.evaluate(eval_problems) | {"step": metrics["step"],
                                                             "completions": self.budget.completions})
        return stopped_by, evals

    def evaluate(self, problems: list[Problem]) -> dict[str, Any]:
        """Held-out evaluation of the current policy (`measure.evaluation.evaluate_suite`), measured
        as the `eval` phase; distributed, each rank scores its slice inside one unshard, merged."""
        from rlbench.measure.evaluation import evaluate_suite

        with self.phase("eval"):
            return self.dist.evaluate(
                lambda mine: evaluate_suite(self.engine, self.tokenizer, mine, self.suite, self.seed),
                problems, self.policy)

    def _step_passes(self, rollout: Rollout) -> list[tuple[str, str, str, int, bool, int]]:
        """(phase, role, pass kind, rows sharing a prompt, trained, passes) of each model pass of a step."""
        shared = self._micro(rollout)[0][1]  # the group the packed log-prob forwards share a prompt over
        trained = 1 if self.suite.model.gradient_checkpointing else shared  # the module's forward: every row in full
        groups = max(1, rollout.completion_ids.shape[0] // self.group_size)  # minibatches are whole groups
        sampled, minibatches = not self.supervised, self.passes * min(self.schedule.num_minibatches, groups)
        passes = [("generate", "policy", "sample", self.group_size, False, 1) if sampled else None,
                  ("score", "reward", "sequence", 1, False, 1) if self.algorithm.reward_source in ("model", "both") else None,
                  ("old_logprobs", "policy", "logprobs", shared, False, 1) if self.engine.has_own_weights and sampled else None,
                  ("ref_logprobs", "reference", "logprobs", shared, False, 1) if "reference" in self.roles else None,
                  ("values", "value", "logprobs", 1, False, 1) if self.value_model is not None else None,
                  ("update", "policy", "logprobs", trained, True, minibatches),
                  ("value_update", "value", "logprobs", 1, True, minibatches) if self.value_model is not None else None]
        return [p for p in passes if p is not None]

    def step_flops(self, rollout: Rollout) -> dict[str, int]:
        """Model FLOPs of one step's phases over this rollout's rows (`flops.pass_flops`: a group's
        prompt once where the pass shares it), each phase that ran with its role's shape: forwards
        for generation, reward scores, old and reference log-probs and values; trained passes
        (fwd + bwd) for every optimisation pass (`self.passes`) of the policy and value."""
        from rlbench.measure.flops import pass_flops

        mask, width = rollout.attention_mask, rollout.prompt_width
        prompts, completions = mask[:, :width].sum(-1).tolist(), mask[:, width:].sum(-1).tolist()
        return {phase: (self.passes if training else 1) * pass_flops(
                    self.flop_shapes[role], prompts, completions, group, kind, training)
                for phase, role, kind, group, training, _ in self._step_passes(rollout)}

    def step_bytes(self, rollout: Rollout) -> dict[str, int]:
        """The least bytes each phase of the step reads, in the compute dtype (`measure/roofline.py`):
        generation its weights per decoding step and the KV cache; other passes their weights once
        per batch (twice per trained minibatch)."""
        from rlbench.measure.roofline import decode_bytes, pass_bytes

        element = (self.precision.compute_dtype or self.precision.dtype).itemsize
        mask, width = rollout.attention_mask, rollout.prompt_width
        prompts, completions = mask[:, :width].sum(-1).tolist(), mask[:, width:].sum(-1).tolist()
        return {phase: decode_bytes(self.flop_shapes[role], prompts, completions, group, element) if kind == "sample"
                else pass_bytes(self.flop_shapes[role], element, reads * (2 if training else 1))
                for phase, role, kind, group, training, reads in self._step_passes(rollout)}

    def _score(self, rollout: Rollout, problems: list[Problem]) -> tuple[torch.Tensor, dict[str, list[float]]]:
        source = self.algorithm.reward_source
        total = torch.zeros(len(problems), device=rollout.input_ids.device)
        parts: dict[str, list[float]] = {}
        if source in ("rules", "both"):
            rule_total, parts = score_rules(rollout.texts, problems, self.algo_cfg.rewards,
                                            rule_functions(self.algo_cfg.rewards))
            if self.algo_cfg.reward_noise > 0:  # a simulated reward model of known accuracy
                rule_total = noisy_rewards(rule_total, rollout.texts, problems, self.algo_cfg.reward_noise, self.seed)
            total += torch.tensor(rule_total, device=total.device)
        if source in ("model", "both"):
            with torch.no_grad():
                model_score = self._in_micro_batches(
                    rollout, lambda r, group: self.reward_model.score(r.input_ids, r.attention_mask))
            total += self.algo_cfg.model_reward_weight * model_score
            parts["model"] = model_score.tolist()
        return total, parts

    def reference_logprobs(self, rollout) -> torch.Tensor:
        """Log-probs under the frozen reference: its own copy of the SFT weights, or with LoRA the
        policy's module with its adapters disabled (`AdapterDisabledReference`)."""
        return self._logprobs(self.reference, rollout)

    def _logprobs(self, model: torch.nn.Module, rollout) -> torch.Tensor:
        return self._in_micro_batches(rollout, lambda r, group: completion_logprobs(
            model, r.input_ids, r.attention_mask, r.prompt_width, r.completion_ids, self.suite.rollout.temperature,
            group))

    def _policy_logprobs(self, rollout, group: int) -> tuple[torch.Tensor, torch.Tensor]:
        return completion_logprobs_and_entropy(self.policy, rollout.input_ids, rollout.attention_mask,
                                               rollout.prompt_width, rollout.completion_ids,
                                               self.logprob_temperature, group)

    def _values(self, rollout, group: int) -> torch.Tensor:
        return self.value_model.completion_values(rollout.input_ids, rollout.attention_mask, rollout.prompt_width)

    def _micro(self, rollout) -> list[tuple[torch.Tensor, int]]:
        return micro_batches(len(rollout.completion_ids), self.suite.model.micro_batch_size, self.group_size)

    def _in_micro_batches(self, rollout, forward: Callable) -> Any:
        return in_micro_batches(rollout, self._micro(rollout), forward)

    def _minibatches(self, n: int, count: int) -> list[torch.Tensor]:
        """Shuffled minibatches of whole groups (each group's rows stay adjacent and in order);
        rank 0's order on every rank."""
        groups = torch.randperm(n // self.group_size)
        rows = torch.arange(self.group_size)
        return self.dist.from_rank0(
            [(chunk[:, None] * self.group_size + rows).flatten() for chunk in groups.chunk(count) if len(chunk)])

    def _update_policy(self, batch: Batch) -> dict[str, float]:
        schedule = self.schedule
        totals: dict[str, list[float]] = defaultdict(list)
        for _ in range(schedule.passes):
            for index in self._minibatches(len(batch), schedule.num_minibatches):
                share = self.dist.share(index, self.group_size)  # this rank's rows of the minibatch
                mb = batch.select(share, self.group_size)
                r = mb.rollout
                weight = self.dist.share_weight(batch.mask, index, share, schedule.loss_agg)
                self.optimizer.zero_grad(set_to_none=True)
                # Log-probs of the real completion tokens, the LM head a chunk of tokens at a time.
                (logprobs, entropy), stats = backward_in_micro_batches(
                    r, self._micro(r), self._policy_logprobs, lambda out, mb=mb: self.algorithm.policy_loss(out[0], mb),
                    lambda loss, weight=weight: self.dist.backward(loss, weight))
                stats["learning/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), schedule.max_grad_norm))
                self.optimizer.step()
                with torch.no_grad():
                    stats["learning/entropy"] = float(masked_mean(entropy, r.completion_mask))
                    if mb.ref_logprobs is not None:
                        stats["kl/k1"] = float(masked_mean(logprobs - mb.ref_logprobs, r.completion_mask))
                stats = self.dist.mean_stats(stats, weight, exact=("learning/grad_norm",))
                for k, v in stats.items():
                    totals[k].append(v)
        return {k: sum(v) / len(v) for k, v in totals.items()}

    def _update_value(self, batch: Batch) -> dict[str, float]:
        schedule = self.schedule
        losses = []
        for _ in range(schedule.passes):
            for index in self._minibatches(len(batch), schedule.num_minibatches):
                share = self.dist.share(index, self.group_size)
                mb = batch.select(share, self.group_size)
                weight = self.dist.share_weight(batch.mask, index, share, "token_mean")  # a masked token mean
                self.value_optimizer.zero_grad(set_to_none=True)
                _, stats = backward_in_micro_batches(mb.rollout, self._micro(mb.rollout), self._values,
                                                     lambda values, mb=mb: self.algorithm.value_loss(values, mb),
                                                     lambda loss, weight=weight: self.dist.backward(loss, weight))
                torch.nn.utils.clip_grad_norm_(self.value_model.parameters(), schedule.max_grad_norm)
                self.value_optimizer.step()
                losses.append(self.dist.mean_stats(stats, weight)["loss/value"])
        return {"loss/value": sum(losses) / len(losses), "loss/value_first": losses[0], "loss/value_last": losses[-1]}
