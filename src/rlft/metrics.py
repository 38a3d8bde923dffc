"""Training metrics on disk (metrics.jsonl) and on the console (one line per log step); the
statistics results are reported with are rlft.stats."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

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


# (key in the log record, label, format): the numbers that say how training goes, in this order
SHOWN = [("loss", "loss", ".4g"), ("reward", "reward", ".3f"), ("kl", "kl", ".3g"), ("rewards/margins", "margin", ".3f"),
         ("rewards/accuracies", "acc", ".3f"), ("grad_norm", "grad", ".3g"), ("learning_rate", "lr", ".2e")]


def log_line(stage: str, step: int, total: int, logs: dict, tokens_per_s: float | None, eta_s: float | None) -> str:
    """A log record as a person reads it: step/total, the SHOWN numbers it has, tokens/s, ETA.

        rlft sft  step 10/100  loss 1.464  grad 5.22  lr 1.80e-04  4,113 tok/s  ETA 14m10s
    """
    parts = [f"rlft {stage}", f"step {step}/{total}"]
    parts += [f"{label} {logs[key]:{fmt}}" for key, label, fmt in SHOWN
              if isinstance(logs.get(key), (int, float)) and not isinstance(logs[key], bool)]
    if tokens_per_s is not None:
        parts.append(f"{tokens_per_s:,.0f} tok/s")
    if eta_s is not None:
        parts.append(f"ETA {duration(eta_s)}")
    return "  ".join(parts)


def duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class StageProgress(ProgressCallback):
    """HF's progress bar named after the stage, with one line per log record (log_line) where HF
    writes the record's dict; with bar=False (disable_tqdm) the lines alone. Tokens/s and the ETA
    count from this run's first step (a resumed run's too), so loading is not in them."""

    def __init__(self, stage: str, bar: bool = True):
        super().__init__()
        self.stage, self.bar = stage, bar
        self.start, self.first_step, self.first_tokens = time.monotonic(), 0, None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.bar:
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                self.training_bar.set_description(f"rlft {self.stage}")
        self.start, self.first_step, self.first_tokens = time.monotonic(), state.global_step, None

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar:
            super().on_step_end(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar and self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (state.is_world_process_zero and logs):
            return
        elapsed = time.monotonic() - self.start
        if "train_runtime" in logs:  # the closing summary record
            loss = logs.get("train_loss")
            line = (f"rlft {self.stage}  done: {state.global_step} steps in {duration(logs['train_runtime'])}"
                    + (f", train_loss {loss:.4g}" if isinstance(loss, (int, float)) else ""))
        else:
            tokens, rate = logs.get("num_tokens"), None
            if isinstance(tokens, (int, float)):
                if self.first_tokens is None:
                    self.first_tokens = (tokens, elapsed)
                elif elapsed > self.first_tokens[1]:
                    rate = (tokens - self.first_tokens[0]) / (elapsed - self.first_tokens[1])
            done = state.global_step - self.first_step
            eta = elapsed / done * (state.max_steps - state.global_step) if done > 0 else None
            line = log_line(self.stage, state.global_step, state.max_steps, logs, rate, eta)
        if self.bar and self.training_bar is not None:
            self.training_bar.write(line)
        else:
            print(line, flush=True)


def use_stage_progress(trainer, stage: str) -> None:
    """Swap the trainer's printing callback (HF's bar, or its printer under disable_tqdm) for StageProgress."""
    for hf, bar in ((ProgressCallback, True), (PrinterCallback, False)):
        if any(type(cb) is hf for cb in trainer.callback_handler.callbacks):
            trainer.remove_callback(hf)
            trainer.add_callback(StageProgress(stage, bar))
