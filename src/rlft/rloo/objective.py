"""RLOO's objective as configured (stage.algorithm.objective, pass_k, pass_k_schedule), checked
without trl: config.validate calls it before any model loads (`rlft train` imports no trainer to
refuse a bad k), and rlft.rloo.RLOOTrainer builds its schedule with it."""

from __future__ import annotations

from rlft.errors import UserError


def pass_k_schedule_from(objective: str, pass_k, schedule, num_generations: int) -> list[tuple[int, int]] | None:
    """[(first step, k), ...] for objective="pass_at_k", None for "mean"; a bad value names its key."""
    key = "stage.algorithm"
    if objective not in ("mean", "pass_at_k"):
        raise UserError(f"{key}.objective: {objective!r} is not one of mean, pass_at_k")
    if objective == "mean":
        if pass_k is not None or schedule is not None:
            raise UserError(f"{key}.pass_k / pass_k_schedule need {key}.objective=pass_at_k")
        return None
    if (pass_k is None) == (schedule is None):
        raise UserError(f"{key}.objective=pass_at_k needs {key}.pass_k (a k) or {key}.pass_k_schedule "
                        "([[step, k], ...]), one of the two")
    name = f"{key}.pass_k" if schedule is None else f"{key}.pass_k_schedule"
    pairs = [(0, pass_k)] if schedule is None else [
        tuple(p) if hasattr(p, "__len__") and len(p) == 2 else (None, None) for p in schedule]
    for start, k in pairs:
        if not (isinstance(k, int) and 1 <= k <= num_generations):
            raise UserError(f"{name}: {k!r} is not an integer in 1..num_generations ({num_generations}): "
                            "pass@k is estimated from a prompt's num_generations samples")
        if not (isinstance(start, int) and start >= 0):
            raise UserError(f"{key}.pass_k_schedule: {start!r} is not a step (entries are [step, k])")
    starts = [start for start, _ in pairs]
    if starts[0] != 0 or starts != sorted(set(starts)):
        raise UserError(f"{key}.pass_k_schedule: steps {starts} must start at 0 and increase")
    return pairs
