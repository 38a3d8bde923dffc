"""Training metrics on disk (metrics.jsonl) and the statistics results are reported with."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

from rlft.errors import UserError
from rlft.rundir import checkpoints

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


def win_rate(scores: list[float], reference_scores: list[float]) -> dict:
    """Per-prompt comparison of two models' judge scores: wins count 1, ties 1/2, losses 0
    (ties are common with a rule judge, so they are reported too); normal 95% interval."""
    outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, reference_scores, strict=True)]
    n = len(outcomes)
    return {
        "win_rate": {"value": sum(outcomes) / n, "ci95": list(mean_interval(outcomes)), "n": n},
        "wins": sum(o == 1.0 for o in outcomes), "ties": sum(o == 0.5 for o in outcomes),
        "losses": sum(o == 0.0 for o in outcomes),
    }


class MetricsLogger(TrainerCallback):
    """Appends each log record to run_dir/metrics.jsonl, and stops the run at a non-finite loss or
    gradient norm.

    The check runs at every log (logging_steps); the Trainer saves a step's checkpoint after its
    log, so no checkpoint is written after a non-finite log: the newest one is the last good state,
    kept for resume=true (with a lower learning rate). Every rank stops, not only rank 0.
    """

    def __init__(self, run_dir: str):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        if state.is_world_process_zero:
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            try:
                with self.path.open("a") as f:
                    f.write(json.dumps(record, default=float) + "\n")
            except OSError as e:  # a full disk fails the write, which names no file: name it
                e.filename = e.filename or str(self.path)
                raise
        bad = {k: logs[k] for k in ("loss", "grad_norm") if isinstance(logs.get(k), (int, float))
               and not math.isfinite(logs[k])}
        if bad:
            kept = checkpoints(self.run_dir)
            last = f"last good checkpoint kept: {kept[-1]}" if kept else "no checkpoint was saved yet"
            what = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise UserError(f"non-finite {what} at step {state.global_step}: training stopped ({last}); "
                            "lower stage.trainer.learning_rate and resume with resume=true")


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
