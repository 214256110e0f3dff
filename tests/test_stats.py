"""Paired and clustered statistics (rlbench/report/stats.py), each against numbers worked by hand."""

from __future__ import annotations

import math

import pytest

from rlbench.report.stats import (
    binomial_stderr,
    clustered_stderr,
    mcnemar_exact,
    paired_delta,
    seed_mean,
    t_quantile,
    weak_reward_model,
)


def test_mcnemar_exact_by_hand():
    # b=7 improved, c=1 worsened: n=8, P(X<=1) = (C(8,0)+C(8,1))/2^8 = 9/256, two-sided 18/256 = 0.0703
    assert mcnemar_exact(7, 1) == pytest.approx(18 / 256)
    assert round(mcnemar_exact(7, 1), 4) == 0.0703
    assert mcnemar_exact(1, 7) == mcnemar_exact(7, 1)  # symmetric
    # b=5, c=0: 2 * (1/2)^5 = 0.0625
    assert mcnemar_exact(5, 0) == pytest.approx(0.0625)
    # b=2, c=1: 2 * (1+3)/8 = 1.0; equal counts and no discordant pair: 1
    assert mcnemar_exact(2, 1) == 1.0
    assert mcnemar_exact(4, 4) == 1.0
    assert mcnemar_exact(0, 0) == 1.0


# Student's t quantiles for q = 0.975, 0.995, 0.9995, to 16 digits: the root of the exact CDF
# 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 = q, solved with mpmath at 40 digits (mpmath.betainc and findroot).
# Checks by closed form: df 1 is tan(pi (q - 1/2)), tan(0.475 pi) = 12.7062047; df 2 is
# (2q - 1) / sqrt(2q(1 - q)), 0.95 / sqrt(0.04875) = 4.3026527.
T_QUANTILES = [
    (1, (12.7062047361747, 63.65674116287158, 636.6192487687196)),
    (2, (4.302652729749464, 9.924843200918293, 31.59905457644362)),
    (3, (3.18244630528371, 5.840909309733357, 12.92397863668748)),
    (7, (2.364624251592785, 3.499483297350494, 5.407882520861725)),
    (30, (2.042272456301238, 2.749995653567225, 3.645958635042022)),
    (1000, (1.962339080826408, 2.580754698065951, 3.300282648423913)),
    (1001, (1.96233670528088, 2.580749768750525, 3.300272876066009)),
    (1500, (1.961546753895019, 2.579110932109593, 3.297024849045952)),
    (4000, (1.960557228793734, 2.577058992810987, 3.292960798302574)),
    (1000000, (1.959966356814107, 2.575834220105334, 3.290536461248691)),
]


@pytest.mark.parametrize(("df", "quantiles"), T_QUANTILES)
def test_t_quantile_within_its_promised_1e_6(df, quantiles):
    for q, exact in zip((0.975, 0.995, 0.9995), quantiles):
        assert abs(t_quantile(q, df) - exact) < 1e-6, (q, df)


@pytest.mark.parametrize(("df", "quantiles"), [row for row in T_QUANTILES if row[0] <= 1000])
def test_t_quantile_is_exact_up_to_1000_degrees_of_freedom(df, quantiles):
    # The series of A&S 26.7.3/4 summed in float64 and 60 bisection steps from [0, 2^k], k <= 10: the
    # bisection leaves 2^10 / 2^60 = 1e-15, the up to 500 series terms about 500 x 2.2e-16 x 3.3 = 4e-13.
    for q, exact in zip((0.975, 0.995, 0.9995), quantiles):
        assert t_quantile(q, df) == pytest.approx(exact, rel=1e-11, abs=0), (q, df)


def test_t_quantile_below_one():
    # q = 0.6: quantiles under 1 (df 1: tan(0.1 pi) = 0.3249197), from the same mpmath root
    for df, exact in ((1, 0.3249196962329063), (3, 0.2766706623326899), (30, 0.2556053649519128)):
        assert t_quantile(0.6, df) == pytest.approx(exact, rel=1e-11, abs=0), df


def test_t_quantile_expansion_error_is_its_next_term():
    # Beyond 1000 degrees of freedom the Cornish-Fisher expansion stops at the 1/df^2 term; what it
    # leaves is the 1/df^3 term (3z^7 + 19z^5 + 17z^3 - 15z) / (384 df^3): at q 0.975 (z = 1.959964)
    # and df 1001, (333.2 + 548.7 + 128.0 - 29.4) / 384 / 1.003e9 = 2.55e-9. The smallest coefficient's
    # share, 3z / (96 df^2) = 6.1e-8, is far above that, so each coefficient of the expansion is checked.
    assert abs(t_quantile(0.975, 1001) - 1.96233670528088) < 5e-9
    assert abs(t_quantile(0.975, 1500) - 1.961546753895019) < 5e-9 * (1001 / 1500) ** 3


