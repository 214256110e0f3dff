"""Algorithms: the math (advantages.py, losses.py) and the recipes that wire it (grpo.py, ppo.py)."""

from rlbench.algorithms import grpo, ppo  # noqa: F401  (register grpo, grpo_zero, ppo)
