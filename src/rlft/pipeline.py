"""`rlft pipeline experiment=NAME`: an experiment's steps in order, each one `rlft train`, then
`rlft report` (every multi-step recipe: make demo, real-math, real-if, tiny-if, paper-math, paper-if)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlft import config, preflight, report, rundir
from rlft.errors import UserError
from rlft.train import train


def pipeline(overrides: list[str], config_dir: str | None = None, dry_run: bool = False,
             launcher: str | None = None, note: str | None = None, preflight_dir: str | None = None) -> int:
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

    A step with `each: [a, b, ...]` stands for one step per item, `{each}` in its name, overrides
    and tags replaced by the item (paper_if: one win-rate step per policy):

          - each: [sft, dpo]
            name: "{each}_winrate"
            overrides: [experiment=paper_if_winrate, "init_from=${run_dir}/{each}/model"]

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
    `preflight_dir` runs every step in that dir instead, each cut to one optimizer step and a handful
    of rows, and prints what the whole recipe will cost on this box (rlft.preflight) for the report.
    """
    tagged = [m.groups() for m in map(_TAGGED.fullmatch, overrides) if m]
    plain = [o for o in overrides if not _TAGGED.fullmatch(o)]
    # --preflight: every step's run dir (and the inputs later steps read) under the pre-flight's dir
    moved = [f"run_dir={Path(preflight_dir).resolve()}"] if preflight_dir else []
    experiment = [o for o in plain if o.startswith("experiment=")]
    base = config.compose(experiment, config_dir)
    own = set(base) - set(config.compose([], config_dir))  # pipeline, report, a recipe's switches
    # the pipeline composes with its own keys and the root config's; a key only the steps know
    # (reward_model.format=flat) goes to the steps alone
    cfg = config.compose([o for o in plain if o in experiment or _root_key(o) in own or _in(base, o)] + moved,
                         config_dir)
    if not cfg.get("pipeline"):
        raise UserError("rlft pipeline needs an experiment with a `pipeline:` list of steps "
                        f"(e.g. experiment=tiny_math); got run_name={cfg.run_name!r}")
    forward = [o for o in plain if o not in experiment and _root_key(o) not in own]
    run_dir = Path(cfg.run_dir)
    if preflight_dir and not dry_run:
        preflight.prepare(run_dir)

    plan, recipe_batches = [], {}  # (name, tags, trains, overrides, done); every step validated before the first runs
    for step in _each(OmegaConf.to_container(cfg.pipeline, resolve=True)):
        args = [*step["overrides"], *forward]
        composed = _compose_step(step["name"], args, config_dir)
        stage, trains = composed.stage.name, config.trained_group(composed) is not None
        tags = {stage, *step.get("tags", [])}
        args += [o for tag, o in tagged if tag in tags]
        step_dir = run_dir / step["name"]
        step_cfg = _check_step(step["name"], [*args, f"run_dir={step_dir}"], config_dir)
        if trains:  # the one-process recipe's batch, before a launcher spreads it
            trainer = step_cfg.stage.trainer
            recipe_batches[step["name"]] = (trainer.per_device_train_batch_size
                                                 * trainer.get("gradient_accumulation_steps", 1))
        done = (step_dir / "DONE").exists() and not _changed_since_done(step["name"], step_cfg, step_dir, launcher)
        if done and (inputs := _rerun_inputs(args, [(n, run_dir / n) for n, *_, d in plan if not d])):
            # a DONE step built on a step that runs again is stale: it reruns after it (kept aside till DONE)
            print(f"rlft pipeline: {step['name']}: reruns, its input {inputs} runs again", flush=True)
            done, args = False, [*args, "overwrite=true"]
        plan.append((step["name"], tags, trains, args, done))
    every_tag = set().union(*(tags for _, tags, *_ in plan))
    for tag, override in tagged:
        if tag not in every_tag:
            raise UserError(f"{tag}:{override}: no step of pipeline {cfg.run_name!r} is tagged {tag!r} "
                            f"(its steps' stages and tags: {', '.join(sorted(every_tag))})")
    if not launcher and not dry_run and any(trains for _, _, trains, *_ in plan):
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
    if preflight_dir and not dry_run:
        return _preflight(plan, run_dir, launcher, config_dir, recipe_batches)

    for name, _, trains, args, done in plan:
        step_dir = run_dir / name
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