def test_t_quantile_rejects_what_it_cannot_answer():
    for q, df in ((0.5, 3), (1.0, 3), (0.975, 0)):
        with pytest.raises(AssertionError, match="0.5 < q < 1 and df >= 1"):
            t_quantile(q, df)


def test_clustered_stderr_and_binomial_stderr_of_almost_nothing():
    se, g = clustered_stderr([], [])
    assert math.isnan(se) and g == 0  # no values: no clusters
    se, g = clustered_stderr([1.0], ["a"])
    assert math.isnan(se) and g == 1  # one value: one cluster, no spread
    assert binomial_stderr(0.5, 0) == 0.0  # no problems: 0, not a division by zero
    assert binomial_stderr(0.5, 1) == 0.5  # sqrt(0.25 / 1)
    assert binomial_stderr(1.0, 9) == 0.0 and binomial_stderr(0.1, 1) == pytest.approx(0.3)  # sqrt(0.09)


def test_clustered_stderr_larger_than_binomial_when_clusters_agree():
    # y = 1,1 in cluster a and 0,0 in cluster b: mean 0.5; cluster sums of residuals +1 and -1;
    # SE^2 = G/(G-1) * (1 + 1) / n^2 = 2 * 2 / 16 = 0.25 -> SE 0.5, twice the binomial sqrt(0.25/4) = 0.25:
    # four problems, but only two independent pieces of evidence.
    se, g = clustered_stderr([1, 1, 0, 0], ["a", "a", "b", "b"])
    assert (se, g) == (pytest.approx(0.5), 2)
    assert binomial_stderr(0.5, 4) == pytest.approx(0.25)


def test_clustered_stderr_of_singletons_is_the_sample_sd_over_sqrt_n():
    # y = 1,0,1,1: mean .75, residuals .25,-.75,.25,.25, squares sum .75; SE^2 = 4/3 * .75 / 16 = 1/16
    se, g = clustered_stderr([1, 0, 1, 1], ["p1", "p2", "p3", "p4"])
    assert (se, g) == (pytest.approx(0.25), 4)
    assert se == pytest.approx(binomial_stderr(0.75, 4) * math.sqrt(4 / 3))  # n/(n-1) apart
    assert math.isnan(clustered_stderr([1, 0], ["a", "a"])[0])  # one cluster: no spread to measure


def test_paired_delta_by_hand():
    # before 0,0,1,1,0,1 and after 1,1,1,0,0,1 in clusters a,a,b,b,c,c
    # differences 1,1,0,-1,0,0: improved 2, worsened 1, delta 1/6
    # residuals 5/6,5/6,-1/6,-7/6,-1/6,-1/6 -> cluster sums 10/6, -8/6, -2/6, squares sum 168/36
    # SE^2 = 3/2 * 168/36 / 36 = 7/36 -> SE = sqrt(7)/6 = 0.4410; t(0.975, 2) = 4.3027
    out = paired_delta([0, 0, 1, 1, 0, 1], [1, 1, 1, 0, 0, 1], ["a", "a", "b", "b", "c", "c"])
    assert (out["n"], out["improved"], out["worsened"], out["clusters"]) == (6, 2, 1, 3)
    assert out["delta"] == pytest.approx(1 / 6)
    assert out["stderr"] == pytest.approx(math.sqrt(7) / 6)
    half = 4.302653 * math.sqrt(7) / 6
    assert out["ci95"] == pytest.approx([1 / 6 - half, 1 / 6 + half], abs=1e-5)
    assert out["p_value"] == pytest.approx(1.0)  # b=2, c=1


def test_paired_delta_with_two_clusters_has_an_interval():
    # before 0,1,0,1 and after 1,1,0,0 in clusters a,a,b,b: differences 1,0,0,-1, delta 0;
    # cluster sums +1 and -1, SE^2 = 2/1 x 2 / 16 = 0.25 -> SE 0.5; t(0.975, 1) = 12.7062047
    out = paired_delta([0, 1, 0, 1], [1, 1, 0, 0], ["a", "a", "b", "b"])
    assert out["clusters"] == 2 and out["delta"] == 0.0 and out["stderr"] == pytest.approx(0.5)
    assert out["ci95"] == pytest.approx([-6.35310237, 6.35310237], abs=1e-7)


def test_paired_delta_agrees_with_mcnemar_on_a_clear_gain():
    # 7 problems improve, 1 worsens, 92 stay: delta 6/100, p 0.0703 whatever the clusters
    before = [0] * 7 + [1] + [1] * 46 + [0] * 46
    after = [1] * 7 + [0] + [1] * 46 + [0] * 46
    out = paired_delta(before, after, [f"p{i}" for i in range(100)])
    assert out["delta"] == pytest.approx(0.06)
    assert out["p_value"] == pytest.approx(18 / 256)
    low, high = out["ci95"]
    assert low < 0.06 < high and high - 0.06 == pytest.approx(0.06 - low)


