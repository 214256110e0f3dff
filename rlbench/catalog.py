"""The one table of rlbench's components: algorithms, tasks, rewards, rollout engines, probes.

Every entry is a name, a lazy `"module:attr"` target and a one-line help. This is the only module
that names implementations; they import neither the catalog nor `rlbench.config`'s checks, and
nothing registers itself on import. Loading a suite reads the catalog (names, an algorithm's
parameter dataclass, its default reward) without importing torch: targets are imported only when
a run asks for them.

To add a component: write it, then add one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlbench.registry import Registry, resolve


@dataclass(frozen=True)
class Recipe:
    """What the catalog knows of an algorithm without importing it (or torch)."""

    impl: str  # "module:Class", the class implementing rlbench.algorithms.base.Algorithm
    params: str  # "module:Dataclass", its hyper-parameters; a torch-free module
    default_reward: str  # the reward source when a suite sets none: "rules" means rules only

    @property
    def params_cls(self) -> type:
        return resolve(self.params)

    @property
    def cls(self) -> Any:
        return resolve(self.impl)


@dataclass(frozen=True)
class Task:
    """What the catalog knows of a task: where its problems come from and how they cluster."""

    load: str  # "module:function", (cfg: TaskConfig, split, size, seed) -> list[Problem]
    cluster_key: str  # "module:function", Problem -> str: problems with one key repeat one underlying problem
    clusters: str  # what a cluster is, as the report states it ("arithmetic chain", "problem")

    @property
    def loader(self) -> Callable[..., list[Any]]:
        return resolve(self.load)

    @property
    def key(self) -> Callable[[Any], str]:
        return resolve(self.cluster_key)


ALGORITHMS: Registry[Recipe] = Registry("algorithm")
TASKS: Registry[Task] = Registry("task")
REWARDS: Registry[Callable[..., float]] = Registry("reward")
ENGINES: Registry[Callable[..., Any]] = Registry("engine")
PROBES: Registry[Callable[..., Any]] = Registry("probe")

ALGORITHMS.add("ppo", Recipe("rlbench.algorithms.ppo:PPO", "rlbench.algorithms.params:PPOParams", "model"),
               "PPO (InstructGPT step 3): value model + GAE, KL to the reference in the reward")
ALGORITHMS.add("grpo", Recipe("rlbench.algorithms.grpo:GRPO", "rlbench.algorithms.params:GRPOParams", "model"),
               "GRPO: group-relative advantages, a neural reward model by default")
ALGORITHMS.add("grpo_zero",
               Recipe("rlbench.algorithms.grpo:GRPOZero", "rlbench.algorithms.params:GRPOParams", "rules"),
               "GRPO-Zero: GRPO with rule rewards only (regex format + exact answer), no reward model")
ALGORITHMS.add("sft_more",
               Recipe("rlbench.algorithms.sft_more:SFTMore", "rlbench.algorithms.params:SFTMoreParams", "rules"),
               "control arm: the same budget spent on more SFT on gold demonstrations (with model.sft.demonstrations: "
               "more epochs on the same N; policy only)")
ALGORITHMS.add("sft_new_data",
               Recipe("rlbench.algorithms.sft_more:SFTNewData", "rlbench.algorithms.params:SFTMoreParams", "rules"),
               "labelled apart: the same budget spent on SFT on new demonstrations (train problems not among "
               "model.sft.demonstrations): what more labelled data would buy")

TASKS.add("synthetic", Task("rlbench.tasks.synthetic:load_synthetic", "rlbench.tasks.synthetic:cluster_key",
                            "arithmetic chain"),
          "generated GSM8K-style word problems (1-4 steps of + - * /), offline")
TASKS.add("gsm8k", Task("rlbench.tasks.gsm8k:load_gsm8k", "rlbench.tasks.gsm8k:cluster_key", "problem"),
          "GSM8K grade-school math (openai/gsm8k from the hub, or task.path)")

REWARDS.add("format_strict", "rlbench.rewards:format_strict",
            "1 if the completion is exactly <reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>\\n, else 0.")
REWARDS.add("format_soft", "rlbench.rewards:format_soft",
            "1 if <reasoning>...</reasoning> then <answer>...</answer> appear anywhere, else 0.")
REWARDS.add("answer_correct", "rlbench.rewards:answer_correct",
            "1 if the extracted final answer equals the gold answer, else 0.")
REWARDS.add("answer_is_number", "rlbench.rewards:answer_is_number",
            "1 if the first <answer>...</answer> holds a number, else 0.")
REWARDS.add("tag_count", "rlbench.rewards:tag_count",
            "0.25 per format tag placed once on its own line, less 0.001 per character after </answer>.")

ENGINES.add("hf", "rlbench.rollout.hf:make_hf_engine",
            "sampling from the policy module with a KV cache (any device; the CPU default)")
ENGINES.add("vllm", "rlbench.rollout.vllm:make_vllm_engine",
            "a colocated vLLM engine, weights synced after each update (GPU: extra `vllm`; CPU: vLLM's CPU build)")

PROBES.add("cpu", "rlbench.measure.memory:cpu_probe",
           "process RSS: exact phase peak from /proc clear_refs + VmHWM (psutil sampling fallback)")
PROBES.add("torch_cuda", "rlbench.measure.memory:torch_cuda_probe",
           "PyTorch CUDA allocator: max_memory_allocated/reserved per phase")
PROBES.add("nvml", "rlbench.measure.memory:nvml_probe",
           "NVML: process and device GPU memory sampled on a thread (sees vLLM, CUDA context)")
PROBES.add("auto", "rlbench.measure.memory:auto_probe", "nvml + torch_cuda on a CUDA machine, cpu otherwise")

REGISTRIES = (ALGORITHMS, TASKS, REWARDS, ENGINES, PROBES)


def registry(kind: str) -> Registry[Any]:
    """The registry of `kind`: 'algorithm', 'task', 'reward', 'engine' or 'probe'."""
    return {r.kind: r for r in REGISTRIES}[kind]


def load_problems(cfg: Any, split: str, size: int | None, seed: int) -> list[Any]:
    """Problems of a split ("train" or "eval") from the task named by `cfg.name`."""
    from rlbench.tasks import SPLITS

    assert split in SPLITS, f"split must be one of {SPLITS}, got {split!r}"
    return TASKS.get(cfg.name).loader(cfg, split, size, seed)


def problem_clusters(cfg: Any, problems: list[Any]) -> tuple[list[str], str]:
    """(each problem's cluster key, what a cluster is) for problems of the task named by `cfg.name`:
    problems sharing a key are not independent evidence, and standard errors are clustered by it."""
    task = TASKS.get(cfg.name)
    return [task.key(p) for p in problems], task.clusters


def rule_functions(names: Any) -> dict[str, Callable[..., float]]:
    """{name: rule reward function} for the names of a suite's `rewards` mapping."""
    return {name: REWARDS.get(name) for name in names}


def resolve_probe(name: str, period_ms: float, heap: str) -> Any:
    """The probe `name` built with `period_ms` and the suite's `probe_heap` (`heap`, which the cpu
    probe checks the process was started with): always a CompositeProbe (`probing.RunProbe`)."""
    return PROBES.get(name)(period_ms, heap)
