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

Each phase runs inside the memory probe and a timer; the budget is checked after every step.
Model FLOPs are counted per phase from token counts and model shapes (`measure/flops.py`), so a
`budget.flops` limit stops every run at the same step on any machine.
The runner starts this in a fresh process per run (`python -m rlbench.worker`), so memory
figures belong to this run alone.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlbench.algorithms.advantages import zero_variance_fraction
from rlbench.algorithms.base import Algorithm, Batch
from rlbench.algorithms.losses import masked_mean
from rlbench.catalog import ALGORITHMS, ENGINES, load_problems, rule_functions
from rlbench.config import AlgorithmConfig, BudgetConfig, Suite, algorithm_params
from rlbench.distributed import Dist
from rlbench.models.batching import backward_in_micro_batches, in_micro_batches, micro_batches
from rlbench.models.forward import completion_logprobs, completion_logprobs_and_entropy
from rlbench.models.optim import adamw
from rlbench.rewards import gold_correct, score_rules
from rlbench.rollout import SamplingParams
from rlbench.tasks import Problem, encode_prompts, truncate_prompts


def make_algorithm(cfg: AlgorithmConfig) -> Algorithm:
    return ALGORITHMS.get(cfg.name).cls(algorithm_params(cfg), cfg.reward)


@dataclass
class Budget:
    """Consumption against the suite's limits; `exhausted()` names the first limit reached."""

    limits: BudgetConfig
    steps: int = 0
    completions: int = 0
    prompts: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    sequence_tokens: int = 0  # prompt + completion positions processed
    seconds: float = 0.0
    flops_by_phase: dict[str, int] = field(default_factory=dict)  # model FLOPs, exact integers

    @property
    def flops(self) -> int:
        return sum(self.flops_by_phase.values())

    def used(self) -> dict[str, float]:
        """Consumption in each limit's unit."""
        return {"steps": self.steps, "completions": self.completions, "tokens": self.tokens,
                "wall_seconds": self.seconds, "flops": self.flops}

    def exhausted(self) -> str | None:
        for name, used in self.used().items():
            limit = getattr(self.limits, name)
            if limit is not None and used >= limit:
                return name
        return None

    def fraction(self) -> float:
        """How much of the tightest limit is used, 0..1."""
        used = self.used()
        fractions = [used[k] / v for k, v in vars(self.limits).items() if v]
        return min(1.0, max(fractions)) if fractions else 0.0

    def consumed(self) -> dict[str, Any]:
        return {"steps": self.steps, "prompts": self.prompts, "completions": self.completions,
                "tokens_generated": self.tokens, "tokens_trained": self.trained_tokens,
                "wall_seconds": round(self.seconds, 3), "flops": self.flops,
                "flops_by_phase": dict(self.flops_by_phase)}


@dataclass
class PhaseStats:
    """Accumulated time of each phase, and each probe's memory figures for it, over the run.

    A phase's rise (its transient) is net of the static state it created and left behind
    (`static_created`: gradients and optimizer state appear in the first update, and are counted in
    the roles' static bytes), so nothing is counted twice. `peak_call` keeps, per probe and phase,
    the call that reached the phase's peak: its peak, its transient and the static bytes held when
    it ended, which is what the reconciliation adds up.
    """

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    peak_bytes: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))  # probe -> phase -> max
    rise_bytes: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))  # probe -> phase -> max
    peak_call: dict[str, dict[str, dict[str, int]]] = field(default_factory=lambda: defaultdict(dict))
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, phase: str, seconds: float, memory: dict | None = None, static_created: int = 0,
            static_end: int = 0) -> None:
        self.seconds[phase] += seconds
        self.calls[phase] += 1
        for probe, mem in (memory or {}).items():
            peaks, rises = self.peak_bytes[probe], self.rise_bytes[probe]
            rise = max(0, mem.peak_bytes - mem.start_bytes - static_created)
            if mem.peak_bytes >= peaks.get(phase, 0):
                self.peak_call[probe][phase] = {"peak_bytes": mem.peak_bytes, "rise_bytes": rise,
                                                "static_bytes": static_end}
            peaks[phase] = max(peaks.get(phase, 0), mem.peak_bytes)
            rises[phase] = max(rises.get(phase, 0), rise)
            if mem.note:
                self.notes[f"{probe}/{phase}"] = mem.note