def test_seed_mean_by_hand():
    # 0.40, 0.44, 0.48: mean .44, sd .04, se .04/sqrt(3) = .023094, t(0.975, 2) = 4.3027 -> +-0.099365
    out = seed_mean([0.40, 0.44, 0.48])
    assert out["mean"] == pytest.approx(0.44)
    assert out["sd"] == pytest.approx(0.04)
    assert out["ci95"] == pytest.approx([0.340635, 0.539365], abs=1e-5)
    assert (out["n"], out["min"], out["max"]) == (3, 0.40, 0.48)
    # two seeds 0.4, 0.5: mean 0.45, sd sqrt(0.005) = 0.0707107, t(0.975, 1) = 12.7062047 x 0.0707107 / sqrt(2)
    # = 12.7062047 x 0.05 = 0.6353102
    two = seed_mean([0.4, 0.5])
    assert two["sd"] == pytest.approx(math.sqrt(0.005))
    assert two["ci95"] == pytest.approx([0.45 - 0.63531024, 0.45 + 0.63531024], abs=1e-7)
    one = seed_mean([0.5])
    assert (one["sd"], one["ci95"], one["mean"]) == (None, None, 0.5)


def test_weak_reward_model_by_hand():
    # standard error at chance over the held-out pairs: sqrt(0.25 / n)
    # 0.706 on 400 pairs: se 0.025; 0.206 > 2 x 0.025 and 0.706 >= 0.6: not weak
    assert weak_reward_model(0.706, 400) is None
    # 1.0 on 6 pairs: se 0.204; 0.5 > 0.408: not weak (a perfect score on few pairs still has an error)
    assert weak_reward_model(1.0, 6) is None
    # 0.58 on 400 pairs: above chance (0.08 > 0.05) but below 0.6
    assert "below 0.6" in weak_reward_model(0.58, 400)
    # 0.65 on 20 pairs: se = sqrt(0.25/20) = 0.1118; 0.15 <= 0.2236: not above chance
    reason = weak_reward_model(0.65, 20)
    assert "not above chance" in reason and "0.112" in reason


def test_weak_reward_model_at_its_boundaries():
    # 4 pairs: se = sqrt(0.25 / 4) = 0.25, two standard errors 0.5. 1.0 - 0.5 = 0.5 is not ABOVE 0.5:
    # weak (exact in binary floating point, so the boundary is tested, not its rounding).
    assert "not above chance" in weak_reward_model(1.0, 4)
    # 16 pairs: se 0.125, two of them 0.25; 0.75 - 0.5 = 0.25: weak; 0.8125 (13 of 16) is above
    assert "not above chance" in weak_reward_model(0.75, 16)
    assert weak_reward_model(0.8125, 16) is None
    # the floor: exactly 0.6 is not below 0.6 (10,000 pairs: se 0.005, far above chance)
    assert weak_reward_model(0.6, 10_000) is None
    assert "below 0.6" in weak_reward_model(0.5999, 10_000)
    # the floor and z are parameters: 0.7 on 10,000 pairs is weak under floor 0.75, and 1.0 on 16 under z 4
    assert "below 0.75" in weak_reward_model(0.7, 10_000, floor=0.75)
    assert "by 4 standard errors" in weak_reward_model(1.0, 16, z=4.0)


def test_paired_accuracy_keeps_outcomes_and_clusters():
    from rlbench.measure.evaluation import paired_accuracy

    # problems 1 and 2 tell chain "a", 3 and 4 chain "b"; problem 2 improves, problem 4 worsens
    out = paired_accuracy("0011", "0110", ["a", "a", "b", "b"], "arithmetic chain")
    assert out["outcomes"] == {"before": "0011", "after": "0110", "cluster": [0, 0, 1, 1], "cluster_keys": ["a", "b"]}
    paired = out["paired"]
    assert (paired["improved"], paired["worsened"], paired["delta"], paired["p_value"]) == (1, 1, 0.0, 1.0)
    # differences 0,1,0,-1 -> cluster sums 1 and -1; SE^2 = 2/1 * 2 / 16 = 0.25
    assert paired["stderr"] == pytest.approx(0.5) and paired["clusters"] == 2
    assert paired["cluster_by"] == "arithmetic chain"
    # before 0,0,1,1 in clusters a,a,b,b: the clustered example above, 0.5
    assert paired["before_stderr"] == pytest.approx(0.5)
    one = paired_accuracy("01", "11", ["a", "a"], "arithmetic chain")["paired"]
    assert one["stderr"] is None and one["ci95"] is None and one["delta"] == 0.5  # one cluster: no error
