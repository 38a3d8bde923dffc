"""`rlft train`: compose the config, validate it, then run the stage module named by stage.name.

The stage name equals its module name (rlft/stages/<name>.py); each stage's `main(cfg)` returns
(results, model-card facts), and the run dir is bracketed here so every stage gets the same
contract (rlft/rundir.py). Stages train through `fit`, which adds what every run needs:

- SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) while training: the step under way
  finishes, a checkpoint is saved at that optimizer-step boundary, one line says where, and the
  process exits 128 + the signal (143, 130); `resume=true` continues from it. A second signal, or
  one outside the training loop, stops at once (nothing new saved).
- a full disk while writing (a checkpoint, model/, metrics.jsonl, ...): one line naming the path,
  exit 2 (rundir.explain_write_failure).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from pathlib import Path
from types import SimpleNamespace


class Stopped(BaseException):
    """A signal ended the run (BaseException, like KeyboardInterrupt: no `except Exception` in a
    library swallows it). The CLI prints the message (rank 0) and exits with `exit_code`."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


class _AlreadyTrained(Exception):
    """Resumed from the last step's checkpoint: nothing left to train."""


# this process's run: set by `train`, read by the signal handler and the callback
_run = SimpleNamespace(pid=None, run_dir=None, pending=0, training=False, after_training=False,
                       weights_bytes=None, checkpoint_bytes=None)


def train(overrides: list[str], config_dir: str | None = None, print_only: bool = False) -> int:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from rlft import config, rundir
    from rlft.errors import UserError

    cfg = config.compose(overrides, config_dir)
    if cfg.get("pipeline"):
        raise UserError(f"experiment {cfg.run_name!r} is a pipeline of stages; run it with: rlft pipeline "
                        + " ".join(overrides))
    try:
        if print_only:
            print(OmegaConf.to_yaml(cfg, resolve=True), end="")
            return 0
        config.validate(cfg)
        OmegaConf.resolve(cfg)  # resolve once: every rank and every later read see the same values
    except OmegaConfBaseException as e:
        raise UserError(f"config: {str(e).splitlines()[0]}") from None
    stage = importlib.import_module(f"rlft.stages.{cfg.stage.name}")
    _run.__dict__.update(run_dir=Path(cfg.run_dir), pending=0, training=False, after_training=False,
                         weights_bytes=None, checkpoint_bytes=None)
    previous = _catch_signals()
    try:
        started = False
        rundir.start(cfg)
        started = True
        results, card = stage.main(cfg)
        rundir.finish(cfg, results, card)
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
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if results and rundir.is_main_process():
        from rlft.report import markdown, rows

        print(f"### {cfg.run_name} ({cfg.run_dir})\n")
        print(markdown(rows([{"name": cfg.run_name, "stage": cfg.stage.name, "results": results}])))
    return 0


def fit(trainer, cfg) -> None:
    """`trainer.train()` for a stage: from the checkpoint `resume=true` continues from
    (rundir.resume_checkpoint, the same on every rank), stopping at a signal with a checkpoint."""
    from rlft import rundir

    trainer.add_callback(_run_control(trainer))
    try:
        trainer.train(resume_from_checkpoint=rundir.resume_checkpoint(cfg))
    except _AlreadyTrained:
        pass  # the checkpoint's weights are loaded; transformers would train one step past max_steps
    finally:
        _run.training, _run.after_training = False, True


def _catch_signals() -> dict:
    """Install the SIGTERM/SIGINT handler (main thread only); returns the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    _run.pid = os.getpid()
    return {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}


def _on_signal(signum, frame) -> None:
    from rlft.rundir import notice

    if _run.pid != os.getpid():  # a forked child (a DataLoader worker) inherited the handler: default action
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    name = signal.Signals(signum).name
    if _run.training and not _run.pending:
        _run.pending = signum
        notice(f"{name}: saving a checkpoint at the end of this optimizer step, then stopping "
               f"({name} again stops at once, unsaved)", in_signal_handler=True)
        return
    raise Stopped(signum, _stopped(signum))


def _stopped(signum: int, checkpoint: Path | None = None, step: int | None = None) -> str:
    """The line a signal ends the run with: where the checkpoint is and how to continue."""
    from rlft.rundir import checkpoints, is_complete_checkpoint

    name = signal.Signals(signum).name
    if checkpoint is not None:
        return (f"{name}: stopped at step {step}; checkpoint saved to {checkpoint}; "
                "to continue, rerun the same command with resume=true")
    kept = [c for c in checkpoints(_run.run_dir) if is_complete_checkpoint(c)] if _run.run_dir else []
    if kept:
        return (f"{name}: stopped before the run finished; nothing saved since {kept[-1]}: "
                "to continue from it, rerun the same command with resume=true")
    return f"{name}: stopped before the run finished; no checkpoint was saved (a rerun starts over)"


def _run_control(trainer):
    """The TrainerCallback behind `fit`."""
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
                params = list(model.parameters())
                numel = [getattr(p, "ds_numel", p.numel()) for p in params]
                _run.weights_bytes = sum(n * p.element_size() for n, p in zip(numel, params))
                trainable = [n for n, p in zip(numel, params) if p.requires_grad]
                saved = sum(n * p.element_size() for n, p in zip(numel, params) if p.requires_grad) \
                    if hasattr(model, "peft_config") else _run.weights_bytes
                _run.checkpoint_bytes = saved + 2 * 4 * sum(trainable)  # weights + AdamW's two fp32 moments
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
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return signum
    import torch

    flag = torch.tensor([signum], device=args.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def pipeline(overrides: list[str], config_dir: str | None = None) -> int:
    """`rlft pipeline experiment=NAME [key=value ...]`: the experiment's stages in order.

    Each step is `rlft train <step overrides> <your overrides> run_dir=<run_dir>/<step name>`;
    steps read earlier steps' model dirs by interpolation (`init_from: ${run_dir}/sft/model`). A
    step whose run dir is DONE is skipped and one with checkpoints resumes, so an interrupted
    pipeline continues where it stopped. Ends with `rlft report` over the steps.
    """
    from omegaconf import OmegaConf

    from rlft import config, report, rundir
    from rlft.errors import UserError

    cfg = config.compose(overrides, config_dir)
    if not cfg.get("pipeline"):
        raise UserError("rlft pipeline needs an experiment with a `pipeline:` list of steps "
                        f"(e.g. experiment=tiny_math); got run_name={cfg.run_name!r}")
    steps = OmegaConf.to_container(cfg.pipeline, resolve=True)
    extra = [o for o in overrides if not o.startswith("experiment=")]
    dirs = []
    for step in steps:
        step_dir = Path(cfg.run_dir) / step["name"]
        dirs.append(str(step_dir))
        if (step_dir / "DONE").exists():
            print(f"rlft pipeline: {step['name']}: done, skipped ({step_dir})")
            continue
        resume = ["resume=true"] if list((step_dir / "checkpoints").glob("checkpoint-*")) else []
        print(f"rlft pipeline: {step['name']}: running ({step_dir})")
        train([*step["overrides"], *extra, f"run_dir={step_dir}", *resume], config_dir=config_dir)
    if rundir.is_main_process():
        print(report.report(dirs, str(Path(cfg.run_dir) / "report")))
        print(f"plots and CSV: {Path(cfg.run_dir) / 'report'}")
    return 0