class Run:
    """Everything one run holds: roles, optimizers, engine, probe, data, budget and metrics."""

    def __init__(self, suite: Suite, algo_cfg: AlgorithmConfig, seed: int, policy_dir: Path,
                 reward_dir: Path | None, probe, emit: Callable[[dict], None] = lambda e: None,
                 algorithm: Algorithm | None = None, dist: Dist | None = None) -> None:
        """`algorithm` defaults to the catalog's recipe for `algo_cfg`; any object implementing the
        `Algorithm` protocol runs the same loop. `dist`: this rank of a distributed run (rlbench/distributed.py)."""
        self.suite, self.algo_cfg, self.seed = suite, algo_cfg, seed
        self.algorithm = algorithm if algorithm is not None else make_algorithm(algo_cfg)
        self.schedule = self.algorithm.schedule()
        self.supervised = self.algorithm.completion_source == "gold"
        # Log-probs the update trains on: at the sampling temperature for sampled completions, at
        # temperature 1 (plain cross-entropy) for demonstrations.
        self.logprob_temperature = 1.0 if self.supervised else suite.rollout.temperature
        self.passes = self.schedule.passes  # optimisation passes over each batch (read by measure/)
        self.probe, self.emit = probe, emit
        self.phases = PhaseStats()
        self.role_load_bytes: dict[str, dict[str, int]] = {}  # role -> probe -> bytes
        self.step_metrics: list[dict[str, Any]] = []
        self.dist = dist if dist is not None else Dist()
        torch.manual_seed(seed)
        self.roles = self.algorithm.roles()
        self._load_roles(policy_dir, reward_dir)
        self.group_size = self.algorithm.group_size(suite.rollout.group_size)
        assert suite.rollout.completions_per_step % self.group_size == 0, "validated in config"
        self.prompts_per_step = suite.rollout.completions_per_step // self.group_size
        self.train_problems = load_problems(suite.task, "train", suite.task.train_size, seed)
        self.order = torch.randperm(len(self.train_problems), generator=torch.Generator().manual_seed(seed)).tolist()
        self.cursor = 0
        self.budget = Budget(suite.budget)
        self.sampling = SamplingParams(suite.rollout.max_new_tokens, suite.rollout.temperature, suite.rollout.top_p,
                                       ignore_eos=suite.rollout.ignore_eos)

    # -- loading --------------------------------------------------------------------------------
    def _measure_load(self, role: str, load: Callable[[], Any]) -> Any:
        before = self.probe.snapshot()
        obj = load()
        after = self.probe.snapshot()
        self.role_load_bytes[role] = {probe: after[probe] - before[probe] for probe in before}
        return obj

    def _load_roles(self, policy_dir: Path, reward_dir: Path | None) -> None:
        """Every role the algorithm holds, on `self.device`, each load measured by the probe.

        With `model.lora` the policy carries adapters and the reference is the same module with
        them disabled (no second copy: its static bytes are 0).
        """
        from rlbench.device import default_device
        from rlbench.models.loading import (
            AdapterDisabledReference,
            import_model_code,
            load_causal_lm,
            load_policy,
            load_scalar_model,
            load_tokenizer,
        )

        model_cfg = self.suite.model
        import_model_code(policy_dir, model_cfg)  # library code is no role's memory
        self.device = self.dist.device if self.dist.active else default_device()
        schedule = self.schedule

        def load_policy_role():
            if self.dist.active:  # sharded: built on the meta device, filled from rank 0
                return self.dist.load_role("policy", policy_dir, model_cfg), load_tokenizer(policy_dir, model_cfg)
            model, tok = load_policy(policy_dir, model_cfg, self.device)
            _touch(model)
            return model, tok

        self.policy, self.tokenizer = self._measure_load("policy", load_policy_role)
        self.policy.train()
        self.optimizer = adamw(self.policy.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
        self.reference = self.reward_model = self.value_model = self.value_optimizer = None
        if "reference" in self.roles:
            if self.dist.active:
                self.reference = self._measure_load(
                    "reference", lambda: self.dist.load_role("reference", policy_dir, model_cfg))
            elif model_cfg.lora is not None:
                self.reference = self._measure_load("reference", lambda: AdapterDisabledReference(self.policy))
            else:
                self.reference = self._measure_load(
                    "reference", lambda: _frozen(load_causal_lm(policy_dir, model_cfg, self.device)))
        if "reward" in self.roles:
            assert reward_dir is not None, "runner trains or loads the reward model first"
            self.reward_model = self._measure_load(
                "reward", lambda: self.dist.load_role("reward", reward_dir, model_cfg) if self.dist.active
                else _frozen(load_scalar_model(reward_dir, model_cfg, self.device)))
        if "value" in self.roles:
            from_reward = self.algorithm.value_init() == "reward"
            assert not from_reward or reward_dir is not None, "the runner prepares a reward model for value_init"
            source = reward_dir if from_reward else policy_dir

            def load_value():
                if self.dist.active:
                    return self.dist.load_role("value", source, model_cfg)
                model = load_scalar_model(source, model_cfg, self.device, trainable=True)
                _touch(model)
                return model

            self.value_model = self._measure_load("value", load_value)
            self.value_model.train()
            assert schedule.value_lr is not None, "a recipe with a value role sets schedule().value_lr"
            self.value_optimizer = adamw(self.value_model.parameters(), lr=schedule.value_lr,
                                         weight_decay=schedule.weight_decay)
        rollout = self.suite.rollout
        engine_factory = ENGINES.get(rollout.engine)
        self.engine = self._measure_load("rollout", lambda: engine_factory(
            self.policy, self.tokenizer, gpu_memory_utilization=rollout.gpu_memory_utilization,
            sleep_between_phases=rollout.sleep_between_phases, dtype=model_cfg.dtype, model_path=str(policy_dir),
            max_model_len=model_cfg.max_prompt_tokens + rollout.max_new_tokens, seed=self.seed,
            trust_remote_code=model_cfg.trust_remote_code))
        self.flop_shapes = self._flop_shapes()

    def _flop_shapes(self) -> dict[str, Any]:
        """Each role's N, L, d for the FLOP count; a LoRA reference is the policy's module."""
        from rlbench.measure.flops import flop_shape
        from rlbench.models.loading import AdapterDisabledReference

        shapes = {role: flop_shape(model) for role, (model, _) in self.role_models().items()}
        if isinstance(self.reference, AdapterDisabledReference):
            shapes["reference"] = shapes["policy"]
        return shapes

    def role_models(self) -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer | None]]:
        models = {"policy": (self.policy, self.optimizer), "reference": (self.reference, None),
                  "reward": (self.reward_model, None), "value": (self.value_model, self.value_optimizer)}
        return {role: pair for role, pair in models.items() if pair[0] is not None}

    # -- measurement ----------------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str):
        """Time and measure a phase; it computes in the precision's dtype (autocast under bf16-mixed)."""
        from rlbench.models.precision import compute_context

        start = time.perf_counter()
        memory: dict = {}
        static_start = self.static_bytes()
        try:
            with self.dist.phase(name), self.probe.phase(name) as memory, \
                    compute_context(self.suite.model, self.device):
                yield
        finally:
            static_end = self.static_bytes()
            self.phases.add(name, time.perf_counter() - start, memory, static_end - static_start, static_end)

    def static_bytes(self) -> int:
        """Every role's static bytes (weights, master weights, gradients, optimizer state, buffers)."""
        from rlbench.measure.static import role_static_bytes
        from rlbench.models.precision import compute_dtype

        dtype = compute_dtype(self.suite.model)
        return sum(role_static_bytes(model, optimizer, dtype)["total"] for model, optimizer in self.role_models().values())

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
        counts = {"prompts": len(prompts), "completions": len(problems), "tokens": rollout.num_tokens,
                  "sequence_tokens": sum(lengths),
                  **{f"flops/{phase}": n for phase, n in self.step_flops(lengths).items()}}
        # Every rank's rows, so that advantages see the whole batch (a no-op in one process).
        batch, reward_parts = self.dist.gather_batch(batch, reward_parts, self.tokenizer.pad_token_id)
        rollout, rewards, gold = batch.rollout, batch.rewards, batch.gold
        advantages_start = time.perf_counter()
        self.algorithm.compute_advantages(batch)
        self.phases.add("advantages", time.perf_counter() - advantages_start)
        with self.phase("update"):
            update_stats = self._update_policy(batch)
        if self.value_model is not None:
            with self.phase("value_update"):
                update_stats.update(self._update_value(batch))
        self.engine.sync_weights(self.policy)

        # Counts summed and seconds maxed over ranks: every rank stops on the same step.
        counts, step_seconds = self.dist.budget_reduce(counts, time.perf_counter() - step_start)
        self.budget.steps += 1
        for name, count in counts.items():
            if name.startswith("flops/"):
                phase = name.removeprefix("flops/")
                self.budget.flops_by_phase[phase] = self.budget.flops_by_phase.get(phase, 0) + count
            else:
                setattr(self.budget, name, getattr(self.budget, name) + count)
        self.budget.trained_tokens += counts["tokens"] * self.passes
        self.budget.seconds += step_seconds
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

    def step_flops(self, lengths: list[int]) -> dict[str, int]:
        """Model FLOPs of one step's phases over sequences of these lengths, each phase that ran
        with its role's shape: forwards for generation, reward scores, old and reference log-probs
        and values; trained passes (fwd + bwd) for every optimisation pass of the policy and value."""
        from rlbench.measure.flops import sequence_flops

        shapes = self.flop_shapes
        forwards = {
            "generate": "policy" if not self.supervised else None,
            "score": "reward" if self.algorithm.reward_source in ("model", "both") else None,
            "old_logprobs": "policy" if self.engine.has_own_weights and not self.supervised else None,
            "ref_logprobs": "reference" if "reference" in self.roles else None,
            "values": "value" if self.value_model is not None else None,
        }
        out = {phase: sequence_flops(shapes[role], lengths, training=False)
               for phase, role in forwards.items() if role is not None}
        out["update"] = self.passes * sequence_flops(shapes["policy"], lengths, training=True)
        if self.value_model is not None:
            out["value_update"] = self.passes * sequence_flops(shapes["value"], lengths, training=True)
        return out

    def _score(self, rollout, problems: list[Problem]) -> tuple[torch.Tensor, dict[str, list[float]]]:
        source = self.algorithm.reward_source
        total = torch.zeros(len(problems), device=rollout.input_ids.device)
        parts: dict[str, list[float]] = {}
        if source in ("rules", "both"):
            rule_total, parts = score_rules(rollout.texts, problems, self.algo_cfg.rewards,
                                            rule_functions(self.algo_cfg.rewards))
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


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    _touch(model)
    return model


def _touch(model: torch.nn.Module) -> None:
    """Read every weight once: `from_pretrained` memory-maps safetensors, and pages not yet read
    would otherwise be counted only when a later phase first touches them."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.numel():
                t.view(-1)[::max(1, 4096 // t.element_size())].sum()