def _preflight(plan, run_dir: Path, launcher: str | None, config_dir: str | None, recipe_batches: dict) -> int:
    """Every step cut short in run_dir (rlft.preflight), then the table; 1 when a cell would not go.
    The steps' models are deleted once the table is made: only the measurements stay."""
    failed, previous = None, os.environ.get(preflight.ENV)
    os.environ[preflight.ENV] = "1"  # this process's steps and launched ones measure themselves
    try:
        for name, _, trains, args, _ in plan:
            argv = [*args, f"run_dir={run_dir / name}"]
            print(f"rlft pipeline --preflight: {name}", flush=True)
            try:
                if launcher and trains:
                    command = [*shlex.split(launcher), "rlft", "train",
                               *(["--config-dir", config_dir] if config_dir else []), *argv]
                    if code := subprocess.run(command).returncode:
                        raise UserError(f"`{shlex.join(command)}` exited with {code}")
                else:
                    train(argv, config_dir=config_dir)
            except (UserError, RuntimeError) as e:  # a refusal, CUDA out of memory: the cell does not go
                failed = (name, str(e).splitlines()[0] if str(e) else type(e).__name__)
                break
    finally:
        if previous is None:
            os.environ.pop(preflight.ENV, None)
        else:
            os.environ[preflight.ENV] = previous
    records = [{**json.loads((run_dir / name / "preflight.json").read_text()), "step": name} for name, *_ in plan
               if (run_dir / name / "preflight.json").is_file()]
    for name, *_ in plan:
        for heavy in ("model", "adapter", "checkpoints"):
            shutil.rmtree(run_dir / name / heavy, ignore_errors=True)
    text, ok = preflight.table(records, recipe_batches, failed, shutil.disk_usage(run_dir).free)
    print(text)
    print(f"measurements: {run_dir}/*/preflight.json")
    return 0 if ok else 1


# TAG:KEY=VALUE: an override for the pipeline steps tagged TAG (Hydra keys hold no ':')
def _each(steps: list[dict]) -> list[dict]:
    """The steps with every `each:` step written out: one per item, `{each}` replaced by it."""
    out = []
    for step in steps:
        items = step.get("each")
        if items is None:
            out.append(step)
            continue
        if not isinstance(items, list) or not items or "{each}" not in str(step.get("name", "")):
            raise UserError(f"pipeline step {step.get('name')!r}: `each:` needs a list of items and a name holding "
                            "{each} (one step per item, each with its own name)")
        for item in items:
            def fill(value):
                return ([fill(v) for v in value] if isinstance(value, list)
                        else value.replace("{each}", str(item)) if isinstance(value, str) else value)
            out.append({key: fill(value) for key, value in step.items() if key != "each"})
    return out


_TAGGED = re.compile(r"(\w+):([^=:]+=.*)", re.S)


def _compose_step(name: str, overrides: list[str], config_dir: str | None):
    try:
        return config.compose(overrides, config_dir)
    except UserError as e:
        raise UserError(f"pipeline step {name!r}: {e}") from None


def _check_step(name: str, overrides: list[str], config_dir: str | None):
    """The step's config as `rlft train` will resolve it, validated (a mistyped knob of the last step
    stops the pipeline before the first step runs, naming the step)."""
    cfg = _compose_step(name, overrides, config_dir)
    try:
        config.validate(cfg, processes=False)  # the step's own process checks its GPUs and world size
        OmegaConf.resolve(cfg)
    except UserError as e:
        raise UserError(f"pipeline step {name!r}: {e}") from None
    except OmegaConfBaseException as e:
        raise UserError(f"pipeline step {name!r}: config: {str(e).splitlines()[0]}") from None
    return cfg


def _rerun_inputs(args: list[str], running: list[tuple[str, Path]]) -> str:
    """The steps among `running` whose run dirs the overrides `args` read from (e.g. init_from=<dir>/model)."""
    values = [a.split("=", 1)[1] for a in args if "=" in a]
    return ", ".join(name for name, d in running if any(v == str(d) or v.startswith(f"{d}/") for v in values))


def _changed_since_done(name: str, cfg, step_dir: Path, launcher: str | None) -> bool:
    """A DONE step is skipped only if it ran the config the pipeline composes for it now; one whose
    overrides changed is rerun under overwrite=true and refused otherwise (its old results would be
    reported as the new config's)."""
    may_change = {"keep_checkpoints", "label", "cache_dir"}  # what the run's results do not depend on
    if launcher:
        may_change.add("stage.trainer.gradient_accumulation_steps")  # config.yaml holds each process's share
    changed = rundir.config_changes(cfg, step_dir, may_change)
    if changed and not cfg.overwrite:
        raise UserError(f"pipeline step {name!r}: {step_dir} is DONE with another config than the pipeline gives it "
                        f"now: {changed}; pass {cfg.stage.name}:overwrite=true to rerun the changed steps (each "
                        "finished run is kept aside until its new one is DONE), or restore the overrides it ran with")
    return bool(changed)


def _root_key(override: str) -> str:
    return re.split(r"[.=/@]", override.lstrip("+~"), maxsplit=1)[0]


def _in(cfg, override: str) -> bool:
    """Whether the override's key is in cfg (a key the root config knows), not one it would add."""
    if override.startswith("+"):
        return False
    key = override.lstrip("~").split("=", 1)[0]
    return OmegaConf.select(cfg, key.split("@")[0], default=_ABSENT, throw_on_missing=False) is not _ABSENT


_ABSENT = object()
