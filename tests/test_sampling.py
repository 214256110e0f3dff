"""The sampler draws tokens with the probabilities it reports, one uniform number per row."""

from __future__ import annotations

import torch

from rlbench.rollout.hf import inverse_cdf_sample, top_p_filter


def test_inverse_cdf_sample_follows_the_distribution_and_never_draws_a_masked_token() -> None:
    probs = torch.tensor([0.5, 0.0, 0.2, 0.25, 0.05])
    logp = probs.log().expand(20_000, -1)  # the 0.0 is -inf
    draws = inverse_cdf_sample(logp, torch.Generator().manual_seed(0))
    frequency = torch.bincount(draws, minlength=5).float() / len(draws)
    # 20,000 draws: the standard error of a frequency is at most sqrt(0.25 / 20000) = 0.0035.
    torch.testing.assert_close(frequency, probs, atol=0.015, rtol=0)
    assert frequency[1] == 0


def test_inverse_cdf_sample_takes_unnormalised_top_p_filtered_log_probs() -> None:
    logp = torch.tensor([[0.6, 0.3, 0.1]]).log().expand(5_000, -1)
    filtered = top_p_filter(logp, 0.7)  # keeps 0.6 and 0.3, the token that crosses 0.7
    draws = inverse_cdf_sample(filtered, torch.Generator().manual_seed(1))
    assert set(draws.tolist()) == {0, 1}
    assert abs((draws == 0).float().mean().item() - 2 / 3) < 0.03


def test_inverse_cdf_sample_is_reproducible_for_a_seed() -> None:
    logp = torch.randn(8, 151_936, generator=torch.Generator().manual_seed(2)).log_softmax(-1)
    first = inverse_cdf_sample(logp, torch.Generator().manual_seed(3))
    assert torch.equal(first, inverse_cdf_sample(logp, torch.Generator().manual_seed(3)))
    assert first.shape == (8,) and int(first.max()) < 151_936
