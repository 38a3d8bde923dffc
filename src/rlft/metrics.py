"""Training metrics on disk (metrics.jsonl); the statistics results are reported with are rlft.stats."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

from rlft.errors import UserError
from rlft.rundir import checkpoints

class MetricsLogger(TrainerCallback):
    """Appends each log record to run_dir/metrics.jsonl, and stops the run at a non-finite loss or
    gradient norm.

    The check runs at every log (logging_steps); the Trainer saves a step's checkpoint after its
    log, so no checkpoint is written after a non-finite log: the newest one is the last good state,
    kept. Every rank stops, not only rank 0.
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
                            "lower stage.trainer.learning_rate and start over with overwrite=true (resume=true "
                            "continues the checkpoint's own learning-rate schedule)")
