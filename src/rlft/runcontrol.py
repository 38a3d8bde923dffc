"""Run control: what every training run gets, whatever its stage.

- `running(cfg)` brackets a run: the run dir started and released (rlft.rundir), and
  - SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) while training: the step under way
    finishes, a checkpoint is saved at that optimizer-step boundary, one line says where, and the
    process exits 128 + the signal (143, 130); `resume=true` continues from it. A second signal, or
    one outside the training loop, stops at once (nothing new saved);
  - a full disk while writing (a checkpoint, model/, metrics.jsonl, TensorBoard's events): one
    line naming the path, exit 2 (rundir.explain_write_failure).
- `fit(trainer, cfg)` trains: resume, the signal callback (every rank agrees on the step), the
  console line per log step, and no non-finite weights saved (check_finite).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from rlft import preflight, rundir
from rlft.errors import Stopped, UserError


class _AlreadyTrained(Exception):
    """Resumed from the last step's checkpoint: nothing left to train."""


# this process's run: set by `train`, read by the signal handler and the callback
_run = SimpleNamespace(pid=None, run_dir=None, pending=0, training=False, after_training=False,
                       weights_bytes=None, checkpoint_bytes=None)


@contextmanager
def running(cfg):
    """One run of a stage: the run dir started (rundir.start) and released, signals caught, and a
    write that fails for a full disk turned into one line (rundir.explain_write_failure)."""
    _run.__dict__.update(run_dir=Path(cfg.run_dir), pending=0, training=False, after_training=False,
                         weights_bytes=None, checkpoint_bytes=None)
    previous = _catch_signals()
    thread_hook, threading.excepthook = threading.excepthook, _quiet_full_disk(threading.excepthook)
    started = False
    try:
        rundir.start(cfg)
        started = True
        yield
    except (UserError, Stopped):
        if started:
            sys.stderr.write("\n")  # a progress bar may have left the cursor mid-line: the error gets its own line
        raise
    except Exception as e:
        try:
            error = rundir.explain_write_failure(e, cfg.run_dir, _run.after_training,
                                                 _run.weights_bytes, _run.checkpoint_bytes)
        except Exception:  # never hide the original failure behind one in explaining it
            error = None
        if error is None:
            raise
        sys.stderr.write("\n")
        raise error from None
    finally:
        rundir.release(cfg)
        threading.excepthook = thread_hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)

def fit(trainer, cfg) -> None:
    """`trainer.train()` for a stage: from the checkpoint `resume=true` continues from
    (rundir.resume_checkpoint, the same on every rank), stopping at a signal with a checkpoint."""
    from rlft.metrics import use_stage_progress  # the stage imported it: no cost here, none at a config error

    trainer.add_callback(_run_control(trainer))
    if preflight.active():  # rlft pipeline --preflight: one optimizer step, timed
        trainer.add_callback(preflight.callback(trainer))
    use_stage_progress(trainer, cfg.stage.name)  # one line per log step under a bar named after the stage
    if trainer.args.learning_rate == 0 and rundir.is_main_process():  # legal (the start model through the
        print(f"rlft: {ZERO_LR}", file=sys.stderr, flush=True)       # training path), but never silent
    try:
        trainer.train(resume_from_checkpoint=rundir.resume_checkpoint(cfg))
    except _AlreadyTrained:
        pass  # the checkpoint's weights are loaded; transformers would train one step past max_steps
    finally:
        _run.training = False
    _run.after_training = True  # only once training returned: a write that fails inside it is not model/'s
    check_finite(trainer, cfg)


def checkpoint_bytes() -> int | None:
    """The bytes one checkpoint of this run takes (weights, or the adapter, and AdamW's moments)."""
    return _run.checkpoint_bytes


def batch_facts(args) -> dict:
    """The model card's batch: per device x accumulation x processes = sequences per optimizer step
    (the accumulation is already each process's share: config.spread_batch)."""
    per_device, accumulation, n = args.per_device_train_batch_size, args.gradient_accumulation_steps, args.world_size
    return {"batch": f"{per_device} per device x {accumulation} accumulation x {n} process{'es' if n > 1 else ''} = "
                     f"{per_device * accumulation * n} per optimizer step", "world_size": n,
            **({"learning_rate": ZERO_LR} if args.learning_rate == 0 else {})}


ZERO_LR = "stage.trainer.learning_rate=0: the optimizer steps leave every weight as it started"


