"""The run directory contract: what every stage leaves behind, and when.

    runs/<run_name>/
      config.yaml    the resolved config             (written first)
      env.json       package versions, git sha, seed, command
      metrics.jsonl  one JSON object per logged step
      tensorboard/   event files (report_to=[tensorboard], the default)
      model/         save_pretrained output + README.md model card
      results.json   evaluation results, when the stage evaluates
      DONE           written last; a DONE dir is never overwritten unless overwrite=true
      checkpoints/   Trainer checkpoints; resume=true continues from the newest intact one
      .rlft.lock     held (flock) by the run using the dir: a second run into it stops at once

Beside it, `.<name>.previous/` holds the finished run that `overwrite=true` replaces, until the
new run is DONE (see `start`).

Only rank 0 writes (and locks). Paths are deterministic (never timestamped) so every rank agrees.
Outputs appear whole or not at all: files through `write_atomic`, directories (model/, adapter/)
written beside their place and moved in by `publish_dir`, so a run killed at any moment leaves
the previous good state readable and never a DONE over partial outputs.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import traceback
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from rlft import config
from rlft.errors import UserError

PACKAGES = [
    "rlft", "torch", "transformers", "trl", "datasets", "peft", "accelerate", "hydra-core",
    "omegaconf", "deepspeed", "bitsandbytes", "triton", "tokenizers",
]  # fmt: skip


LOCK = ".rlft.lock"


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def notice(line: str, in_signal_handler: bool = False) -> None:
    """One line to stderr from rank 0, on a line of its own (a progress bar may be mid-line). In a
    signal handler it bypasses sys.stderr (os.write): the handler may have interrupted a write to it."""
    if not is_main_process():
        return
    if in_signal_handler:
        os.write(2, f"\nrlft: {line}\n".encode())
    else:
        sys.stderr.write(f"\nrlft: {line}\n")
        sys.stderr.flush()


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old file or the whole new one, never a part
    (a temporary sibling, flushed to disk, then renamed over it)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        e.filename = str(path)  # name the file the user knows, not a temporary (disk full: see explain_write_failure)
        raise
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            e.filename = str(path)
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


def checkpoint_problem(path: Path) -> str | None:
    """Why resume cannot use this checkpoint, or None. Beyond `is_complete_checkpoint`, every file
    in it is checked for being whole, cheaply (no tensor is loaded): a safetensors file against the
    length its header declares, a torch zip archive (optimizer.pt, rng_state.pth, ...) by its
    central directory (written last, at the end), JSON by parsing, a sharded index by its shards."""
    path = Path(path)
    if not is_complete_checkpoint(path):
        return "cut off while saving (trainer_state.json, written last, is missing or incomplete)"
    for f in sorted(path.rglob("*")):
        if f.is_file():
            why = _file_problem(f)
            if why:
                return f"damaged ({f.relative_to(path)}: {why})"
    return None


def _file_problem(f: Path) -> str | None:
    try:
        size = f.stat().st_size
        if f.name.endswith(".safetensors"):
            with f.open("rb") as h:
                head = h.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else None
                if n is None or n > size - 8:
                    return f"cut off at {size} bytes, inside its header"
                header = json.loads(h.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if size != 8 + n + end:
                return f"cut off at {size} of {8 + n + end} bytes" if size < 8 + n + end else \
                    f"{size} bytes where its header says {8 + n + end}"
        elif f.name.endswith((".pt", ".pth", ".bin")):
            with f.open("rb") as h:
                magic = h.read(4)
            if size == 0:
                return "empty"
            if magic == b"PK\x03\x04":  # torch.save's zip format; truncation loses the central directory
                try:
                    zipfile.ZipFile(f).close()
                except zipfile.BadZipFile:
                    return f"cut off at {size} bytes (not a whole archive)"
        elif f.name.endswith(".json"):
            data = json.loads(f.read_text())
            if f.name.endswith(".index.json") and isinstance(data, dict) and isinstance(data.get("weight_map"), dict):
                missing = sorted(set(data["weight_map"].values()) - {p.name for p in f.parent.iterdir()})
                if missing:
                    return f"names a shard that is missing: {missing[0]}"
    except (OSError, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
        return f"unreadable ({type(e).__name__})"
    return None


def previous_dir(run_dir: Path) -> Path:
    """Where `overwrite=true` keeps the finished run it replaces until the new run is DONE: a hidden
    sibling (same filesystem, so setting it aside is one rename)."""
    run_dir = Path(run_dir).resolve()
    return run_dir.with_name(f".{run_dir.name}.previous")


_locks: dict[str, list[int]] = {}  # run dir -> lock fds this process holds
_resume: dict[str, str | None] = {}  # run dir -> the checkpoint resume=true continues from


def _key(run_dir) -> str:
    return str(Path(run_dir).resolve())


def start(cfg) -> Path:
    """Lock the run dir (rank 0), check it may be used, set aside a finished run that
    overwrite=true replaces, pick the checkpoint resume=true continues from, then write
    config.yaml and env.json (rank 0). Release with `release` (the kernel does, if the process dies)."""
    run_dir = Path(cfg.run_dir)
    if run_dir.is_file() or (run_dir.is_dir() and any(run_dir.iterdir())
                             and not any((run_dir / f).exists() for f in ("config.yaml", "env.json", "DONE", LOCK))):
        # never write into (or, with overwrite=true, delete) a folder rlft did not make
        raise UserError(f"run_dir {str(run_dir)!r} exists and is not an rlft run dir; choose another run_dir")
    if is_main_process():  # only rank 0: the ranks of one launch share the dir, and ranks > 0 never write
        _lock(run_dir)
    try:
        return _start(cfg, run_dir)
    except BaseException:
        release(cfg)
        raise


def _start(cfg, run_dir: Path) -> Path:
    done = run_dir / "DONE"
    if done.exists() and not cfg.overwrite:
        raise UserError(f"run_dir {str(run_dir)!r} holds a finished run (DONE); pass overwrite=true to replace it")
    if cfg.overwrite and run_dir.is_dir():
        _refuse_inputs_inside(cfg, run_dir)
    found = checkpoints(run_dir)
    if found and not (cfg.resume or cfg.overwrite):
        complete = [p for p in found if is_complete_checkpoint(p)]
        newest = (complete or found)[-1].name
        kept = previous_dir(run_dir)
        raise UserError(
            f"run_dir {str(run_dir)!r} holds an unfinished run ({newest}); "
            "pass resume=true to continue it or overwrite=true to start over"
            + (f" (the finished run it replaces is kept at {kept} until then)" if kept.is_dir() else "")
        )
    kept = previous_dir(run_dir)  # with no checkpoint to resume (those are handled above)
    if kept.is_dir() and not done.exists() and not (cfg.overwrite or cfg.resume):
        # a plain run would finish and delete the run an earlier overwrite=true set aside, unasked
        raise UserError(f"run_dir {str(run_dir)!r} holds an unfinished overwrite=true of the finished run kept at "
                        f"{kept}; pass overwrite=true again to replace that run (it stays until the new one is DONE) "
                        f"or restore it with: rm -rf {shlex.quote(str(run_dir))} && mv {shlex.quote(str(kept))} "
                        f"{shlex.quote(str(run_dir))}")
    if cfg.resume and not cfg.overwrite:
        _refuse_another_config(cfg, run_dir)
    resume_from, dropped = _plan_resume(run_dir) if cfg.resume and not cfg.overwrite else (None, [])
    _resume[_key(run_dir)] = str(resume_from) if resume_from else None  # every rank: read-only, same answer
    if not is_main_process():
        return run_dir
    try:
        if cfg.overwrite and run_dir.is_dir() and any(p.name != LOCK for p in run_dir.iterdir()):
            _set_aside(run_dir)
        elif cfg.resume:
            for ckpt, _ in dropped:  # Trainer would pick the highest-numbered checkpoint-*, whole or not
                shutil.rmtree(ckpt)
            _say_resume(run_dir, resume_from, dropped)
            _truncate_metrics(run_dir / "metrics.jsonl", int(resume_from.name[11:]) if resume_from else None)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not cfg.resume or cfg.overwrite:  # a fresh start: drop what an earlier, unfinished attempt logged
            for stale in ("metrics.jsonl", "results.json"):
                (run_dir / stale).unlink(missing_ok=True)
        write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    except OSError as e:
        raise UserError(f"run_dir {str(run_dir)!r} is not writable ({e.strerror})") from None
    write_atomic(run_dir / "env.json", json.dumps(environment(cfg), indent=2) + "\n")
    # TensorBoard's default log dir is timestamped; pin it inside the run dir.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    return run_dir


RESUME_MAY_CHANGE = {"resume", "overwrite", "report_to"}  # top-level keys a resumed run may set anew
STAGE_FACTS = {"stage.trains"}  # what stage.name implies, not a setting: a run saved before the key was added matches


def _refuse_another_config(cfg, run_dir: Path) -> None:
    """resume=true continues the run config.yaml describes: the checkpoint's optimizer, scheduler and
    step count belong to it. Another config (a new learning rate, another stage, another model
    shape) would be written over config.yaml and the card while the restored state kept the old
    one, so it is refused, naming the keys, before anything is written."""
    if not checkpoints(run_dir):
        return
    if changed := config_changes(cfg, run_dir):
        raise UserError(f"resume=true in {str(run_dir)!r} with another config than the run it continues: "
                        f"{changed}; resume with the run's own settings, or start over with overwrite=true")


def config_changes(cfg, run_dir: Path, may_change: set[str] = frozenset()) -> str:
    """The keys where cfg differs from the run's config.yaml, as "key (old -> new), ..." (what the run
    is first; "" when none differ or there is no readable config.yaml). Top-level keys in
    RESUME_MAY_CHANGE and the dotted keys in may_change are not compared."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return ""
    try:
        old = yaml.safe_load(saved.read_text())
    except (OSError, yaml.YAMLError):
        return ""  # unreadable: the checkpoint's own checks decide
    new = OmegaConf.to_container(cfg, resolve=True)
    changed = [k for k in _changed_keys(old, new)
               if k.split(".")[0] not in RESUME_MAY_CHANGE and k not in may_change and k not in STAGE_FACTS]
    changed.sort(key=lambda k: k not in ("stage.name", "model.name", "data.name"))  # what the run is, first
    shown = ", ".join(f"{k} ({_at(old, k)!r} -> {_at(new, k)!r})" for k in changed[:3])
    return shown + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new), key=str)
                for k in _changed_keys(old.get(key, _MISSING), new.get(key, _MISSING), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


_MISSING = object()


def _at(d, dotted: str):
    for part in dotted.split("."):
        d = d.get(part, _MISSING) if isinstance(d, dict) else _MISSING
    return "(unset)" if d is _MISSING else d


def _refuse_inputs_inside(cfg, run_dir: Path) -> None:
    """overwrite=true sets run_dir aside before the stage loads anything: a model the run reads from
    inside it (init_from=<run_dir>/model) would be gone by then."""
    real = Path(run_dir).resolve()
    for key in ("init_from", "reference", "reward.path"):
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and value and Path(value).expanduser().resolve().is_relative_to(real):
            raise UserError(f"{key}={value} is inside run_dir {str(run_dir)!r}, which overwrite=true sets aside "
                            "before the run starts; copy the model out of it first, or choose another run_dir")


def resume_checkpoint(cfg) -> str | None:
    """The checkpoint this run continues from (resume=true): the newest intact one, as `start`
    picked it (so every rank passes the same path to Trainer.train), or None to start at step 0."""
    key = _key(cfg.run_dir)
    if key not in _resume:  # a stage run without start (tests): the same choice, read-only
        ckpt = _plan_resume(Path(cfg.run_dir))[0] if cfg.resume and not cfg.overwrite else None
        _resume[key] = str(ckpt) if ckpt else None
    return _resume[key]


def release(cfg) -> None:
    """Let go of the run dir's lock (end of `rlft train`; a dead process's lock goes with it)."""
    key = _key(cfg.run_dir)
    _resume.pop(key, None)
    for fd in _locks.pop(key, []):
        os.close(fd)


def _lock(run_dir: Path) -> None:
    """flock run_dir/.rlft.lock for this run's life, or stop with one line naming who holds it.
    The lock file is never deleted (deleting it would let two runs lock two different files)."""
    key = _key(run_dir)
    if key in _locks:  # this process holds it already
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"run_dir {str(run_dir)!r} is not writable ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)  # a filesystem without locks (some network mounts): go on, and say so
            notice(f"cannot lock {run_dir / LOCK} ({e.strerror}): a second run into this run_dir would not be stopped")
            _locks[key] = []
            return
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
        os.close(fd)
        raise UserError(f"run_dir {str(run_dir)!r} is in use by another run ({holder}); "
                        "wait for it to end or choose another run_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _locks[key] = [fd]


def _set_aside(run_dir: Path) -> None:
    """overwrite=true: move the old run out of the way in one rename, so the new run starts in an
    empty dir. A finished (DONE) run goes to previous_dir(run_dir) and stays there until the new run
    is DONE (`finish` deletes it): a new run that fails leaves the old model readable. A leftover
    there is stale only when run_dir itself is DONE (killed between DONE and the delete); an
    unfinished run_dir (an earlier overwrite that failed) is discarded and the kept run stays."""
    key, real = _key(run_dir), Path(run_dir).resolve()
    finished = (run_dir / "DONE").exists()
    target = previous_dir(run_dir) if finished else real.with_name(f".{real.name}.discard")
    if target.exists():
        shutil.rmtree(target)
    try:
        os.replace(real, target)
    except OSError:  # run_dir cannot move (a mount point): delete in place, DONE first
        if finished:
            notice(f"overwrite=true: {run_dir} cannot be moved aside (a mount point?): the finished run in it is "
                   "deleted now, before the new one exists")
        (run_dir / "DONE").unlink(missing_ok=True)
        for ckpt in checkpoints(run_dir):  # a kill midway must not leave a "complete" checkpoint missing files
            (ckpt / "trainer_state.json").unlink(missing_ok=True)
        for entry in run_dir.iterdir():
            if entry.name != LOCK:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        return
    old = _locks.pop(key, [])
    try:
        _lock(run_dir)  # the new, empty run dir (the old lock moved away with the old dir)
    finally:
        for fd in old:
            os.close(fd)
    if finished:
        notice(f"overwrite=true: the finished run is kept at {target} until this run is DONE")
    else:
        shutil.rmtree(target)


def _plan_resume(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest checkpoint resume can use, the newer ones it cannot, each with why)."""
    dropped = []
    for ckpt in reversed(checkpoints(run_dir)):
        why = checkpoint_problem(ckpt)
        if why is None:
            return ckpt, dropped
        dropped.append((ckpt, why))
    return None, dropped


def _say_resume(run_dir: Path, ckpt: Path | None, dropped: list[tuple[Path, str]]) -> None:
    if not dropped:
        if ckpt:
            notice(f"resuming from {ckpt}")
        return
    what = "; ".join(f"{c.name} is {why}" for c, why in dropped)
    where = (f"resuming from {ckpt} instead" if ckpt
             else "no intact checkpoint is left: training starts over from step 0")
    notice(f"{what}: removed; {where}")


def _truncate_metrics(path: Path, step: int | None) -> None:
    """Resume continues from checkpoint `step`: drop what was logged after it (and a record cut off
    mid-line by a kill), so the resumed run's records do not repeat steps. None: starting over."""
    if not path.is_file():
        return
    if step is None:
        path.unlink()
        return
    text = path.read_text(errors="replace")
    kept = []
    for line in text.splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    if "".join(kept) != text:
        write_atomic(path, "".join(kept))


_NO_SPACE = ("No space left on device", "Disk quota exceeded", "StorageFull")
_WRITE_FAILED = ("iostream error", "PytorchStreamWriter failed", "unexpected pos", "file write failed")


FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def explain_write_failure(exc: BaseException, run_dir, after_training: bool = False,
                          weights_bytes: int | None = None, checkpoint_bytes: int | None = None) -> UserError | None:
    """A full disk (or quota) seen while writing: one line naming what was being written, about how
    much it needs and how much is free; None for anything else. torch.save reports a full disk only
    as a failed write (no errno): that counts when the free space is below what was needed.
    A checkpoint cut off by it is removed (rank 0): it gives its space back, and is never resumed from."""
    chain, seen = [], exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    full_errno = [e for e in chain if isinstance(e, OSError) and e.errno in FULL_DISK_ERRNOS]
    no_space = bool(full_errno) or any(m in str(e) for e in chain for m in _NO_SPACE)
    if not no_space and not any(m in str(e) for e in chain for m in _WRITE_FAILED):
        return None
    run_dir = Path(run_dir)
    complete = [c for c in checkpoints(run_dir) if is_complete_checkpoint(c)]
    partial = [c for c in checkpoints(run_dir) if c not in complete]
    filename = next((e.filename for e in full_errno if e.filename), None)
    if filename:
        path, needed = Path(filename), None
    elif any(_raised_in(e, "tensorboard") for e in chain):  # its writer thread's error names no file
        path, needed = Path(os.environ.get("TENSORBOARD_LOGGING_DIR") or run_dir / "tensorboard"), None
    elif partial:
        path = partial[-1]
        needed = tree_bytes(complete[-1]) if complete else checkpoint_bytes
    elif after_training:
        path, needed = run_dir / "model", weights_bytes
    else:
        path, needed = run_dir, None
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free + sum(tree_bytes(c) for c in partial)  # once they are removed
    if not no_space and (needed is None or free >= needed):
        return None  # a write failed with room to spare: not a full disk, keep the traceback
    removed = ""
    if partial and is_main_process():
        for c in partial:
            shutil.rmtree(c, ignore_errors=True)
        removed = "; the cut-off checkpoint was removed"
    need = f"needs about {_size(needed)}, " if needed else ""
    return UserError(f"no space left on device writing {path} ({need}{_size(free)} free{removed}); "
                     "free some space, then rerun with resume=true")


def _raised_in(exc: BaseException, package: str) -> bool:
    """Whether the exception passed through a module of `package` (its traceback's frames)."""
    marker = f"{os.sep}{package}{os.sep}"
    return any(marker in frame.f_code.co_filename for frame, _ in traceback.walk_tb(exc.__traceback__))


def tree_bytes(path: Path) -> int:
    """The bytes of every file under `path` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"


def environment(cfg) -> dict:
    """Everything needed to reproduce a run besides the config."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "seed": cfg.seed,
        "world_size": config.world_size(),  # processes training together, all nodes (config.spread_batch)
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
    """results.json, the model card, then DONE, in that order (rank 0); then the finished run that
    overwrite=true set aside goes and, with keep_checkpoints=false, the checkpoints (model/ holds
    the result)."""
    if not is_main_process():
        return
    run_dir = Path(cfg.run_dir)
    if results is not None:
        write_atomic(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    if (run_dir / "model").is_dir():
        write_atomic(run_dir / "model" / "README.md", model_card(cfg, results, card))
    write_atomic(run_dir / "DONE", "")
    shutil.rmtree(previous_dir(run_dir), ignore_errors=True)  # the run overwrite=true replaced: kept until now
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
