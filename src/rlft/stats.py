"""The statistics rlft's results are reported with: 95% intervals, win-rates, pass@k and the
best-of-n estimators. Pure Python (no torch), so tasks and reports import it cheaply.

Every estimate a results.json holds is a record {"value", "ci95", "n"}: `proportion` (successes
of n, Wilson interval) or `mean` (of per-item values, normal interval) makes one.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sane at 0, 1 and small n)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: list[float], z: float = Z95, bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """Normal-approximation 95% interval for a mean (sample standard deviation), clipped to the
    range the values can take (every rlft score lies in [0, 1])."""
    n = len(values)
    if n < 2:
        return (values[0], values[0]) if n else bounds
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(var / n)
    return max(bounds[0], mean - half), min(bounds[1], mean + half)


def proportion(successes: int, n: int) -> dict:
    """The record of `successes` out of `n` (Wilson 95% interval)."""
    return {"value": successes / n if n else 0.0, "ci95": list(wilson_interval(successes, n)), "n": n}


def mean(values: list[float], bounds: tuple[float, float] = (0.0, 1.0)) -> dict:
    """The record of the mean of `values` (normal 95% interval within `bounds`)."""
    n = len(values)
    return {"value": sum(values) / n if n else 0.0, "ci95": list(mean_interval(values, bounds=bounds)), "n": n}


def win_rate(scores: list[float], reference_scores: list[float]) -> dict:
    """Per-prompt comparison of two models' judge scores: wins count 1, ties 1/2, losses 0
    (ties are common with a rule judge, so they are reported too); normal 95% interval."""
    outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, reference_scores, strict=True)]
    n = len(outcomes)
    return {
        "win_rate": mean(outcomes),
        "wins": sum(o == 1.0 for o in outcomes), "ties": sum(o == 0.5 for o in outcomes),
        "losses": sum(o == 0.0 for o in outcomes),
    }


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased P(at least one of k samples is correct) from n samples with c correct
    (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def expected_max_at_k(scores: list[float], k: int) -> float:
    """Unbiased E[max score of k samples drawn without replacement] from n >= k samples: with
    scores sorted ascending, the i-th (1-based) is the maximum of C(i-1, k-1) of the C(n, k) subsets."""
    s = sorted(scores)
    n = len(s)
    total = math.comb(n, k)
    return sum(s[i] * math.comb(i, k - 1) for i in range(k - 1, n)) / total


def expected_pick_at_k(values: list[float], keys: list[float], k: int) -> float:
    """Unbiased E[value of the sample a selector picks from k drawn without replacement], the
    selector keeping the highest key (a reward model's score): with samples sorted by key, the
    i-th (1-based) is the pick of C(i-1, k-1) of the C(n, k) subsets. Equal keys share their
    subsets evenly (their values are averaged), so ties favour no sample."""
    order = sorted(range(len(values)), key=lambda i: keys[i])
    n = len(order)
    total = math.comb(n, k)
    out, i = 0.0, 0
    while i < n:  # a run of equal keys: its members split the subsets it wins
        j = i
        while j + 1 < n and keys[order[j + 1]] == keys[order[i]]:
            j += 1
        wins = sum(math.comb(r, k - 1) for r in range(i, j + 1))
        out += wins * sum(values[order[r]] for r in range(i, j + 1)) / (j - i + 1)
        i = j + 1
    return out / total
