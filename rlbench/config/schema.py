"""The suite schema: frozen dataclasses, each field with a one-line help and its constraints.

Every field carries a help string in its metadata (`help`), which `rlbench validate --explain`
prints, and optional constraints: `gt`/`ge`/`lt`/`le` for numbers, `choices` for strings. An
algorithm's own `Params` (rlbench/algorithms/params.py) use the same `f(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args


def f(default: Any = None, help: str = "", **constraints: Any) -> Any:
    """A dataclass field with a help string and constraints in its metadata."""
    meta = {"help": help, **constraints}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    if isinstance(default, type):  # a nested dataclass: build its defaults
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


DTYPES = ("float32", "bfloat16", "float16")
SCORINGS = ("pipeline", "strict", "flexible")
"""How a greedy completion's answer is read (`rlbench.measure.evaluation.SCORERS`)."""
RewardSource = Literal["rules", "model", "both"]
"""Where a run's optimised reward comes from: rule rewards, the reward model, or their sum."""
REWARD_SOURCES: tuple[RewardSource, ...] = get_args(RewardSource)


@dataclass(frozen=True)
class PrecisionMode:
    """What a `model.precision` setting means, in dtype names (`rlbench.models.precision` maps
    them to torch dtypes and resolves a suite's setting once)."""

    name: str
    dtype: str  # the model.dtype it needs: frozen roles hold their parameters in it
    mixed: bool  # trained roles hold float32 masters and AdamW moments; phases compute under autocast to dtype
    auto: bool  # what `precision: auto` picks for a model of this dtype
    choice: bool = True  # a suite may name it (fp16-pure is reached through auto only)


PRECISION_MODES = {mode.name: mode for mode in (
    PrecisionMode("fp32", "float32", mixed=False, auto=True),
    PrecisionMode("bf16-mixed", "bfloat16", mixed=True, auto=True),
    PrecisionMode("bf16-pure", "bfloat16", mixed=False, auto=False),
    PrecisionMode("fp16-pure", "float16", mixed=False, auto=True, choice=False),
)}
"""The one table of precisions: what each holds and computes in, and what `auto` picks."""
PRECISIONS = ("auto", *(name for name, mode in PRECISION_MODES.items() if mode.choice))


@dataclass(frozen=True)
class SFTConfig:
    """Cold start: supervised fine-tuning on demonstrations before RL (cached on disk)."""

    steps: int = f(400, "optimizer steps of supervised fine-tuning (0 skips SFT)", ge=0)
    batch_size: int = f(32, "demonstrations per SFT step", gt=0)
    lr: float = f(4e-3, "AdamW learning rate of SFT", gt=0, lt=1)
    warmup_steps: int = f(20, "linear warm-up steps", ge=0)
    train_size: int = f(20000, "synthetic demonstrations generated for SFT (when demonstrations is null)", gt=0)
    demonstrations: int | None = f(None, "a fixed demonstration set: the first N train problems (seed 0), trained "
                                         "epoch after epoch to a plateau found on a dev split (max_epochs, eval_every, "
                                         "dev_size, patience, min_steps); sft_more trains on the same N. null: `steps` "
                                         "steps on train_size fresh demonstrations", gt=0)
    max_epochs: float = f(40.0, "with demonstrations: the cosine schedule's horizon in epochs over the N "
                                "(ceil(max_epochs * N / batch_size) steps, the most SFT runs)", gt=0)
    eval_every: int = f(50, "with demonstrations: SFT steps between greedy dev-accuracy evaluations", gt=0)
    dev_size: int = f(512, "with demonstrations: dev problems (prompts and answers of train problems whose "
                           "arithmetic chain is not among the demonstrations'; no demonstration spent)", gt=0)
    patience: int | None = f(3, "with demonstrations: stop after this many dev evaluations without a new best "
                                "accuracy and keep the best; null: train to the horizon and keep the best", gt=0)
    min_steps: int = f(250, "with demonstrations: no early stop, and no checkpoint kept, before this step "
                            "(evaluations before it only draw the curve)", ge=0)


