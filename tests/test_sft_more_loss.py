"""sft_more's loss by hand: the mean negative log-probability of the demonstration tokens."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from rlbench.algorithms.base import Batch
from rlbench.algorithms.params import SFTMoreParams
from rlbench.algorithms.sft_more import SFTMore
from rlbench.rollout import Rollout


def test_sft_more_loss_and_gradient_by_hand():
    # log-probs [[-1, -2], [-3, (pad) -50]]: cross-entropy (1 + 2 + 3) / 3 real tokens = 2;
    # d loss / d logp = -1/3 on each real token, 0 on the pad
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -50.0]], requires_grad=True)
    rollout = Rollout(input_ids=torch.zeros(2, 2, dtype=torch.long), attention_mask=mask.long(), prompt_width=0,
                      completion_ids=torch.zeros(2, 2, dtype=torch.long), completion_mask=mask,
                      logprobs=torch.zeros(2, 2), texts=["", ""], truncated=torch.zeros(2, dtype=torch.bool))
    batch = Batch(rollout, [None, None], 1, torch.zeros(2), torch.zeros(2), torch.zeros(2, 2))
    algorithm = SFTMore(SFTMoreParams())
    assert algorithm.reward_source == "rules"  # logged on the demonstrations, never optimised
    assert SFTMore(SFTMoreParams(), "model").reward_source == "model"
    loss, stats = algorithm.policy_loss(logp, batch)
    assert_close(loss, torch.tensor(2.0))
    assert stats == {"loss/policy": 2.0, "loss/sft": 2.0}
    loss.backward()
    assert_close(logp.grad, torch.tensor([[-1 / 3, -1 / 3], [-1 / 3, 0.0]]))
