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
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlft import config, report, rundir
from rlft.errors import Stopped, UserError


class _AlreadyTrained(Exception):
    """Resumed from the last step's checkpoint: nothing left to train."""


# this process's run: set by `train`, read by the signal handler and the callback
_run = SimpleNamespace(pid=None, run_dir=None, pending=0, training=False, after_training=False,
                       weights_bytes=None, checkpoint_bytes=None)


def train(overrides: list[str], config_dir: str | None = None, print_only: bool = False) -> int:
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
        config.spread_batch(cfg)  # the configured batch per optimizer step on any number of processes
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
        print(f"### {cfg.run_name} ({cfg.run_dir})\n")
        print(report.markdown(report.rows([{"name": cfg.run_name, "stage": cfg.stage.name, "results": results}])))
    return 0


def fit(trainer, cfg) -> None:
    """`trainer.train()` for a stage: from the checkpoint `resume=true` continues from
    (rundir.resume_checkpoint, the same on every rank), stopping at a signal with a checkpoint."""
    trainer.add_callback(_run_control(trainer))
    try:
        trainer.train(resume_from_checkpoint=rundir.resume_checkpoint(cfg))
    except _AlreadyTrained:
        pass  # the checkpoint's weights are loaded; transformers would train one step past max_steps
    finally:
        _run.training, _run.after_training = False, True
    check_finite(trainer, cfg)


def batch_facts(args) -> dict:
    """The model card's batch: per device x accumulation x processes = sequences per optimizer step
    (the accumulation is already each process's share: config.spread_batch)."""
    per_device, accumulation, n = args.per_device_train_batch_size, args.gradient_accumulation_steps, args.world_size
    return {"batch": f"{per_device} per device x {accumulation} accumulation x {n} process{'es' if n > 1 else ''} = "
                     f"{per_device * accumulation * n} per optimizer step", "world_size": n}


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


