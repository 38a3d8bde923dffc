"""The run-dir contract's writes are atomic: results.json, DONE and the model dirs appear whole or
not at all, a failure (or a kill) while saving leaves the previous good state, and resume picks
the newest complete checkpoint. Fast: fake trainers, no training."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlft import models, rundir


class Boom(RuntimeError):
    pass


def _cfg(run_dir: Path, **kw):
    return OmegaConf.create({"run_dir": str(run_dir), "run_name": "t", "seed": 0, "overwrite": False,
                             "resume": False, **kw})


def _files(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- files


def test_write_atomic_failure_halfway_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    rundir.write_atomic(path, '{"old": 1}\n')
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~rundir._umask())  # not mkstemp's 0600

    real_fdopen = os.fdopen

    class HalfWriter:  # writes half the text, then the disk "fills up"
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise Boom("disk full")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(Boom):
        rundir.write_atomic(path, json.dumps({"new": list(range(1000))}))
    assert path.read_text() == '{"old": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left behind


def test_finish_writes_done_last_and_only_after_whole_results(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    cfg = _cfg(run_dir, stage={"name": "sft"}, data={"name": "d"}, peft={"name": "none"})
    real = rundir.write_atomic

    def failing_results(path, text):
        if Path(path).name == "results.json":
            raise Boom("killed while writing results.json")
        real(path, text)

    monkeypatch.setattr(rundir, "write_atomic", failing_results)
    with pytest.raises(Boom):
        rundir.finish(cfg, {"heldout": {"accuracy": 0.5}}, {})
    assert not (run_dir / "DONE").exists() and not (run_dir / "results.json").exists()

    order = []
    monkeypatch.setattr(rundir, "write_atomic", lambda path, text: (order.append(Path(path).name), real(path, text)))
    rundir.finish(cfg, {"heldout": {"accuracy": 0.5}}, {})
    assert order == ["results.json", "README.md", "DONE"]
    assert json.loads((run_dir / "results.json").read_text()) == {"heldout": {"accuracy": 0.5}}


# ----------------------------------------------------------------------------- model dirs


class FakeAccelerator:
    def wait_for_everyone(self):
        pass


class FakeTrainer:
    """What save_trained uses of a Trainer. save_model writes weights and config like
    save_pretrained; with fail_after it writes that many bytes of the weights, then fails."""

    def __init__(self, weights: bytes, fail_after: int | None = None, kill: bool = False):
        self.accelerator, self.model = FakeAccelerator(), object()
        self.weights, self.fail_after, self.kill = weights, fail_after, kill

    def save_model(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text("{}")
        if self.fail_after is None:
            (Path(path) / "model.safetensors").write_bytes(self.weights)
            return
        with open(Path(path) / "model.safetensors", "wb") as f:
            f.write(self.weights[: self.fail_after])
            f.flush()
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise Boom("killed while saving the weights")


class FakeTokenizer:
    def save_pretrained(self, path):
        (Path(path) / "tokenizer.json").write_text("{}")


class FakeMerged:
    def __init__(self, weights: bytes):
        self.weights = weights

    def save_pretrained(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(self.weights)


def _save(run_dir, trainer, peft=False, merge=None):
    return models.save_trained(trainer, str(run_dir), "base", FakeTokenizer(), "float32", peft, merge=merge)


def test_save_trained_publishes_whole_dirs_and_replaces_the_old_one(tmp_path):
    _save(tmp_path, FakeTrainer(b"first" * 100))
    assert _files(tmp_path / "model") == {"config.json": b"{}", "model.safetensors": b"first" * 100,
                                          "tokenizer.json": b"{}"}
    _save(tmp_path, FakeTrainer(b"second" * 100))
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == b"second" * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .partial, no .old left


def test_failure_while_saving_leaves_no_model_dir(tmp_path):
    with pytest.raises(Boom):
        _save(tmp_path, FakeTrainer(b"x" * 1000, fail_after=500))
    assert list(tmp_path.iterdir()) == []


def test_failure_while_saving_keeps_the_previous_model(tmp_path):
    _save(tmp_path, FakeTrainer(b"good" * 100))
    before = _files(tmp_path / "model")
    with pytest.raises(Boom):
        _save(tmp_path, FakeTrainer(b"bad!" * 100, fail_after=150))
    assert _files(tmp_path / "model") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_failure_while_merging_an_adapter_keeps_previous_model_and_adapter(tmp_path):
    _save(tmp_path, FakeTrainer(b"adapter1"), peft=True, merge=lambda adapter_dir: FakeMerged(b"merged1"))
    assert (tmp_path / "adapter" / "model.safetensors").read_bytes() == b"adapter1"
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == b"merged1"
    before = _files(tmp_path)

    def merge(adapter_dir):
        assert Path(adapter_dir).name == "adapter.partial"  # merged from the new adapter, not the old
        raise Boom("out of memory while merging")

    with pytest.raises(Boom):
        _save(tmp_path, FakeTrainer(b"adapter2"), peft=True, merge=merge)
    assert _files(tmp_path) == before


def test_sigkill_while_saving_keeps_the_previous_model(tmp_path):
    """A real kill: no cleanup runs, the half-written dir stays as model.partial beside the
    intact model/; the next save clears it."""
    _save(tmp_path, FakeTrainer(b"good" * 100))
    before = _files(tmp_path / "model")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_rundir import FakeTrainer, _save
        _save({str(tmp_path)!r}, FakeTrainer(b"bad!" * 100, fail_after=150, kill=True))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _files(tmp_path / "model") == before
    assert (tmp_path / "model.partial" / "model.safetensors").stat().st_size == 150
    _save(tmp_path, FakeTrainer(b"next" * 100))
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == b"next" * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_publish_dir_killed_between_renames_leaves_the_old_dir_whole(tmp_path, monkeypatch):
    final, staged = tmp_path / "model", tmp_path / "model.partial"
    for d, text in ((final, "old"), (staged, "new")):
        d.mkdir()
        (d / "w").write_text(text)
    real_replace = os.replace

    def replace(src, dst):
        if Path(src) == staged:
            raise Boom("killed between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Boom):
        rundir.publish_dir(staged, final)
    assert (tmp_path / "model.old" / "w").read_text() == "old" and (staged / "w").read_text() == "new"
    monkeypatch.setattr(os, "replace", real_replace)
    rundir.publish_dir(staged, final)  # the next attempt completes
    assert (final / "w").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# ----------------------------------------------------------------------------- start: resume and overwrite


SAFETENSORS = (lambda h: len(h).to_bytes(8, "little") + h)(b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}') \
    + b"\0" * 8  # a whole safetensors file: one tensor of 2 floats


def _checkpoint(run_dir: Path, step: int, complete: bool = True) -> Path:
    ckpt = run_dir / "checkpoints" / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(SAFETENSORS)
    if complete:
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


def _finished_cfg(run_dir: Path, **kw):
    return _cfg(run_dir, stage={"name": "sft"}, data={"name": "d"}, peft={"name": "none"}, **kw)


def test_resume_drops_checkpoints_cut_off_while_saving(tmp_path, capfd):
    run_dir = tmp_path / "run"
    rundir.start(_cfg(run_dir))
    _checkpoint(run_dir, 2)
    _checkpoint(run_dir, 4, complete=False)  # killed before trainer_state.json (written last)
    (run_dir / "checkpoints" / "checkpoint-6").mkdir()
    (run_dir / "checkpoints" / "checkpoint-6" / "trainer_state.json").write_text('{"global_st')  # cut off
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # cut-off record

    with pytest.raises(rundir.UserError, match=r"unfinished run \(checkpoint-2\).*resume=true"):
        rundir.start(_cfg(run_dir))
    rundir.start(_cfg(run_dir, resume=True))
    assert [p.name for p in rundir.checkpoints(run_dir)] == ["checkpoint-2"]
    assert rundir.resume_checkpoint(_cfg(run_dir, resume=True)) == str(run_dir / "checkpoints" / "checkpoint-2")
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'
    line = capfd.readouterr().err.strip()
    assert "checkpoint-6 is cut off while saving" in line and "resuming from" in line and "checkpoint-2" in line


def test_resume_skips_a_damaged_newest_checkpoint_and_truncates_the_log(tmp_path, capfd):
    """A whole-looking checkpoint (trainer_state.json there) whose weights or optimizer state are
    cut off is not resumed from: the newest intact one is, and what was logged after it goes."""
    import torch

    run_dir = tmp_path / "run"
    rundir.start(_cfg(run_dir))
    _checkpoint(run_dir, 2)
    torch.save({"state": torch.zeros(100)}, run_dir / "checkpoints" / "checkpoint-2" / "optimizer.pt")
    for step in (4, 6):
        _checkpoint(run_dir, step)
    weights = run_dir / "checkpoints" / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(SAFETENSORS[: len(SAFETENSORS) // 2 + 20])  # past the header, into the data
    optimizer = run_dir / "checkpoints" / "checkpoint-4" / "optimizer.pt"
    torch.save({"state": torch.zeros(100)}, optimizer)
    optimizer.write_bytes(optimizer.read_bytes()[:300])
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 8)))

    assert rundir.checkpoint_problem(run_dir / "checkpoints" / "checkpoint-2") is None
    rundir.start(_cfg(run_dir, resume=True))
    assert [p.name for p in rundir.checkpoints(run_dir)] == ["checkpoint-2"]
    assert [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    line = capfd.readouterr().err.strip()
    assert "checkpoint-6 is damaged (model.safetensors: cut off at" in line
    assert "checkpoint-4 is damaged (optimizer.pt: cut off" in line
    assert line.endswith(f"resuming from {run_dir / 'checkpoints' / 'checkpoint-2'} instead")


def test_resume_with_no_intact_checkpoint_starts_over_and_says_so(tmp_path, capfd):
    run_dir = tmp_path / "run"
    rundir.start(_cfg(run_dir))
    (_checkpoint(run_dir, 2) / "model.safetensors").write_bytes(SAFETENSORS[:5])
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n')
    rundir.start(_cfg(run_dir, resume=True))
    assert rundir.checkpoints(run_dir) == [] and not (run_dir / "metrics.jsonl").exists()
    assert rundir.resume_checkpoint(_cfg(run_dir, resume=True)) is None
    assert "training starts over from step 0" in capfd.readouterr().err


def test_overwrite_keeps_the_finished_run_until_the_new_one_is_done(tmp_path, capfd):
    run_dir, kept = tmp_path / "run", tmp_path / ".run.previous"
    rundir.start(_cfg(run_dir))
    _checkpoint(run_dir, 2)
    (run_dir / "model").mkdir()
    (run_dir / "model" / "model.safetensors").write_bytes(b"old")
    rundir.write_atomic(run_dir / "DONE", "")
    with pytest.raises(rundir.UserError, match=r"finished run \(DONE\).*overwrite=true"):
        rundir.start(_cfg(run_dir, resume=True))
    assert (run_dir / "model" / "model.safetensors").read_bytes() == b"old"

    rundir.start(_cfg(run_dir, overwrite=True))  # the old run steps aside whole; the new one starts empty
    assert sorted(p.name for p in run_dir.iterdir()) == [".rlft.lock", "config.yaml", "env.json"]
    assert (kept / "model" / "model.safetensors").read_bytes() == b"old" and (kept / "DONE").exists()
    assert f"kept at {kept} until this run is DONE" in capfd.readouterr().err
    rundir.release(_cfg(run_dir))

    # the new run fails after a checkpoint: the old one is still there, and the user is told where
    _checkpoint(run_dir, 2)
    with pytest.raises(rundir.UserError, match=rf"unfinished run \(checkpoint-2\).*kept at {kept}"):
        rundir.start(_cfg(run_dir))
    # overwrite=true again: the failed attempt is discarded, the finished run stays kept
    rundir.start(_cfg(run_dir, overwrite=True))
    assert rundir.checkpoints(run_dir) == [] and (kept / "model" / "model.safetensors").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.previous", "run"]
    rundir.release(_cfg(run_dir))

    # resume=true also keeps it; the run that reaches DONE deletes it
    _checkpoint(run_dir, 2)
    rundir.start(_cfg(run_dir, resume=True))
    assert kept.is_dir()
    rundir.finish(_finished_cfg(run_dir), None, {})
    assert (run_dir / "DONE").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    rundir.release(_cfg(run_dir))

    # a leftover beside a DONE run_dir (killed between DONE and the delete) is stale: replaced
    shutil.copytree(run_dir, kept)
    (kept / "stale").write_text("")
    rundir.start(_cfg(run_dir, overwrite=True))
    assert not (kept / "stale").exists() and (kept / "DONE").exists()


def test_a_second_run_into_a_locked_run_dir_stops_without_touching_it(tmp_path):
    """The lock is the kernel's (flock): held by another live process, refused with its pid; gone
    when that process dies (SIGKILL: no cleanup), so no stale lock needs clearing."""
    run_dir = tmp_path / "run"
    rundir.start(_cfg(run_dir))
    rundir.write_atomic(run_dir / "DONE", "")
    rundir.release(_cfg(run_dir))
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from omegaconf import OmegaConf
            from rlft import rundir
            rundir.start(OmegaConf.create({{"run_dir": {str(run_dir)!r}, "run_name": "t", "seed": 0,
                                            "overwrite": True, "resume": False}}))
            print("locked", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _files(run_dir) | {".": sorted(p.name for p in tmp_path.iterdir())}
        for kw in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(rundir.UserError, match=rf"'{run_dir}' is in use by another run \(pid {holder.pid} on "):
                rundir.start(_cfg(run_dir, **kw))
        assert _files(run_dir) | {".": sorted(p.name for p in tmp_path.iterdir())} == before
    finally:
        holder.kill()
        holder.wait(timeout=60)
    rundir.start(_cfg(run_dir, resume=True))  # the holder died: its lock went with it


def test_a_full_disk_is_told_apart_from_other_write_failures(tmp_path, monkeypatch):
    """torch.save reports a full disk as a failed write with no errno: it counts as one when the
    free space is below what the save needed (the last whole checkpoint's size)."""
    import errno
    from collections import namedtuple

    run_dir = tmp_path / "run"
    _checkpoint(run_dir, 1)
    partial = _checkpoint(run_dir, 2, complete=False)
    try:
        try:
            raise RuntimeError("basic_ios::clear: iostream error")
        except RuntimeError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2767232 vs 2767120")
    except RuntimeError as e:
        torch_error = e
    usage = namedtuple("usage", "total used free")
    needed = rundir.tree_bytes(run_dir / "checkpoints" / "checkpoint-1")

    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 0, 10**12))  # room: another cause
    assert rundir.explain_write_failure(torch_error, run_dir) is None and partial.is_dir()
    assert rundir.explain_write_failure(ValueError("bad value"), run_dir) is None

    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6, 0))
    freed = rundir.tree_bytes(partial)  # free once the cut-off checkpoint is removed
    error = rundir.explain_write_failure(torch_error, run_dir)
    assert str(error) == (f"no space left on device writing {partial} (needs about {rundir._size(needed)}, "
                          f"{rundir._size(freed)} free; the cut-off checkpoint was removed); "
                          "free some space, then rerun with resume=true")
    assert not partial.exists() and rundir.checkpoints(run_dir) == [run_dir / "checkpoints" / "checkpoint-1"]

    full = OSError(errno.ENOSPC, "No space left on device")
    full.filename = str(run_dir / "metrics.jsonl")
    assert str(rundir.explain_write_failure(full, run_dir)).startswith(
        f"no space left on device writing {run_dir / 'metrics.jsonl'} (0 B free)")
    assert str(rundir.explain_write_failure(full, run_dir, after_training=True, weights_bytes=4_470_408)).startswith(
        f"no space left on device writing {run_dir / 'metrics.jsonl'} (0 B free)")
    full.filename = None
    assert str(rundir.explain_write_failure(full, run_dir, after_training=True, weights_bytes=4_470_408)).startswith(
        f"no space left on device writing {run_dir / 'model'} (needs about 4.5 MB, 0 B free)")


def test_a_run_saved_before_stage_trains_existed_is_the_same_config(tmp_path):
    """stage.trains is what stage.name implies, not a setting: a DONE step or a checkpoint whose
    config.yaml predates the key is not "another config"; a real change still is."""
    import yaml
    from omegaconf import OmegaConf

    from rlft import config, rundir

    cfg = config.compose(["stage=sft", "model=tiny", "data=countdown", f"run_dir={tmp_path}"])
    saved = OmegaConf.to_container(cfg, resolve=True)
    assert saved["stage"].pop("trains") == "model"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert rundir.config_changes(cfg, tmp_path) == ""
    cfg.stage.trainer.learning_rate = 1e-3
    assert rundir.config_changes(cfg, tmp_path).startswith("stage.trainer.learning_rate (5e-06 -> 0.001)")
