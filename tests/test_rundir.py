"""The run-dir contract's writes are atomic: results.json, DONE and the model dirs appear whole or
not at all, a failure (or a kill) while saving leaves the previous good state, and resume picks
the newest complete checkpoint. Fast: fake trainers, no training."""

import json
import os
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


def _checkpoint(run_dir: Path, step: int, complete: bool = True) -> Path:
    ckpt = run_dir / "checkpoints" / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"w")
    if complete:
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


def test_resume_drops_checkpoints_cut_off_while_saving(tmp_path):
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
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'


def test_done_run_is_refused_and_overwrite_removes_it_whole(tmp_path):
    run_dir = tmp_path / "run"
    rundir.start(_cfg(run_dir))
    _checkpoint(run_dir, 2)
    (run_dir / "model").mkdir()
    (run_dir / "model" / "model.safetensors").write_bytes(b"w")
    rundir.write_atomic(run_dir / "DONE", "")
    with pytest.raises(rundir.UserError, match=r"finished run \(DONE\).*overwrite=true"):
        rundir.start(_cfg(run_dir, resume=True))
    assert (run_dir / "model" / "model.safetensors").read_bytes() == b"w"
    rundir.start(_cfg(run_dir, overwrite=True))
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "env.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the renamed-aside copy is gone too
