"""The run directory contract: what every stage leaves behind, and when.

    runs/<run_name>/
      config.yaml    the resolved config             (written first)
      env.json       package versions, git sha, seed, command
      metrics.jsonl  one JSON object per logged step
      tensorboard/   event files (report_to=[tensorboard], the default)
      model/         save_pretrained output + README.md model card
      results.json   evaluation results, when the stage evaluates
      DONE           written last; a DONE dir is never overwritten unless overwrite=true
      checkpoints/   Trainer checkpoints; resume=true continues from the newest complete one

Only rank 0 writes. Paths are deterministic (never timestamped) so every rank agrees.
Outputs appear whole or not at all: files through `write_atomic`, directories (model/, adapter/)
written beside their place and moved in by `publish_dir`, so a run killed at any moment leaves
the previous good state readable and never a DONE over partial outputs.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rlft.errors import UserError

PACKAGES = [
    "rlft", "torch", "transformers", "trl", "datasets", "peft", "accelerate", "hydra-core",
    "omegaconf", "deepspeed", "bitsandbytes", "triton", "tokenizers",
]  # fmt: skip


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old file or the whole new one, never a part
    (a temporary sibling, flushed to disk, then renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def staging_dir(final: Path) -> Path:
    """Where the directory `final` is written before `publish_dir` moves it into place: a sibling
    whose name every rank agrees on (Trainer.save_model must be given the same path on all ranks)."""
    final = Path(final)
    return final.with_name(final.name + ".partial")


def publish_dir(staged: Path, final: Path) -> None:
    """Move the completely written directory `staged` to `final`, replacing an older `final`.

    A directory cannot be renamed over a non-empty one, so the old one steps aside first
    (final -> final.old, staged -> final, then final.old is deleted): a kill at any moment leaves
    either the old or the new directory whole, under `final` or, between the two renames,
    `final.old`; never a mixture. (The next save clears leftovers.)
    """
    staged, final = Path(staged), Path(final)
    old = final.with_name(final.name + ".old")
    _fsync_tree(staged)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(staged, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """Flush every file under `path` to disk before it is published (a rename is only as durable
    as the data it points at)."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def checkpoints(run_dir: Path) -> list[Path]:
    """Trainer checkpoints under run_dir/checkpoints, oldest first."""
    found = (p for p in (Path(run_dir) / "checkpoints").glob("checkpoint-*") if p.name[11:].isdigit() and p.is_dir())
    return sorted(found, key=lambda p: int(p.name[11:]))