def check_finite(trainer, cfg) -> None:
    """Stop before model/ is written if any trained weight is NaN or inf. The loss guard
    (metrics.MetricsLogger) reads only logging steps, so a run that diverges between logs, or ends
    before its first, would otherwise save garbage as DONE (and replace the run overwrite=true set
    aside). One pass over the parameters; every rank stops together (each checks its own shards)."""
    import torch

    bad, total, step = [], 0, trainer.state.global_step
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            data = getattr(p, "ds_tensor", p)  # ZeRO-3: this rank's shard
            total += 1
            if data.numel() and not torch.isfinite(data).all():
                bad.append(name)
    if not _agree(int(bool(bad)), trainer.args):
        return
    kept = rundir.previous_dir(cfg.run_dir)
    where = f"; the finished run it replaces is kept at {kept}" if kept.is_dir() else ""
    names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    what = (f"{len(bad)} of {total} tensors hold NaN or inf ({names})" if bad
            else "another rank's weights hold NaN or inf")
    raise UserError(f"non-finite weights after step {step}: {what}; nothing saved, the run is not DONE{where}; "
                    "lower stage.trainer.learning_rate and start over with overwrite=true")


def _quiet_full_disk(hook):
    """threading.excepthook that leaves a full disk in a writer thread (TensorBoard's) to the main
    thread, which meets the same error at its next write and says it in one line."""
    def excepthook(args) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in rundir.FULL_DISK_ERRNOS):
            hook(args)
    return excepthook


def _catch_signals() -> dict:
    """Install the SIGTERM/SIGINT handler (main thread only); returns the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    _run.pid = os.getpid()
    return {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}


def _on_signal(signum, frame) -> None:
    if _run.pid != os.getpid():  # a forked child (a DataLoader worker) inherited the handler: default action
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    name = signal.Signals(signum).name
    if _run.training and not _run.pending:
        _run.pending = signum
        rundir.notice(f"{name}: saving a checkpoint at the end of this optimizer step, then stopping "
               f"({name} again stops at once, unsaved)", in_signal_handler=True)
        return
    raise Stopped(signum, _stopped(signum))


def _stopped(signum: int, checkpoint: Path | None = None, step: int | None = None) -> str:
    """The line a signal ends the run with: where the checkpoint is and how to continue."""
    name = signal.Signals(signum).name
    if checkpoint is not None:
        return (f"{name}: stopped at step {step}; checkpoint saved to {checkpoint}; "
                "to continue, rerun the same command with resume=true")
    kept = ([c for c in rundir.checkpoints(_run.run_dir) if rundir.is_complete_checkpoint(c)]
            if _run.run_dir else [])
    if kept:
        return (f"{name}: stopped before the run finished; nothing saved since {kept[-1]}: "
                "to continue from it, rerun the same command with resume=true")
    return f"{name}: stopped before the run finished; no checkpoint was saved (a rerun starts over)"


def _run_control(trainer):
    """The TrainerCallback behind `fit`."""
    # transformers takes ~6 s to import: `rlft train --cfg` (which imports this module) never needs it
    from transformers import TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    def stop(signum: int, message: str):
        for cb in trainer.callback_handler.callbacks:  # close the progress bar now, so the line comes last
            if isinstance(cb, ProgressCallback) and cb.training_bar is not None:
                cb.training_bar.close()
                cb.training_bar = None
        raise Stopped(signum, message)

    class RunControl(TrainerCallback):
        signum = 0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            _run.training = True
            if model is not None:
                sizes = [(getattr(p, "ds_numel", p.numel()), p.element_size(), p.requires_grad)
                         for p in model.parameters()]  # (elements, bytes each, trained)
                _run.weights_bytes = sum(n * b for n, b, _ in sizes)
                trained = [(n, b) for n, b, grad in sizes if grad]
                saved = sum(n * b for n, b in trained) if hasattr(model, "peft_config") else _run.weights_bytes
                _run.checkpoint_bytes = saved + 2 * 4 * sum(n for n, _ in trained)  # + AdamW's two fp32 moments
            if state.global_step >= state.max_steps > 0:
                raise _AlreadyTrained

        def on_step_end(self, args, state, control, **kwargs):
            signum = _agree(_run.pending, args)
            if signum:  # save at this step boundary (on every rank: they agree), then stop in on_save
                self.signum = signum
                control.should_save = True

        def on_save(self, args, state, control, **kwargs):
            if self.signum:
                checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                stop(self.signum, _stopped(self.signum, checkpoint, state.global_step))

        def on_train_end(self, args, state, control, **kwargs):
            _run.training, _run.after_training = False, True
            if _run.pending:  # the signal came after the last step ended: nothing to save it at
                stop(_run.pending, _stopped(_run.pending))

    return RunControl()


def _agree(signum: int, args) -> int:
    """The signal any rank got (ranks may get it at different steps; all must save at the same one)."""
    # torch (~1.5 s) only once training runs: a config error from `rlft train` comes before it
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return signum
    flag = torch.tensor([signum], device=args.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())
