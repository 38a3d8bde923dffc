"""The pre-flight: what a recipe will cost on the box it is given, before anyone pays for it.

    make paper-preflight                                   # both paper recipes, on this box
    rlft pipeline experiment=paper_math --preflight runs/preflight/paper_math
    make rehearsal-preflight                               # the same against the rehearsal hub, on CPU

`rlft pipeline ... --preflight DIR` runs every step of the recipe in DIR, each through the user's
code path (`rlft train`, the launcher if one is given) but cut short: the data loaded and checked in
full, then `TRAIN_ROWS` training rows and `EVAL_ROWS` held-out items (or one evaluation batch) kept; one optimizer step (two
when the cell trains more than one) and the evaluation. Each step measures itself (this module,
turned on by RLFT_PREFLIGHT in the environment, so launched processes measure too) and writes
run_dir/preflight.json; the pipeline then prints one table and exits 1 when a cell failed, would not
fit (GPU memory past `FIT_SHARE` of the device, or the disk) or would idle the GPU (a model on
another device than the process's accelerator).

The estimate of a whole cell (seconds):

    other + first step + next step x (steps - 1) + evaluation x (items / items run)

- first step: on_train_begin to the first on_step_end (sampling, forward, backward, the optimizer,
  and the warm-up); next step: the second one, which prices the rest;
- steps: what the cell will train: stage.trainer.max_steps, or HF Trainer's own count for the kept
  rows scaled to all the rows the data loader gave;
- evaluation: time inside sampling and scoring (the functions wrapped by `timed`), scaled by the
  held-out items the cell will evaluate over those it ran;
- other: the rest of the run (loading, tokenizing what was kept, saving), counted once.
Memory is CUDA's peak reserved bytes (on CPU the process's peak RSS, which in-process steps share).
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import shutil
import time
from pathlib import Path

ENV = "RLFT_PREFLIGHT"
TRAIN_ROWS, EVAL_ROWS = 256, 4
FIT_SHARE = 0.95  # of the GPU's memory: past it a full cell's longer batches would not fit
MARKER = ".rlft-preflight"  # in a --preflight dir: what the next pre-flight may clear

_cell: dict = {}  # this process's measurements of its run


def active() -> bool:
    return bool(os.environ.get(ENV))


def start(cfg) -> None:
    """At the start of a run: clear the last run's measurements and the GPU's peak, and note the
    evaluation's batch size (held-out items are kept to at least one full batch: a batch of 4 on a
    GPU costs about what a full one does, so scaling its time by items would price it many times over)."""
    if not active():
        return
    from omegaconf import OmegaConf

    batch = OmegaConf.select(cfg, "data.evaluate.batch_size", default=None) or OmegaConf.select(
        cfg, "stage.batch_size", default=None)
    _cell.clear()
    _cell.update(started=time.perf_counter(), evaluation_s=0.0, depth=0, devices={}, rows={},
                 eval_batch=batch if isinstance(batch, int) else 0)
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def cap(rows, what: str):
    """`rows` (a datasets.Dataset or list) cut to the pre-flight's handful: what="train" (the rows a
    trainer trains on: TRAIN_ROWS) or "eval" (held-out items: problems, prompts, pairs: EVAL_ROWS, or
    one evaluation batch if larger). The full count is kept for the estimate. Returns `rows`
    unchanged outside a pre-flight."""
    if not active() or rows is None:
        return rows
    keep = min(len(rows), TRAIN_ROWS if what == "train" else max(EVAL_ROWS, _cell["eval_batch"]))
    _cell["rows"][what] = [len(rows), keep]
    return rows.select(range(keep)) if hasattr(rows, "select") else rows[:keep]


def timed(fn):
    """Decorate a function that samples or scores for evaluation: its time is the evaluation's,
    which the estimate scales by items (nested calls count once)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _cell:
            return fn(*args, **kwargs)
        _cell["depth"] += 1
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _cell["depth"] -= 1
            if not _cell["depth"]:
                _cell["evaluation_s"] += time.perf_counter() - t
    return wrapper