def is_complete_checkpoint(path: Path) -> bool:
    """Trainer writes trainer_state.json last (after weights, optimizer, scheduler and RNG states):
    a checkpoint without a whole one was cut off while saving. transformers would resume from it
    anyway, silently skipping the optimizer or RNG state it cannot find."""
    try:
        state = json.loads((Path(path) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("global_step") == int(Path(path).name[11:])


def start(cfg) -> Path:
    """Check the run dir may be used, then write config.yaml and env.json (rank 0)."""
    from omegaconf import OmegaConf

    run_dir = Path(cfg.run_dir)
    if run_dir.is_file() or (run_dir.is_dir() and any(run_dir.iterdir())
                             and not any((run_dir / f).exists() for f in ("config.yaml", "env.json", "DONE"))):
        # never write into (or, with overwrite=true, delete) a folder rlft did not make
        raise UserError(f"run_dir {str(run_dir)!r} exists and is not an rlft run dir; choose another run_dir")
    done = run_dir / "DONE"
    if done.exists() and not cfg.overwrite:
        raise UserError(f"run_dir {str(run_dir)!r} holds a finished run (DONE); pass overwrite=true to replace it")
    found = checkpoints(run_dir)
    complete = [p for p in found if is_complete_checkpoint(p)]
    if found and not (cfg.resume or cfg.overwrite):
        newest = (complete or found)[-1].name
        raise UserError(
            f"run_dir {str(run_dir)!r} holds an unfinished run ({newest}); "
            "pass resume=true to continue it or overwrite=true to start over"
        )
    if not is_main_process():
        return run_dir
    try:
        if cfg.overwrite and run_dir.exists():
            _remove_run_dir(run_dir)
        elif cfg.resume:
            # resume from the newest *complete* checkpoint: drop ones cut off while saving
            # (Trainer picks the highest-numbered checkpoint-* dir, whole or not)
            for partial in found:
                if partial not in complete:
                    shutil.rmtree(partial)
            _drop_partial_line(run_dir / "metrics.jsonl")
        run_dir.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:  # a fresh start: drop what an earlier, unfinished attempt logged
            for stale in ("metrics.jsonl", "results.json"):
                (run_dir / stale).unlink(missing_ok=True)
        write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    except OSError as e:
        raise UserError(f"run_dir {str(run_dir)!r} is not writable ({e.strerror})") from None
    write_atomic(run_dir / "env.json", json.dumps(environment(cfg), indent=2) + "\n")
    # TensorBoard's default log dir is timestamped; pin it inside the run dir.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    return run_dir


def _drop_partial_line(path: Path) -> None:
    """A kill while a record was being appended leaves half a line; the resumed run would append
    after it and make the file unreadable as JSON lines."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _remove_run_dir(run_dir: Path) -> None:
    """overwrite=true: the old run vanishes at once (renamed aside, then deleted), so a kill midway
    never leaves a DONE beside half-deleted outputs or a checkpoint missing half its files."""
    run_dir = run_dir.resolve()
    doomed = run_dir.with_name(f".{run_dir.name}.overwritten-{os.getpid()}")
    try:
        os.replace(run_dir, doomed)
    except OSError:  # a mount point or the like cannot move: at least drop the DONE marker first
        (run_dir / "DONE").unlink(missing_ok=True)
        doomed = run_dir
    shutil.rmtree(doomed)


def environment(cfg) -> dict:
    """Everything needed to reproduce a run besides the config."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "seed": cfg.seed,
        "argv": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git": _git_state(),
        "packages": versions,
    }


def _git_state() -> dict | None:
    src = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain"], capture_output=True, text=True, timeout=5)
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return None


def finish(cfg, results: dict | None, card: dict) -> None:
    """results.json, the model card, then DONE, in that order (rank 0); then, with
    keep_checkpoints=false, the checkpoints go (model/ holds the result)."""
    if not is_main_process():
        return
    run_dir = Path(cfg.run_dir)
    if results is not None:
        write_atomic(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    if (run_dir / "model").is_dir():
        write_atomic(run_dir / "model" / "README.md", model_card(cfg, results, card))
    write_atomic(run_dir / "DONE", "")
    if not cfg.get("keep_checkpoints", True):  # a finished run cannot resume: its checkpoints are only disk
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def model_card(cfg, results: dict | None, card: dict) -> str:
    """A short markdown card: what was trained from what, how, and how well."""
    lines = [
        f"# {cfg.run_name}",
        "",
        f"Trained by `rlft` stage `{cfg.stage.name}`.",
        "",
        f"- base model: `{card.get('base_model')}`",
        f"- data: `{cfg.data.name}`" + (f" ({card['train_rows']} training rows)" if "train_rows" in card else ""),
        f"- fine-tuning: `{cfg.peft.name}`" + (" (adapter merged into these weights)" if cfg.peft.name != "none" else ""),
        f"- seed: {cfg.seed}",
    ]
    lines += [f"- {k}: {v}" for k, v in card.items() if k not in ("base_model", "train_rows")]
    if results:
        lines += ["", "## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in _flatten(results).items()]
    lines += ["", "Full resolved config: `../config.yaml`; package versions: `../env.json`.", ""]
    return "\n".join(lines)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = round(v, 4) if isinstance(v, float) else v
    return out
