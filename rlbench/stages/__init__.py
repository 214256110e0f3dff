"""Pipeline stages shared by a suite's runs, each cached on disk: cold-start SFT, reward-model
training, and the starting evaluation. They sit above `rlbench.rollout` (they sample and train
with it) and beside `rlbench.train`; `rlbench.models` imports none of them.

    sft.py            cold start (InstructGPT step 1): supervised fine-tuning on demonstrations
    reward_model.py   InstructGPT step 2: comparison pairs sampled from the SFT model, Bradley-Terry
    starting_eval.py  the SFT model's held-out accuracy (the "before" of every run) and its error
    prepare.py        the runner's entry: every stage a suite needs, in order (`prepare_stages`)
"""
