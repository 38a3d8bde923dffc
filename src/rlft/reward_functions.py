"""Reward functions for stage=rloo, in TRL's callable contract:
f(prompts, completions, completion_ids, **dataset_columns) -> list[float | None], None = unscorable.

Each is built from the `reward` config group (configs/reward/), which names them and their weights:

    reward=countdown   the TinyZero verifier (0 / 0.1 / 1) on the dataset's nums and target
    reward=ifcheck     the rule judge of the offline instruction task (fraction of constraints met)
    reward=ifeval      IFEval's checkers (fraction of instructions followed)
                       (all three: task_reward, the task's verdict through rlft.tasks' contract)
    reward=reward_model  a trained reward model (stage=rm's model/) through rlft.reward_models' scoring
                       contract, so it sees exactly the tokens it was trained on (TRL's own path re-tokenises)

`guarded` wraps every one: a function that raises, returns NaN/inf or the wrong count marks the
batch's samples unscorable (they leave the RLOO baseline and get advantage 0) and counts them
in the metrics as unscorable/<name>; the run goes on.
"""

from __future__ import annotations

import logging
import math

from rlft import reward_models
from rlft.config import build
from rlft.errors import UserError
from rlft.tasks import Task

logger = logging.getLogger(__name__)


def completion_text(completion) -> str:
    """A completion as text: conversational completions are [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def task_reward(task: Task):
    """A task's verdict score (rlft.tasks) of each completion, read from the prompt dataset's columns
    the task names (Countdown: nums, target; ifcheck: constraints; IFEval: instruction_id_list, kwargs).
    The task is built with the reward, so a bad rule fails before the first batch."""

    def score(prompts, completions, **columns):
        missing = task.missing_columns(columns)
        if missing:
            raise ValueError(f"the prompt dataset has no {', '.join(missing)} column for the {task.name} task")
        rows = [dict(zip(task.columns, values)) for values in zip(*(columns[c] for c in task.columns))]
        return [task.verdict(completion_text(c), row).score for c, row in zip(completions, rows, strict=True)]

    return score


def reward_model_reward(path: str, fmt: str = "chat", max_length: int = 1024, batch_size: int = 32,
                        dtype: str = "float32"):
    """A trained sequence-classification reward model (on the accelerator: reward_models.load_scorer)
    scored through rlft.reward_models.score."""
    model, tokenizer = reward_models.load_scorer(path, fmt, dtype)

    def reward_model(prompts, completions, **kwargs):
        prompts = [p if isinstance(p, list) else [{"role": "user", "content": str(p)}] for p in prompts]
        return reward_models.score(model, tokenizer, prompts, [completion_text(c) for c in completions], fmt,
                                   max_length, batch_size)

    return reward_model


def guarded(name: str, fn, patience: int | None = None):
    """`fn` that never crashes a run on a bad batch: exceptions, non-finite values and wrong counts
    become None (unscorable), counted in the metrics as unscorable/<name>. A reward that scores
    nothing at all, though, would train to DONE on zeros: with `patience`, `patience` batches in a
    row without one scorable sample stop the run with one line naming the reward and what it gave."""
    empty = 0  # batches in a row without a scorable sample

    def call(prompts, completions, **kwargs):
        nonlocal empty
        n = len(completions)
        why = None
        try:
            values = list(fn(prompts, completions, **kwargs))
            if len(values) != n:
                raise ValueError(f"returned {len(values)} rewards for {n} completions")
        except Exception as e:  # a reward function must not end a long run: the batch goes unscored instead
            logger.warning("reward %s failed on a batch of %d: %s: %s", name, n, type(e).__name__, e)
            values, why = [None] * n, f"{type(e).__name__}: {e}"
        out = [float(v) if v is not None and math.isfinite(float(v)) else None for v in values]
        if "log_metric" in kwargs:
            kwargs["log_metric"](f"unscorable/{name}", sum(v is None for v in out))
        empty = empty + 1 if n and all(v is None for v in out) else 0
        if patience and empty >= patience:
            shown = why or f"{sorted({str(v) for v in values})[:3]} for all {n} samples"
            raise UserError(f"reward {name} scored no sample in {empty} batches in a row (last: {shown}); "
                            "nothing would be learned: check the reward and the prompt dataset's columns "
                            f"(stage.unscorable_patience={patience} sets how many batches)")
        return out

    call.__name__ = name  # TRL names the reward's metrics after the callable
    return call


def from_config(reward_cfg, patience: int | None = None) -> tuple[list[str], list, list[float]]:
    """The `reward` group's functions, each guarded (with `patience`, see guarded), and their weights,
    in config order."""
    names = list(reward_cfg.funcs)
    return (names, [guarded(name, build(reward_cfg.funcs[name]), patience) for name in names],
            [float(reward_cfg.weights[name]) for name in names])


def selector(reward_cfg):
    """The `reward` group as a best-of-N selector (select=reward in stage=bon and stage=winrate): keys =
    the weighted sum of its (guarded) functions; an unscorable sample gets -inf, so it is picked only
    when all are."""
    _, funcs, weights = from_config(reward_cfg)

    def keys(prompts, responses, rows):
        columns = {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
        columns.pop("prompt", None)
        per_func = [f(prompts, responses, **columns) for f in funcs]
        return [sum(w * v for w, v in zip(weights, values)) if all(v is not None for v in values) else float("-inf")
                for values in zip(*per_func)]

    return keys
