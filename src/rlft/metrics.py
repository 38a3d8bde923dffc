"""Training metrics on disk (metrics.jsonl) and the statistics results are reported with."""

from __future__ import annotations

import json
import math
from pathlib import Path

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


def mean_interval(values: list[float], z: float = Z95) -> tuple[float, float]:
    """Normal-approximation 95% interval for a mean (sample standard deviation)."""
    n = len(values)
    if n < 2:
        return (values[0], values[0]) if n else (0.0, 0.0)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(var / n)
    return mean - half, mean + half


def results_table(results: dict, title: str = "") -> str:
    """Markdown table of every {"value", "ci95"} metric in `results` (nested one level)."""
    rows = []
    for section, metrics in results.items():
        if not isinstance(metrics, dict):
            continue
        for name, m in metrics.items():
            if isinstance(m, dict) and "value" in m:
                lo, hi = m.get("ci95", (None, None))
                ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else ""
                rows.append(f"| {section} | {name} | {m['value']:.3f} | {ci} | {m.get('n', '')} |")
    head = [f"### {title}", ""] if title else []
    return "\n".join(head + ["| eval | metric | value | 95% CI | n |", "|---|---|---|---|---|"] + rows)


def metrics_logger(run_dir: str):
    """A transformers TrainerCallback appending each log record to run_dir/metrics.jsonl."""
    from transformers import TrainerCallback

    path = Path(run_dir) / "metrics.jsonl"

    class MetricsLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            with path.open("a") as f:
                f.write(json.dumps(record, default=float) + "\n")

    return MetricsLogger()