def pipeline(overrides: list[str], config_dir: str | None = None, dry_run: bool = False,
             launcher: str | None = None, note: str | None = None) -> int:
    """`rlft pipeline experiment=NAME [KEY=VALUE ...] [TAG:KEY=VALUE ...]`: the experiment's steps in
    order, then `rlft report`. Every multi-step recipe is one (make demo, tiny-if, paper-math, paper-if).

    The experiment lists its steps under `pipeline:`: each a `name`, its `overrides` (an experiment,
    the runs it starts from) and optional `tags` (e.g. the data it trains on). It may set `report:`
    (`runs`: the steps reported, default all; `out`: default <run_dir>/report; `note`: a line above
    the tables, which --note replaces):

        pipeline:
          - name: sft
            overrides: [experiment=paper_math_sft]
            tags: [warmstart]
          - name: rloo
            overrides: [experiment=paper_math_rloo, "init_from=${run_dir}/sft/model"]
        report: {runs: [rloo], out: "${run_dir}/rloo_report"}

    Each step is `rlft train <its overrides> <your KEY=VALUE> <your TAG:KEY=VALUE for its tags>
    run_dir=<run_dir>/<name>`:
    - KEY=VALUE goes to every step, except keys the pipeline experiment adds itself (`report.*`, a
      recipe's own switch such as paper_if's `evaluation=`): those configure the pipeline;
    - TAG:KEY=VALUE goes to the steps tagged TAG: a step's tags are its stage (sft, rm, dpo, rloo,
      bon, winrate) plus its `tags:` (make's SFT_ARGS become sft:..., WARMSTART_ARGS warmstart:...);
      a TAG no step has is an error;
    - steps find earlier steps' outputs by interpolation (`${run_dir}/sft/model`); recipes whose
      cells keep run dirs of their own (runs/paper_math_sft) set `run_dir: ${runs_dir}`.
    Every step is composed before the first one runs, so a bad override stops the pipeline at once.
    A step whose run dir is DONE is skipped and one with checkpoints resumes (resume=true), so an
    interrupted pipeline continues where it stopped. `launcher` ("accelerate launch --config_file
    configs/accelerate/multi_gpu.yaml -m") runs each training step as `<launcher> rlft train ...`, a
    process of its own; evaluations (stages that train nothing) run in this process. `dry_run`
    prints each step's command (DONE ones marked) and the report's, and runs nothing.
    """
    tagged = [m.groups() for m in map(_TAGGED.fullmatch, overrides) if m]
    plain = [o for o in overrides if not _TAGGED.fullmatch(o)]
    cfg = config.compose(plain, config_dir)
    if not cfg.get("pipeline"):
        raise UserError("rlft pipeline needs an experiment with a `pipeline:` list of steps "
                        f"(e.g. experiment=tiny_math); got run_name={cfg.run_name!r}")
    own = set(cfg) - set(config.compose([], config_dir))  # pipeline, report, a recipe's switches
    forward = [o for o in plain if not o.startswith("experiment=")
               and re.split(r"[.=/@]", o.lstrip("+~"), maxsplit=1)[0] not in own]
    run_dir = Path(cfg.run_dir)

    plan = []  # (name, tags, trains, overrides)
    for step in OmegaConf.to_container(cfg.pipeline, resolve=True):
        args = [*step["overrides"], *forward]
        stage = _compose_step(step["name"], args, config_dir).stage.name
        tags = {stage, *step.get("tags", [])}
        mine = [o for tag, o in tagged if tag in tags]
        if mine:
            args += mine
            _compose_step(step["name"], args, config_dir)
        plan.append((step["name"], tags, stage in config.TRAINED, args))
    every_tag = set().union(*(tags for _, tags, _, _ in plan))
    for tag, override in tagged:
        if tag not in every_tag:
            raise UserError(f"{tag}:{override}: no step of pipeline {cfg.run_name!r} is tagged {tag!r} "
                            f"(its steps' stages and tags: {', '.join(sorted(every_tag))})")
    if not launcher and not dry_run and any(trains for *_, trains, _ in plan):
        config.refuse_data_parallel(f"rlft pipeline experiment={cfg.run_name}", '--launcher "accelerate launch '
                                    '--config_file configs/accelerate/multi_gpu.yaml --num_processes {n} -m" (make '
                                    'paper-*: ACCELERATE="accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m")')
    names = [name for name, *_ in plan]
    wanted = OmegaConf.to_container(cfg.report, resolve=True) if cfg.get("report") else {}
    runs = wanted.get("runs") or names
    for name in runs:
        if name not in names:
            raise UserError(f"report.runs: {name!r} is not a step of pipeline {cfg.run_name!r} ({', '.join(names)})")
    out = wanted.get("out") or str(run_dir / "report")
    note = wanted.get("note") if note is None else note

    for name, _, trains, args in plan:
        step_dir = run_dir / name
        done = (step_dir / "DONE").exists()
        resume = ["resume=true"] if not done and list((step_dir / "checkpoints").glob("checkpoint-*")) else []
        argv = [*args, f"run_dir={step_dir}", *resume]
        command = ["rlft", "train", *(["--config-dir", config_dir] if config_dir else []), *argv]
        if launcher and trains:
            command = [*shlex.split(launcher), *command]
        if dry_run:
            print(shlex.join(command) + ("   # DONE: skipped" if done else ""))
        elif done:
            print(f"rlft pipeline: {name}: done, skipped ({step_dir})")
        else:
            print(f"rlft pipeline: {name}: running ({step_dir})", flush=True)
            if not (launcher and trains):
                train(argv, config_dir=config_dir)
            elif code := subprocess.run(command).returncode:
                print(f"rlft pipeline: {name}: `{shlex.join(command)}` exited with {code}; "
                      "rerun the pipeline to continue from it", file=sys.stderr)
                return code
    dirs = [str(run_dir / name) for name in runs]
    if dry_run:
        print(shlex.join(["rlft", "report", *dirs, "--out", out, *(["--note", note] if note else [])]))
    elif rundir.is_main_process():
        print(report.report(dirs, out, note))
        print(f"plots and CSV: {out}")
    return 0


# TAG:KEY=VALUE: an override for the pipeline steps tagged TAG (Hydra keys hold no ':')
_TAGGED = re.compile(r"(\w+):([^=:]+=.*)", re.S)


def _compose_step(name: str, overrides: list[str], config_dir: str | None):
    try:
        return config.compose(overrides, config_dir)
    except UserError as e:
        raise UserError(f"pipeline step {name!r}: {e}") from None
