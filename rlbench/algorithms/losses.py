"""Loss functions for PPO, GRPO and the reward model, as pure functions over tensors.

Every per-token quantity is shaped [N, T]: N completions, T completion tokens, right-padded, with
`mask` 1 on real completion tokens and 0 on padding. A loss variant is a function (or an `agg`
value) chosen once by the algorithm; the training loop does no math of its own.

    loss = clipped_policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2, agg="token_mean")
    loss = loss + beta * masked_mean(kl_k3(logp, ref_logp), mask)        # GRPO's KL term
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from rlbench.algorithms.params import AGG_MODES


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the positions where `mask` is 1 (all of them, or along `dim`).

    Args:
        x: values, any shape.
        mask: 1 to count a position, 0 to ignore it; same shape as `x`.
        dim: reduce along this dimension only; None reduces everything to a scalar.

    Returns:
        The masked mean; an empty mask gives 0, not NaN.
    """
    mask = mask.to(x.dtype)
    total = (x * mask).sum() if dim is None else (x * mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp_min(1.0)


def aggregate(loss_per_token: Tensor, mask: Tensor, agg: str) -> Tensor:
    """Reduce a per-token loss [N, T] to a scalar.

    - "token_mean": every masked token weighs the same, so long completions count more
      (DAPO, https://arxiv.org/abs/2503.14476).
    - "seq_mean_token_mean": mean over tokens of each completion, then over completions: the
      lecture's 1/G sum_i 1/|o_i| sum_t (GRPO, https://arxiv.org/abs/2402.03300).
    - "seq_mean_token_sum_norm": sum over masked tokens / (N * T) with T = mask.shape[1], a
      constant that removes the length bias (Dr. GRPO, https://arxiv.org/abs/2503.20783).

    Args:
        loss_per_token: [N, T] loss of each token.
        mask: [N, T], 1 on completion tokens.
        agg: one of AGG_MODES.

    Returns:
        Scalar loss.
    """
    if agg == "token_mean":
        return masked_mean(loss_per_token, mask)
    if agg == "seq_mean_token_mean":
        return masked_mean(loss_per_token, mask, dim=1).mean()
    if agg == "seq_mean_token_sum_norm":
        return (loss_per_token * mask.to(loss_per_token.dtype)).sum() / mask.numel()
    raise ValueError(f"unknown agg {agg!r}; valid values: {', '.join(AGG_MODES)}")


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token KL(policy || reference) estimate k3, eq. 2 of the lecture (DeepSeekMath).

    k3 = pi_ref/pi - log(pi_ref/pi) - 1: unbiased, always >= 0, 0 when the two agree.
    http://joschu.net/blog/kl-approx.html and https://arxiv.org/abs/2402.03300

    Args:
        logp: [N, T] log-probs of the sampled tokens under the policy.
        ref_logp: [N, T] log-probs of the same tokens under the reference model.

    Returns:
        [N, T] per-token estimate.
    """
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token KL(policy || reference) estimate k1 = log pi - log pi_ref (unbiased, can be negative).

    This is the per-token penalty PPO folds into its rewards (InstructGPT,
    https://arxiv.org/abs/2203.02155); see http://joschu.net/blog/kl-approx.html.

    Args:
        logp: [N, T] log-probs of the sampled tokens under the policy.
        ref_logp: [N, T] log-probs of the same tokens under the reference model.

    Returns:
        [N, T] per-token estimate.
    """
    return logp - ref_logp


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    agg: str = "token_mean",
) -> Tensor:
    """PPO's clipped surrogate, negated to be minimised (https://arxiv.org/abs/1707.06347, eq. 7).

    Per token: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A), ratio = exp(logp - old_logp).
    `old_logp` and `advantages` are treated as constants (detached).

    Args:
        logp: [N, T] log-probs of the sampled tokens under the policy being trained.
        old_logp: [N, T] log-probs under the policy that sampled them.
        advantages: [N] (one per completion, as in GRPO) or [N, T] (per token, as in PPO).
        mask: [N, T], 1 on completion tokens.
        clip_eps: the clip range eps.
        agg: how tokens are reduced to a scalar, one of AGG_MODES (see `aggregate`).

    Returns:
        Scalar loss.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    advantages = advantages.detach()
    ratio = torch.exp(logp - old_logp.detach())
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages
    return aggregate(-torch.min(unclipped, clipped), mask, agg)


@torch.no_grad()
def policy_loss_stats(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2
) -> dict[str, float]:
    """Diagnostics of `clipped_policy_loss`, for logging.

    Args:
        logp, old_logp, advantages, mask, clip_eps: as in `clipped_policy_loss`.

    Returns:
        "clip_fraction": fraction of masked tokens where the clipped term was chosen, so the token
        gives no gradient (A > 0 with ratio > 1 + eps, or A < 0 with ratio < 1 - eps).
        "approx_kl": masked mean of (ratio - 1) - log ratio, KL(old || new) estimated with k3.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    clipped = ((ratio > 1 + clip_eps) & (advantages > 0)) | ((ratio < 1 - clip_eps) & (advantages < 0))
    return {
        "clip_fraction": masked_mean(clipped.to(logp.dtype), mask).item(),
        "approx_kl": masked_mean((ratio - 1) - log_ratio, mask).item(),
    }


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float
) -> Tensor:
    """PPO's clipped value loss: 0.5 * mean of max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2).

    As in OpenAI baselines' PPO2; see "The 37 implementation details of PPO", item 9
    (https://iclr-blog-track.github.io/2022/03/25/ppo-implementation-details/).

    Args:
        values: [N, T] value estimates of the model being trained.
        old_values: [N, T] estimates of the same model when the rollout was scored.
        returns: [N, T] targets (GAE advantages + old values).
        mask: [N, T], 1 on completion tokens.
        clip: how far V may move from V_old before the clipped term takes over.

    Returns:
        Scalar loss (masked token mean).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = torch.max((values - returns) ** 2, (clipped_values - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


def bradley_terry_loss(chosen_scores: Tensor, rejected_scores: Tensor) -> Tensor:
    """Reward-model loss on comparison pairs: mean of -log sigmoid(r_chosen - r_rejected).

    InstructGPT, eq. 1 (https://arxiv.org/abs/2203.02155).

    Args:
        chosen_scores: [P] scores of the preferred completions.
        rejected_scores: [P] scores of the other completion of each pair.

    Returns:
        Scalar loss; log 2 when the model cannot tell the two apart.
    """
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution at each position: -sum_v p_v log p_v.

    Args:
        logits: [..., V] unnormalised scores over the vocabulary.

    Returns:
        [...] entropy in nats.
    """
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def verifier_loss(scores: Tensor, correct: Tensor) -> Tensor:
    """Verifier (outcome reward model) loss: binary cross-entropy of each completion's logit
    against the answer checker's verdict, mean over completions.

    Cobbe et al., "Training Verifiers to Solve Math Word Problems" (https://arxiv.org/abs/2110.14168).

    Args:
        scores: [N] logits, one per completion.
        correct: [N] 1.0 for a correct completion, 0.0 otherwise.

    Returns:
        Scalar loss; log 2 at logit 0 whatever the labels.
    """
    return F.binary_cross_entropy_with_logits(scores, correct)
