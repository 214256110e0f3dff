"""Algorithms: the math (advantages.py, losses.py), the recipes that wire it (grpo.py, ppo.py), their
hyper-parameters as data (params.py) and the protocol the training loop reads (base.py).

Recipes are listed in `rlbench/catalog.py`; importing this package registers nothing.
"""
