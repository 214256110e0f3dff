"""Statistics for comparisons that hold up: paired before/after tests, clustered standard errors,
means over seeds. Pure functions of plain numbers; no torch, no I/O.

Held-out accuracy before and after RL is measured on the same problems, so the comparison is
paired: only the discordant problems (right before and wrong after, or the reverse) carry
information about the change.

- `mcnemar_exact`: exact two-sided McNemar test, a binomial test of the improved count against
  Binomial(improved + worsened, 1/2).
- `clustered_stderr`: the standard error of a mean when observations come in clusters that are not
  independent (the synthetic task repeats an arithmetic chain under other wordings; a model that
  solves one wording tends to solve the others). Cluster-robust ("sandwich") variance with the
  usual small-sample factor G/(G-1):

      SE^2 = G/(G-1) * sum_g (sum_{i in g} (y_i - mean))^2 / n^2

  With every observation its own cluster this is the sample standard deviation over sqrt(n).
- `paired_delta`: the change of accuracy with that clustered standard error of the per-problem
  differences (after - before), a 95% interval with Student's t on G - 1 degrees of freedom, and
  the McNemar p-value.
- `seed_mean`: the mean of a figure over seeds with a t-based 95% interval (n - 1 degrees of
  freedom) and its spread (sd, min, max).
- `weak_reward_model`: why a reward model's held-out pairwise accuracy is too low to trust its
  reward (below 0.6, or not above chance by two standard errors), or None.

    paired_delta([0, 1, 1], [1, 1, 0], ["a", "a", "b"])["p_value"]
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from statistics import NormalDist, fmean, stdev

CONFIDENCE = 0.95
EXACT_T_MAX_DF = 1000  # beyond this, t quantiles come from the Cornish-Fisher expansion (error < 1e-6)


def mcnemar_exact(improved: int, worsened: int) -> float:
    """Two-sided exact McNemar p-value: 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), at most 1.

    Args:
        improved: problems wrong before and right after (b).
        worsened: problems right before and wrong after (c).
    """
    n, k = improved + worsened, min(improved, worsened)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df (Abramowitz & Stegun 26.7.3 and 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:
        term = total = 1.0
        for k in range(2, df, 2):  # 1 + (1/2)cos^2 + (1*3)/(2*4)cos^4 + ... up to cos^(df-2)
            term *= c2 * (k - 1) / k
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term = total = math.cos(theta)
    for k in range(3, df, 2):  # cos + (2/3)cos^3 + (2*4)/(3*5)cos^5 + ... up to cos^(df-2)
        term *= c2 * (k - 1) / k
        total += term
    return 2 / math.pi * (theta + s * total)


def t_quantile(q: float, df: int) -> float:
    """The q-quantile (q > 0.5) of Student's t with df degrees of freedom: t_quantile(0.975, 2) = 4.303."""
    assert 0.5 < q < 1 and df >= 1, f"t_quantile needs 0.5 < q < 1 and df >= 1, got q={q}, df={df}"
    if df > EXACT_T_MAX_DF:
        z = NormalDist().inv_cdf(q)
        return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
    mass = 2 * q - 1
    low, high = 0.0, 1.0
    while _t_two_sided_mass(high, df) < mass:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_two_sided_mass(mid, df) < mass else (low, mid)
    return (low + high) / 2


def clustered_stderr(values: Sequence[float], clusters: Sequence[Hashable]) -> tuple[float, int]:
    """(cluster-robust standard error of the mean of `values`, number of clusters G).

    `clusters[i]` names the cluster of `values[i]`. NaN when G < 2 (no spread between clusters).
    """
    assert len(values) == len(clusters), "one cluster key per value"
    n = len(values)
    if n == 0:
        return math.nan, 0
    mean = fmean(values)
    sums: dict[Hashable, float] = {}
    for value, key in zip(values, clusters):
        sums[key] = sums.get(key, 0.0) + value - mean
    g = len(sums)
    if g < 2:
        return math.nan, g
    variance = g / (g - 1) * sum(s * s for s in sums.values()) / n ** 2
    return math.sqrt(variance), g


def binomial_stderr(p: float, n: int) -> float:
    """sqrt(p(1-p)/n): the standard error of a proportion over n independent problems."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n > 0 else 0.0


def paired_delta(before: Sequence[int], after: Sequence[int], clusters: Sequence[Hashable]) -> dict:
    """The change of accuracy between two scorings (0/1 per problem) of the same problems.

    Returns:
        {"n", "improved", "worsened", "delta", "stderr", "ci95": [low, high], "p_value", "clusters"}:
        delta = (improved - worsened) / n; stderr clustered by `clusters` (`clustered_stderr` of the
        per-problem differences); ci95 = delta -/+ t(0.975, G - 1) * stderr; p_value from
        `mcnemar_exact`.
    """
    assert len(before) == len(after) == len(clusters), "before, after and clusters: one entry per problem"
    diffs = [int(a) - int(b) for b, a in zip(before, after)]
    improved, worsened = diffs.count(1), diffs.count(-1)
    n = len(diffs)
    delta = (improved - worsened) / n if n else math.nan
    stderr, g = clustered_stderr(diffs, clusters)
    half = t_quantile(0.5 + CONFIDENCE / 2, g - 1) * stderr if g >= 2 else math.nan
    return {"n": n, "improved": improved, "worsened": worsened, "delta": delta, "stderr": stderr,
            "ci95": [delta - half, delta + half], "p_value": mcnemar_exact(improved, worsened), "clusters": g}


def seed_mean(values: Sequence[float]) -> dict:
    """Mean of one figure over seeds with a t-based 95% interval and the spread.

    Returns:
        {"n", "mean", "sd", "ci95": [low, high] or None, "min", "max"}; sd is the sample standard
        deviation (n - 1), the interval mean -/+ t(0.975, n - 1) * sd / sqrt(n); with one seed
        sd and ci95 are None.
    """
    assert values, "seed_mean needs at least one value"
    n, mean = len(values), fmean(values)
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "ci95": None, "min": min(values), "max": max(values)}
    sd = stdev(values)
    half = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "min": min(values),
            "max": max(values)}


WEAK_REWARD_MODEL_FLOOR = 0.6  # held-out pairwise accuracy below this: a weak reward model
WEAK_REWARD_MODEL_Z = 2.0  # ... or not above chance (0.5) by this many standard errors


def weak_reward_model(accuracy: float, pairs: int, floor: float = WEAK_REWARD_MODEL_FLOOR,
                      z: float = WEAK_REWARD_MODEL_Z) -> str | None:
    """Why a reward model is too weak to trust, or None when it is not.

    Args:
        accuracy: held-out pairwise accuracy (the chosen completion scored above the rejected one).
        pairs: held-out pairs it was measured on. The standard error is binomial over them at
            chance, sqrt(0.25 / pairs), so a perfect score on a handful of pairs still has one
            (pairs of one prompt share completions, so the true error is somewhat larger).
    """
    se = binomial_stderr(0.5, pairs)
    if accuracy - 0.5 <= z * se:
        return (f"held-out pairwise accuracy {accuracy:.3f} on {pairs} pairs is not above chance (0.5) by "
                f"{z:g} standard errors ({z:g} x {se:.3f})")
    if accuracy < floor:
        return f"held-out pairwise accuracy {accuracy:.3f} on {pairs} pairs is below {floor:g}"
    return None
