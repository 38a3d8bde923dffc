"""Faults users meet around the run dir, reproduced from the outside: real `rlft train`
processes on the tiny model, real signals, a real full filesystem (a size-limited tmpfs).

- two runs into one run dir: the second stops at once (exit 2, the holder's pid), touching nothing;
- overwrite=true whose new run dies: the finished run it replaces is still there, whole;
- the disk fills while a checkpoint is written: one line, exit 2, no cut-off checkpoint left;
- the newest checkpoint's weights are cut off: resume names the file and uses the one before.

Preemption (SIGTERM / SIGINT) and crash (SIGKILL) resume are in tests/test_resume.py; the run-dir
functions themselves, without training, in tests/test_rundir.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import error_line, state_dict

from rlft.rundir import checkpoint_problem, checkpoints

KILL_AT_STEP = str(Path(__file__).with_name("kill_at_step.py"))
SFT = ["stage=sft", "data=countdown_tiny", "data.sft_dataset.n=64", "data.evaluate=null",
       "stage.trainer.per_device_train_batch_size=4", "stage.trainer.gradient_accumulation_steps=2",
       "stage.trainer.warmup_steps=1", "stage.trainer.learning_rate=1e-3", "stage.trainer.logging_steps=1",
       "report_to=[]"]
RLFT = [sys.executable, "-m", "rlft"]


def _files(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _steps(run_dir: Path) -> list[int]:
    """The step column of metrics.jsonl, less the end-of-training summary."""
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "train_runtime" not in r]


@pytest.mark.smoke
def test_a_second_run_stops_at_once_and_overwrite_keeps_the_old_run_until_the_new_one_is_done(
        tmp_path, run_cli, tiny_base):
    run_dir, kept = tmp_path / "run", tmp_path / ".run.previous"
    code, _, err = run_cli("train", *SFT, "max_steps=2", f"run_dir={run_dir}")  # a finished run
    assert code == 0, err
    old_model = _files(run_dir / "model")

    # B: overwrite=true with another config, in a process that will die in step 4 (SIGKILL)
    new = [*SFT, "max_steps=4", "stage.trainer.save_steps=2", "seed=1", f"run_dir={run_dir}"]
    with (tmp_path / "b.log").open("w") as log:
        b = subprocess.Popen([sys.executable, KILL_AT_STEP, "4", "train", *new, "overwrite=true"],
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(12000):  # hang guard only: B locks the dir once trl is imported
            text = (run_dir / ".rlft.lock").read_text() if (run_dir / ".rlft.lock").exists() else ""
            if f"pid {b.pid} " in text or b.poll() is not None:
                break
            time.sleep(0.05)
        assert b.poll() is None, (tmp_path / "b.log").read_text()[-3000:]
        os.kill(b.pid, signal.SIGSTOP)  # B holds the lock, frozen wherever it is
        before = _files(tmp_path)

        # C: the same command again, a real process; D: another config, no overwrite
        c = subprocess.run([*RLFT, "train", *new, "overwrite=true"], capture_output=True, text=True, timeout=600)
        assert c.returncode == 2, c.stderr[-3000:]
        assert f"run_dir '{run_dir}' is in use by another run (pid {b.pid} on " in error_line(c.stderr)
        code, _, err = run_cli("train", *SFT, "max_steps=2", "seed=2", f"run_dir={run_dir}")
        assert code == 2 and f"(pid {b.pid} on " in error_line(err)
        assert _files(tmp_path) == before  # neither touched B's files (nor the old run)
    finally:
        os.kill(b.pid, signal.SIGCONT)
        b.wait(timeout=600)
    assert b.returncode == -signal.SIGKILL, (tmp_path / "b.log").read_text()[-3000:]

    # B died mid-run: the run it was replacing is kept whole beside it, and the user is told where
    assert _files(kept / "model") == old_model and (kept / "DONE").exists()
    assert not (run_dir / "DONE").exists() and "seed: 1" in (run_dir / "config.yaml").read_text()
    assert [p.name for p in checkpoints(run_dir)] == ["checkpoint-2"]
    code, _, err = run_cli("train", *new)
    assert code == 2 and f"kept at {kept}" in error_line(err)

    # resume=true finishes B's run; only then does the old one go; no step is logged twice
    code, _, err = run_cli("train", *new, "resume=true")
    assert code == 0, err
    assert (run_dir / "DONE").exists() and not kept.exists()
    assert _steps(run_dir) == [1, 2, 3, 4]


@pytest.mark.smoke
def test_a_plain_rerun_after_a_failed_overwrite_keeps_the_set_aside_run(tmp_path, run_cli, tiny_base):
    """overwrite=true whose data path is a typo fails after setting the finished run aside; a plain
    rerun then would finish and delete it unasked: it is refused with the command that restores it.
    And overwrite=true that would start from a model inside the run dir it sets aside is refused."""
    run_dir, kept = tmp_path / "run", tmp_path / ".run.previous"
    code, _, err = run_cli("train", *SFT, "max_steps=2", f"run_dir={run_dir}")
    assert code == 0, err
    old_model = _files(run_dir / "model")
    typo = [a for a in SFT if not a.startswith("data.sft_dataset.n=")] + [
        "data=countdown_warmstart", f"data.sft_dataset.path={tmp_path}/typo.jsonl"]
    code, _, err = run_cli("train", *typo, "max_steps=2", "overwrite=true", f"run_dir={run_dir}")
    assert code == 2 and "typo.jsonl" in error_line(err) and _files(kept / "model") == old_model

    code, _, err = run_cli("train", *SFT, "max_steps=2", f"run_dir={run_dir}")
    line = error_line(err)
    assert code == 2 and f"kept at {kept.resolve()}" in line and f"mv {kept.resolve()} {run_dir}" in line
    assert _files(kept / "model") == old_model and not (run_dir / "DONE").exists()

    other = tmp_path / "other"
    code, _, err = run_cli("train", *SFT, "max_steps=2", f"run_dir={other}")
    assert code == 0, err
    before = _files(other)
    code, _, err = run_cli("train", *SFT, "max_steps=2", f"init_from={other}/model", "overwrite=true",
                           f"run_dir={other}")
    assert code == 2 and f"init_from={other}/model is inside run_dir" in error_line(err)
    assert {k: v for k, v in _files(other).items() if k != ".rlft.lock"} == {
        k: v for k, v in before.items() if k != ".rlft.lock"} and not (tmp_path / ".other.previous").exists()


def test_disk_full_while_saving_a_checkpoint(tmp_path, run_cli, tiny_base):
    """The run dir is a tmpfs with room for one checkpoint (about 3x the weights: weights and
    AdamW's two moments) but not two: the second save fills it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    room = int(4.5 * (Path(tiny_base) / "model.safetensors").stat().st_size) // 1024
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}k", "tmpfs", str(run_dir)],
                           capture_output=True, text=True)
    # these machines run the suite as root: a refused mount is a broken test setup, not a pass
    assert mount.returncode == 0, f"cannot mount a size-limited tmpfs (needs root): {mount.stderr.strip()}"
    try:
        args = [*SFT, "max_steps=4", "stage.trainer.save_steps=1", f"run_dir={run_dir}"]
        proc = subprocess.run([*RLFT, "train", *args], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2, proc.stderr[-3000:]
        line = error_line(proc.stderr)
        for notice in ("Failed to load CPU gemm_4bit_forward", "Setting accelerator to CPU", "'pin_memory'"):
            assert notice not in proc.stdout + proc.stderr  # a real process's console: no library noise (rlft.cli)
        cut_off = run_dir / "checkpoints" / "checkpoint-2"
        assert line.startswith(f"rlft: error: no space left on device writing {cut_off} (needs about "), line
        assert line.endswith(" free; the cut-off checkpoint was removed); free some space, then rerun with resume=true")
        # the checkpoint cut off by the full disk is gone; the one before is whole; nothing is DONE
        assert [p.name for p in checkpoints(run_dir)] == ["checkpoint-1"]
        assert checkpoint_problem(run_dir / "checkpoints" / "checkpoint-1") is None
        assert not (run_dir / "DONE").exists() and not (run_dir / "model").exists()

        # with room, resume=true continues from checkpoint-1 and finishes
        subprocess.run(["mount", "-o", "remount,size=64m", str(run_dir)], check=True)
        code, _, err = run_cli("train", *args, "resume=true")
        assert code == 0, err
        assert (run_dir / "DONE").exists() and _steps(run_dir) == [1, 2, 3, 4]
    finally:
        if subprocess.run(["umount", str(run_dir)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(run_dir)], capture_output=True)


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # the writer thread's traceback
def test_disk_full_under_tensorboard_names_its_dir_in_one_line(tmp_path, run_cli, tiny_base, monkeypatch):
    """Once the run dir is set up, run_dir/tensorboard is a 4 KB tmpfs: TensorBoard's writer thread
    fails and the main thread meets it at its next write; one line names the TensorBoard dir (not
    model/, not run_dir), no thread traceback, nothing DONE."""
    from rlft import rundir

    run_dir = tmp_path / "run"
    start = rundir.start

    def start_then_fill(cfg):
        out = start(cfg)
        (run_dir / "tensorboard").mkdir()
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(run_dir / "tensorboard")],
                               capture_output=True, text=True)
        assert mount.returncode == 0, f"cannot mount a size-limited tmpfs (needs root): {mount.stderr.strip()}"
        return out

    monkeypatch.setattr(rundir, "start", start_then_fill)
    try:
        code, _, err = run_cli("train", *SFT, f"init_from={tiny_base}", "max_steps=6", "report_to=[tensorboard]",
                               f"run_dir={run_dir}")
        assert code == 2
        line = error_line(err)
        assert line.startswith(f"rlft: error: no space left on device writing {run_dir / 'tensorboard'} ("), line
        assert "Exception in thread" not in err and not (run_dir / "DONE").exists()
    finally:
        if subprocess.run(["umount", str(run_dir / "tensorboard")], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(run_dir / "tensorboard")], capture_output=True)


