"""rlbench: benchmark PPO, GRPO and GRPO-Zero under one budget.

Measures memory per model role (policy, reference, reward, value), throughput and accuracy,
and writes JSON reports that can be compared and gated in CI. Start with `rlbench --help`.
"""

__version__ = "0.1.0"
