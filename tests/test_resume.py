"""Exact resume: a run SIGKILLed (a crash) or SIGTERMed / SIGINTed (a scheduler's preemption,
Ctrl-C) mid-training and resumed with resume=true ends with the same weights, bit for bit, and the
same metrics.jsonl records (no step twice), as the same config run without interruption; and
saving a model is atomic.

Each case: the uninterrupted reference (in-process), the same run signalled in a subprocess
(tests/kill_at_step.py: the signal comes from the test side, with no hook in rlft), then
resume=true in-process. save_steps=2 and max_steps=4:
- SIGKILL at the end of step 4 leaves checkpoint-2 and steps 1-3 logged; the resumed run trains
  3 and 4 from checkpoint-2, and step 3's record is logged once (the log is cut back to step 2).
- SIGTERM / SIGINT while step 3 runs: rlft finishes step 3, saves checkpoint-3, says where and
  exits 143 / 130; the resumed run trains step 4 from it.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import changed_tensors, state_dict

KILL_AT_STEP = Path(__file__).with_name("kill_at_step.py")
COMMON = ["max_steps=4", "stage.trainer.save_steps=2", "stage.trainer.logging_steps=1", "report_to=[]"]


def stage_args(stage: str, request) -> tuple[list[str], str]:
    """(overrides, the model dir the stage starts from) for a small run of `stage`."""
    if stage == "sft":  # cosine schedule with warm-up: the learning rate differs every step
        start = request.getfixturevalue("tiny_base")
        return ["stage=sft", "data=countdown_tiny", "data.sft_dataset.n=64", "data.evaluate=null",
                "stage.trainer.per_device_train_batch_size=4", "stage.trainer.gradient_accumulation_steps=2",
                "stage.trainer.warmup_steps=1", "stage.trainer.learning_rate=1e-3"], start
    if stage == "rm":
        from rlft.config import build, compose

        start = build(compose(["reward_model=tiny"]).reward_model.build)
        return ["stage=rm", "rm_loss=bt", "reward_model=tiny", "data=ifcheck", "data.preference_dataset.n=64",
                "data.preference_heldout=null", "stage.trainer.per_device_train_batch_size=4",
                "stage.trainer.learning_rate=1e-3"], start
    if stage == "dpo":
        start = request.getfixturevalue("tiny_base")
        return ["stage=dpo", "data=ifcheck", f"init_from={start}", "data.preference_dataset.n=64",
                "data.evaluate=null", "stage.trainer.per_device_train_batch_size=4",
                "stage.trainer.gradient_accumulation_steps=1", "stage.trainer.learning_rate=1e-3"], start
    if stage == "rloo":  # accumulation 2: each generation batch is buffered and consumed over 2 micro-steps
        start = request.getfixturevalue("countdown_sft")
        return ["stage=rloo", "data=countdown_tiny", "reward=countdown", f"init_from={start}",
                "data.prompt_dataset.n=64", "data.evaluate=null", "stage.trainer.per_device_train_batch_size=8",
                "stage.trainer.gradient_accumulation_steps=2", "stage.trainer.max_completion_length=24",
                "stage.trainer.temperature=1.0", "stage.trainer.learning_rate=1e-4"], start
    raise ValueError(stage)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _trained_steps(run_dir: Path) -> list[tuple]:
    """What each logged optimizer step saw: step, loss, grad norm, learning rate (and RLOO's reward)."""
    return [(r["step"], r["loss"], r.get("grad_norm"), r.get("learning_rate"), r.get("reward"))
            for r in _records(run_dir) if "loss" in r]


def _steps(run_dir: Path) -> list[int]:
    """The step column of every record but the end-of-training summary."""
    return [r["step"] for r in _records(run_dir) if "train_runtime" not in r]


SLOW = pytest.mark.slow  # the same fault on another stage: the callback is shared, sft shows it in make test
CASES = [
    ("sft", "KILL"), ("rm", "KILL"), ("dpo", "KILL"), ("rloo", "KILL"), ("sft", "TERM"),
    pytest.param("sft", "INT", marks=SLOW), pytest.param("rm", "TERM", marks=SLOW),
    pytest.param("dpo", "TERM", marks=SLOW), pytest.param("rloo", "TERM", marks=SLOW),
]


@pytest.mark.smoke
@pytest.mark.parametrize("stage,sig", CASES)
def test_interrupted_run_resumes_bit_identical(stage, sig, tmp_path, run_cli, request):
    import torch

    args, start = stage_args(stage, request)
    args = [*COMMON, *args]

    reference = tmp_path / "reference"
    code, _, err = run_cli("train", *args, f"run_dir={reference}")
    assert code == 0, err

    run_dir = tmp_path / "interrupted"
    at = 4 if sig == "KILL" else 3
    proc = subprocess.run([sys.executable, str(KILL_AT_STEP), str(at), "--signal", sig, "train", *args,
                           f"run_dir={run_dir}"], capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert not (run_dir / "DONE").exists() and not (run_dir / "model").exists()
    assert not (run_dir / "results.json").exists()
    checkpoint = run_dir / "checkpoints" / "checkpoint-2"
    if sig == "KILL":  # what a crash in step 4 leaves: checkpoint-2, steps 1-3 logged
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        assert [p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]
        assert _steps(run_dir) == [1, 2, 3]
    else:  # preempted in step 3: step 3 finished, checkpointed, one line says where and how to go on
        signum = signal.Signals["SIG" + sig]
        assert proc.returncode == 128 + signum, proc.stderr[-3000:]
        checkpoint = run_dir / "checkpoints" / "checkpoint-3"
        saved = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
        assert saved == ["checkpoint-2", "checkpoint-3"]
        from rlft.rundir import checkpoint_problem

        assert checkpoint_problem(checkpoint) is None
        last = proc.stderr.strip().splitlines()[-1]
        assert last == (f"rlft: SIG{sig}: stopped at step 3; checkpoint saved to {checkpoint}; "
                        "to continue, rerun the same command with resume=true"), proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        assert _steps(run_dir) == [1, 2, 3]

    code, _, err = run_cli("train", *args, f"run_dir={run_dir}")  # not without resume=true
    assert code == 2 and f"unfinished run ({checkpoint.name})" in err and "resume=true" in err
    assert not (run_dir / "DONE").exists()

    code, _, err = run_cli("train", *args, f"run_dir={run_dir}", "resume=true")
    assert code == 0, err
    assert f"resuming from {checkpoint}" in err
    assert (run_dir / "DONE").exists()

    ours, theirs = state_dict(run_dir / "model"), state_dict(reference / "model")
    assert ours.keys() == theirs.keys()
    differ = [k for k in theirs if not torch.equal(ours[k], theirs[k])]
    assert not differ, f"{len(differ)} of {len(theirs)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"
    # the test has teeth: all four steps moved the weights, and the resumed run trained after the checkpoint
    assert changed_tensors(state_dict(start), theirs)
    assert changed_tensors(state_dict(checkpoint), ours)
    # every step saw the same batch, weights, optimizer state, learning rate and samples, and was logged once
    assert _trained_steps(run_dir) == _trained_steps(reference)
    steps = _steps(run_dir)
    assert steps == sorted(set(steps)) == [1, 2, 3, 4]


@pytest.mark.smoke
def test_failure_while_saving_the_model_keeps_the_last_good_state(tmp_path, run_cli, monkeypatch):
    """The final save (models.save_trained) dies halfway through writing the weights, the disk full:
    one line naming model/, exit 2; a fresh run is left with no model/ and no DONE; a run whose
    model/ was already published (killed later, say during evaluation, and resumed) keeps that
    model/ byte for byte. Resuming from the last step's checkpoint trains nothing more."""
    from transformers import PreTrainedModel

    run_dir = tmp_path / "sft"
    args = ["train", "stage=sft", "data=countdown_tiny", "data.sft_dataset.n=32", "data.evaluate=null", "max_steps=2",
            "stage.trainer.save_steps=1", "stage.trainer.logging_steps=1",
            "stage.trainer.per_device_train_batch_size=4", "report_to=[]", f"run_dir={run_dir}"]
    real_save = PreTrainedModel.save_pretrained

    def dies_halfway(self, save_directory, *a, **kw):
        real_save(self, save_directory, *a, **kw)
        if Path(save_directory).name == "model.partial":  # the final model, not a checkpoint
            weights = Path(save_directory) / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", dies_halfway)
    code, _, err = run_cli(*args)
    assert code == 2 and f"rlft: error: no space left on device writing {run_dir / 'model'} (needs about " in err
    assert "Traceback" not in err
    assert not any((run_dir / name).exists() for name in ("model", "model.partial", "DONE", "results.json"))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real_save)
    code, _, err = run_cli(*args, "resume=true")
    assert code == 0, err
    assert [r["step"] for r in _records(run_dir) if "loss" in r] == [1, 2]  # no step 3 past max_steps=2
    good = {p.name: p.read_bytes() for p in (run_dir / "model").iterdir()}
    (run_dir / "DONE").unlink()  # as if killed after publishing model/, before DONE

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", dies_halfway)
    code, _, err = run_cli(*args, "resume=true")
    assert code == 2 and "no space left on device" in err
    assert {p.name: p.read_bytes() for p in (run_dir / "model").iterdir()} == good
    assert not (run_dir / "DONE").exists() and not (run_dir / "model.partial").exists()