def placed(model, role: str | None = None):
    """Record where a model sits (models.on_accelerator calls it for every model that samples or
    scores; the pre-flight callback for the trained model and the trainer's reference). Returns it."""
    if _cell and model is not None:
        try:
            device = str(next(model.parameters()).device)
        except (StopIteration, AttributeError, TypeError):
            device = "vllm" if hasattr(model, "generate_texts") else "unknown"
        _cell["devices"][role or type(model).__name__] = device
    return model


def callback(trainer):
    """A TrainerCallback (runcontrol.fit adds it in a pre-flight): times the first optimizer step and,
    when the cell trains more than one, the second; records the steps the whole cell would train;
    stops training there."""
    from transformers import TrainerCallback

    class Preflight(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            placed(trainer.model, f"{type(trainer.model).__name__} (trained)")
            placed(getattr(trainer, "ref_model", None), "reference")
            train = _cell["rows"].get("train")
            scale = train[0] / train[1] if train and train[1] else 1.0
            _cell["steps"] = args.max_steps if args.max_steps > 0 else math.ceil(state.max_steps * scale)
            _cell["world_size"] = args.world_size
            _cell["per_step"] = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            _cell["step_started"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if "step_s" not in _cell:
                _cell["step_s"] = now - _cell["step_started"]
                _cell["step_started"] = now
                if _cell["steps"] > 1:  # a second step, without the first one's warm-up, prices the rest
                    return
            else:
                _cell["next_step_s"] = now - _cell["step_started"]
            control.should_training_stop = True

    return Preflight()


def write(cfg, checkpoint_bytes: int | None) -> None:
    """run_dir/preflight.json: this run's measurements and what the whole cell would cost."""
    if not _cell:
        return
    import torch

    from rlft import rundir
    from rlft.models import accelerator_device

    wall = time.perf_counter() - _cell["started"]
    step, steps, evaluation = _cell.get("step_s", 0.0), _cell.get("steps", 0), _cell["evaluation_s"]
    steady = _cell.get("next_step_s", step)  # the second step's time (the first's if the cell has one)
    items = _cell["rows"].get("eval") or [0, 0]
    scale = items[0] / items[1] if items[1] else 1.0
    other = max(0.0, wall - step - evaluation - _cell.get("next_step_s", 0.0))
    if torch.cuda.is_available():
        memory = {"peak_bytes": torch.cuda.max_memory_reserved(),
                  "device_bytes": torch.cuda.get_device_properties(accelerator_device()).total_memory, "kind": "cuda"}
    else:
        memory = {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "kind": "cpu peak RSS"}
    run_dir = Path(cfg.run_dir)
    trainer = cfg.stage.get("trainer") or {}
    record = {
        "cell": cfg.run_name, "stage": cfg.stage.name, "accelerator": str(accelerator_device()),
        "devices": _cell["devices"], "world_size": _cell.get("world_size", 1), "per_step": _cell.get("per_step"),
        "memory": memory, "wall_s": wall, "step_s": step, "next_step_s": _cell.get("next_step_s"), "steps": steps,
        "evaluation_s": evaluation, "rows": _cell["rows"],
        "estimate_s": other + (step + steady * (steps - 1) if steps else 0.0) + evaluation * scale,
        "model_bytes": sum(rundir.tree_bytes(run_dir / d) for d in ("model", "adapter")),
        "checkpoint_bytes": (checkpoint_bytes or 0) * (trainer.get("save_total_limit") or 1) if steps else 0,
        "keep_checkpoints": bool(cfg.get("keep_checkpoints", True)),
        # the run reached DONE, so this judge answered every request it was sent
        "judge": (cfg.judge.get("base_url") or cfg.judge.name) if cfg.stage.name == "winrate" else None,
    }
    (run_dir / "preflight.json").write_text(json.dumps(record, indent=2) + "\n")
    _cell.clear()


# --- the pipeline's side: the dir, the table, the verdict ---------------------------------------

def prepare(directory: Path) -> None:
    """A fresh pre-flight dir: refuses one that holds anything but an earlier pre-flight's runs."""
    from rlft.errors import UserError

    if directory.exists() and any(directory.iterdir()) and not (directory / MARKER).exists():
        raise UserError(f"--preflight {directory}: the directory holds files that are not a pre-flight's "
                        "(no run is ever cleared but one a pre-flight made): pick an empty or new directory")
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("made by rlft pipeline --preflight; the next pre-flight clears this dir\n")


def verdict(record: dict) -> str:
    """'ok', or what stops the cell: a model away from the accelerator, memory past FIT_SHARE."""
    accelerator = record["accelerator"].split(":")[0]
    away = [f"{who} on {where}" for who, where in record["devices"].items()
            if where.split(":")[0] not in (accelerator, "vllm")]
    if away:
        return f"idles the {accelerator.upper()}: {'; '.join(away)}"
    memory = record["memory"]
    if memory.get("device_bytes") and memory["peak_bytes"] > FIT_SHARE * memory["device_bytes"]:
        return f"would not fit: peak {_gib(memory['peak_bytes'])} of {_gib(memory['device_bytes'])}"
    return "ok"


def table(records: list[dict], recipe_batches: dict[str, int], failed: tuple[str, str] | None,
          free_bytes: int) -> tuple[str, bool]:
    """The markdown table, a total line and the disk line; and whether every cell may go ahead."""
    lines = ["| cell | devices | world x batch (recipe's) | peak memory | steps run | steps | estimate | disk | "
             "rows checked | check |", "|---|---|---|---|---|---|---|---|---|---|"]
    ok = failed is None
    for r in records:
        check = verdict(r)
        ok &= check == "ok"
        per_step = r["per_step"]
        recipe = recipe_batches.get(r["step"])
        batch = (f"{r['world_size']} x {per_step}" + (f" ({recipe})" if recipe else "")
                 + (" MISMATCH" if recipe and per_step and per_step != recipe else "")) if per_step else "evaluation"
        ok &= not (recipe and per_step and per_step != recipe)
        devices = ", ".join(sorted(set(r["devices"].values()))) or "-"
        disk = _gib(r["model_bytes"]) + (f" (+{_gib(r['checkpoint_bytes'])} checkpoints)" if r["checkpoint_bytes"] else "")
        timing = ("-" if not r["steps"] else f"{r['step_s']:.1f} s" if r["next_step_s"] is None
                  else f"{r['step_s']:.1f} s, then {r['next_step_s']:.2f} s")
        checked = ", ".join(f"{full} {what}" for what, (full, _) in sorted(r["rows"].items(), reverse=True)) or "-"
        check += f"; judge {r['judge']} answered" if r.get("judge") and check == "ok" else ""
        lines.append(f"| {r['step']} | {devices} | {batch} | {_gib(r['memory']['peak_bytes'])} | {timing} | "
                     f"{r['steps'] or '-'} | {_hours(r['estimate_s'])} | {disk} | {checked} | {check} |")
    if failed:
        lines.append(f"| {failed[0]} | | | | | | | | | failed: {failed[1]} |")
    need = sum(r["model_bytes"] for r in records) + (
        sum(r["checkpoint_bytes"] for r in records) if any(r["keep_checkpoints"] for r in records)
        else max([r["checkpoint_bytes"] for r in records], default=0))
    total = sum(r["estimate_s"] for r in records)
    lines += ["", f"whole recipe: {_hours(total)} estimated for {len(records)} cells "
                  f"(from one step each; {records[0]['accelerator'] if records else '-'})",
              f"disk: {_gib(need)} needed at the peak (models kept, checkpoints "
              f"{'kept' if any(r['keep_checkpoints'] for r in records) else 'while a cell trains'}) "
              f"of {_gib(free_bytes)} free"]
    if need > free_bytes:
        ok = False
        lines[-1] += ": WOULD NOT FIT"
    return "\n".join(lines), ok


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"