@dataclass(frozen=True)
class RewardModelConfig:
    """Reward model stage (InstructGPT step 2), for algorithms that hold a neural reward model."""

    path: str | None = f(None, "load a saved reward model directory instead of training one")
    prompts: int = f(2000, "prompts sampled from the SFT model to build comparison pairs", gt=0)
    samples_per_prompt: int = f(4, "completions per prompt; correct/incorrect pairs become comparisons", ge=2)
    steps: int = f(400, "Bradley-Terry training steps", ge=0)
    batch_size: int = f(32, "comparison pairs per step", gt=0)
    lr: float = f(3e-4, "AdamW learning rate of the reward model", gt=0, lt=1)
    heldout_fraction: float = f(0.1, "fraction of pairs held out to report pairwise accuracy", gt=0, lt=1)
    kind: str = f("pairwise", "pairwise: Bradley-Terry on (correct, incorrect) pairs of one prompt; verifier: "
                              "binary cross-entropy on every labelled completion, the logit is the reward. Both "
                              "report held-out pairwise accuracy (what GRPO's within-group ranking uses) and AUC",
                  choices=("pairwise", "verifier"))


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters on the policy (needs the `peft` extra)."""

    r: int = f(16, "adapter rank", gt=0)
    alpha: int = f(32, "adapter scaling alpha", gt=0)
    dropout: float = f(0.0, "adapter dropout", ge=0, lt=1)
    target_modules: list[str] = f(["q_proj", "k_proj", "v_proj", "o_proj"], "module names that get adapters")


@dataclass(frozen=True)
class ModelConfig:
    name: str = f("embedded", "'embedded' (the built-in 1M-parameter model), shape:<name> or shape:<config.json> "
                  "(a real architecture with random weights: qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, llama-3.1-8b), "
                  "a hub name or a local directory")
    dtype: str = f("float32", "parameter dtype", choices=DTYPES)
    precision: str = f("auto", "fp32; bf16-mixed (trained roles keep fp32 master weights and AdamW moments, compute in "
                               "bf16; frozen roles in bf16); bf16-pure (everything in bf16, moments too); auto: fp32 "
                               "for dtype float32, bf16-mixed for bfloat16", choices=PRECISIONS)
    micro_batch_size: int | None = f(None, "rows per forward/backward in the update, reference, value and reward "
                                           "phases (gradients accumulated: the same update); null: a whole minibatch "
                                           "at once", gt=0)
    attn_implementation: str | None = f(None, "transformers attention implementation (eager, sdpa, flash_attention_2)")
    gradient_checkpointing: bool = f(False, "recompute activations in the backward pass to save memory")
    trust_remote_code: bool = f(False, "allow code shipped with a hub model to run")
    max_prompt_tokens: int = f(512, "prompts longer than this are truncated from the left", gt=0)
    sft: SFTConfig = f(SFTConfig, "cold-start supervised fine-tuning")
    reward_model: RewardModelConfig = f(RewardModelConfig, "reward model stage")
    lora: LoraConfig | None = f(None, "LoRA adapters on the policy; null trains all weights")


@dataclass(frozen=True)
class TaskConfig:
    name: str = f("synthetic", "registered task: synthetic (generated GSM8K-style problems) or gsm8k")
    path: str | None = f(None, "gsm8k only: a local .jsonl/.parquet file or directory instead of the hub")
    min_steps: int = f(1, "synthetic: fewest arithmetic steps per problem", ge=1, le=4)
    max_steps: int = f(2, "synthetic: most arithmetic steps per problem", ge=1, le=4)
    max_number: int = f(12, "synthetic: largest operand (multipliers and divisors stay <= 10)", ge=2)
    train_size: int = f(20000, "problems in the RL training split", gt=0)


@dataclass(frozen=True)
class AlgorithmConfig:
    name: str = f("grpo_zero", "registered algorithm: ppo, grpo, grpo_zero, sft_more or sft_new_data")
    label: str | None = f(None, "display name in reports (default: the algorithm name); unique; letters, digits, "
                                "'.', '_', '-'")
    reward: str | None = f(None, "reward source: rules, model or both (default: rules for grpo_zero, model otherwise)",
                           choices=REWARD_SOURCES)
    rewards: dict[str, float] = f({"answer_correct": 1.0, "format_strict": 0.1},
                                  "rule rewards and their weights (see `rlbench ls`)")
    model_reward_weight: float = f(1.0, "weight of the reward model's score when reward is model or both", ge=0)
    params: dict[str, Any] = f({}, "the algorithm's own hyper-parameters (see `rlbench ls --params`)")
    reward_noise: float = f(0.0, "a simulated reward model of known accuracy: Gaussian noise of this standard "
                                 "deviation added to the rule reward, fixed per (problem, completion text, seed); with "
                                 "answer_correct at weight 1 its within-prompt pairwise accuracy is Phi(1 / (sd * "
                                 "sqrt 2)): 1.72 -> 0.66, 0.84 -> 0.80, 0.55 -> 0.90. 0: none", ge=0)


@dataclass(frozen=True)
class BudgetConfig:
    """One budget shared by every run; a run stops at the first limit reached."""

    steps: int | None = f(None, "RL steps", gt=0)
    completions: int | None = f(None, "generated sequences (the default fairness unit)", gt=0)
    tokens: int | None = f(None, "generated tokens", gt=0)
    wall_seconds: float | None = f(None, "wall-clock seconds of RL (evaluation excluded)", gt=0)
    flops: float | None = f(None, "model FLOPs of every role and phase as rlbench computes them (PaLM's 2N per "
                                  "token plus 4Ld per attended position forward, 3x trained; a group's prompt once; "
                                  "docs/methodology.md), counted from token counts and model shapes: the same on "
                                  "every machine; e.g. 2.0e12", gt=0)


BUDGET_LIMITS = tuple(fld.name for fld in fields(BudgetConfig))
"""The budget's limits (steps, completions, tokens, wall_seconds, flops), in the order a run checks
them: when several are reached at the same step, the first names the stop."""
MACHINE_BOUND_LIMITS = ("wall_seconds",)
"""The limits whose consumption depends on the machine (the others count the same everywhere)."""


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = f("hf", "rollout engine: hf (transformers-style generation) or vllm")
    completions_per_step: int = f(64, "completions generated per RL step, for every algorithm", gt=0)
    group_size: int = f(4, "completions per prompt for group-based algorithms (GRPO, GRPO-Zero)", gt=0)
    max_new_tokens: int = f(48, "most tokens generated per completion", gt=0)
    temperature: float = f(1.0, "sampling temperature", gt=0)
    top_p: float = f(1.0, "nucleus sampling threshold", gt=0, le=1)
    ignore_eos: bool = f(False, "keep sampling past EOS so that every training completion runs to max_new_tokens "
                                "(fixed-length runs: the shapes `rlbench estimate` assumes; the reward sees the "
                                "whole text); evaluation still stops at EOS")
    gpu_memory_utilization: float = f(0.3, "vllm: fraction of GPU memory the engine may take", gt=0, le=1)
    sleep_between_phases: bool = f(False, "vllm: free the KV cache while the policy updates (GPU only)")
    # vllm engine: device-specific settings (resolved in rlbench/rollout/vllm_options.py)
    vllm_dtype: str = f("auto", "vllm: engine dtype; auto: the policy's compute dtype", choices=("auto", *DTYPES))
    vllm_kv_cache_gib: float | None = f(None, "vllm on a CPU: GiB of KV cache; null: sized to the rows generated "
                                              "at once at the longest length (at most 4 GiB)", gt=0)
    vllm_enforce_eager: bool | None = f(None, "vllm: no torch.compile or CUDA graphs; null: on a CPU (compiling "
                                              "takes minutes there), off on a GPU")
    vllm_inline: bool = f(False, "vllm: run its engine core and worker in this process instead of child processes")


@dataclass(frozen=True)
class EvalConfig:
    size: int = f(512, "held-out problems scored before and after RL", gt=0)
    every: int = f(0, "also evaluate every N steps (0: only before and after)", ge=0)
    k: int = f(1, "samples per problem for pass@k and maj@k (1: greedy pass@1 only)", ge=1)
    batch_size: int = f(256, "problems per generation batch", gt=0)
    scoring: list[str] = f([], "further scorings of each greedy completion, each with its paired change: strict (the "
                               "number in <answer>...</answer> only), flexible (the last number in the completion); "
                               "pipeline is rlbench's extractor (answer tag, ####, boxed, 'the answer is', last number)")
    headline: str = f("pipeline", "the scoring eval/accuracy, its change, the tables and `rlbench check` use",
                      choices=SCORINGS)


@dataclass(frozen=True)
class CheckConfig:
    """Default regression thresholds for `rlbench check`: 'N%' relative or a plain number absolute."""

    memory: str = f("5%", "largest allowed rise of a memory figure")
    throughput: str = f("10%", "largest allowed fall of a throughput figure")
    accuracy: str = f("0.02", "largest allowed fall of accuracy beyond its standard error")


@dataclass(frozen=True)
class DistributedConfig:
    """Several processes per run (torchrun), every model role sharded with FSDP2 (`fully_shard`)."""

    nproc_per_node: int = f(2, "processes (ranks) per run on this machine; each takes its slice of every step's prompts",
                            ge=1)
    strategy: str = f("fsdp2", "how roles are split over ranks: fsdp2 shards every weight, gradient and optimizer "
                      "state per decoder layer", choices=("fsdp2",))
    backend: str = f("auto", "torch.distributed backend: auto (nccl with CUDA, gloo otherwise), nccl (one GPU per "
                     "rank) or gloo (ranks compute on the CPU)", choices=("auto", "nccl", "gloo"))
    timeout_s: float = f(120.0, "seconds a collective may wait for the other ranks before the run fails "
                         "(instead of hanging)", gt=0)


@dataclass(frozen=True)
class Suite:
    name: str = f("suite", "suite name (letters, digits, '.', '_', '-'); reports go to <output>/<name>/<timestamp>/")
    description: str = f("", "one line on what the suite is for")
    model: ModelConfig = f(ModelConfig, "the model every run starts from")
    task: TaskConfig = f(TaskConfig, "the problems")
    algorithms: list[AlgorithmConfig] = f([], "the algorithms to compare (at least one)")
    budget: BudgetConfig = f(BudgetConfig, "shared budget (at least one limit)")
    rollout: RolloutConfig = f(RolloutConfig, "how completions are generated")
    eval: EvalConfig = f(EvalConfig, "held-out evaluation")
    seeds: list[int] = f([0], "one run per algorithm per seed")
    probe: str = f("auto", "memory probe: auto, cpu, torch_cuda or nvml")
    probe_period_ms: float = f(10.0, "sampling period of sampling probes (nvml, psutil fallback)", gt=0)
    probe_heap: str = f("fast", "cpu probe: how a worker's C heap (glibc) returns freed tensors. fast: mmap "
                                "threshold 1 MiB, a freed block under 1 MiB stays resident until the phase ends, "
                                "so a phase can read 10% to 55% above its live tensors on the embedded model and "
                                "11% at the 0.5B shape; exact: 64 KiB, resident memory follows the live tensors "
                                "(what `rlbench estimate` predicts) but steps take about 1.5x as long on the "
                                "embedded model", choices=("fast", "exact"))
    threads: int | None = f(None, "torch threads per run, shared by its ranks (default: all cores)", gt=0)
    distributed: DistributedConfig | None = f(None, "run each algorithm x seed on several processes with torchrun "
                                              "and FSDP2; null: one process")
    run_timeout_s: float | None = f(None, "stop a run's worker after this many seconds, status timeout "
                                          "(default: derived from the budget and the run's progress)", gt=0)
    output: str = f("results", "directory that reports are written under")
    check: CheckConfig = f(CheckConfig, "regression thresholds for `rlbench check`")