@pytest.mark.slow
def test_a_cut_off_newest_checkpoint_is_named_and_resume_uses_the_one_before(tmp_path, run_cli, tiny_base):
    import torch

    args = [*SFT, "max_steps=4", "stage.trainer.save_steps=1"]
    reference = tmp_path / "reference"
    code, _, err = run_cli("train", *args, f"run_dir={reference}")
    assert code == 0, err

    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, KILL_AT_STEP, "4", "train", *args, f"run_dir={run_dir}"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [p.name for p in checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-3"]  # save_total_limit=2
    weights = run_dir / "checkpoints" / "checkpoint-3" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])  # a copy or a disk that lost its tail

    code, _, err = run_cli("train", *args, f"run_dir={run_dir}", "resume=true")
    assert code == 0, err
    notice = [line for line in err.splitlines() if line.startswith("rlft: checkpoint-3")]
    assert notice == [f"rlft: checkpoint-3 is damaged (model.safetensors: cut off at {size // 2} of {size} bytes): "
                      f"removed; resuming from {run_dir / 'checkpoints' / 'checkpoint-2'} instead"], err[-3000:]
    ours, theirs = state_dict(run_dir / "model"), state_dict(reference / "model")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert _steps(run_dir) == _steps(reference) == [1, 2, 3, 4]  # step 3, logged before the kill, once
