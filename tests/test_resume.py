"""Exact resume: a run SIGKILLed mid-training and resumed with resume=true ends with the same
weights, bit for bit, as the same config run without interruption; and saving a model is atomic.

Each stage: the uninterrupted reference (in-process), the same run killed at the end of step 3
in a subprocess (tests/kill_at_step.py: the kill comes from the test side, with no hook in rlft),
then resume=true in-process. save_steps=2 and max_steps=4, so the killed run left checkpoint-2
and the resumed run trains steps 3 and 4 from it (not the final step: resuming from the
final-step checkpoint trains one step more in transformers 5.24, an upstream quirk).
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
        return ["stage=rm", "rm=bt", "reward_model=tiny", "data=ifcheck", "data.preference_dataset.n=64",
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


@pytest.mark.smoke
@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "rloo"])
def test_killed_run_resumes_bit_identical(stage, tmp_path, run_cli, request):
    import torch

    args, start = stage_args(stage, request)
    args = [*COMMON, *args]

    reference = tmp_path / "reference"
    code, _, err = run_cli("train", *args, f"run_dir={reference}")
    assert code == 0, err

    run_dir = tmp_path / "killed"
    proc = subprocess.run([sys.executable, str(KILL_AT_STEP), "3", "train", *args, f"run_dir={run_dir}"],
                          capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    # what a crash after step 3 leaves: checkpoint-2 only, no model, no DONE
    assert not (run_dir / "DONE").exists() and not (run_dir / "model").exists()
    assert not (run_dir / "results.json").exists()
    assert [p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]
    assert [s[0] for s in _trained_steps(run_dir)] == [1, 2]

    code, _, err = run_cli("train", *args, f"run_dir={run_dir}")  # not without resume=true
    assert code == 2 and "unfinished run (checkpoint-2)" in err and "resume=true" in err
    assert not (run_dir / "DONE").exists()

    code, _, err = run_cli("train", *args, f"run_dir={run_dir}", "resume=true")
    assert code == 0, err
    assert (run_dir / "DONE").exists()

    ours, theirs = state_dict(run_dir / "model"), state_dict(reference / "model")
    assert ours.keys() == theirs.keys()
    differ = [k for k in theirs if not torch.equal(ours[k], theirs[k])]
    assert not differ, f"{len(differ)} of {len(theirs)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"
    # the test has teeth: all four steps moved the weights, and the resumed run trained 3 and 4
    assert changed_tensors(state_dict(start), theirs)
    assert changed_tensors(state_dict(run_dir / "checkpoints" / "checkpoint-2"), ours)
    # every step saw the same batch, weights, optimizer state, learning rate and samples
    assert _trained_steps(run_dir) == _trained_steps(reference)


@pytest.mark.smoke
def test_failure_while_saving_the_model_keeps_the_last_good_state(tmp_path, run_cli, monkeypatch):
    """The final save (models.save_trained) dies halfway through writing the weights: a fresh run
    is left with no model/ and no DONE; a run whose model/ was already published (killed later,
    say during evaluation, and resumed) keeps that model/ byte for byte."""
    from transformers import PreTrainedModel

    run_dir = tmp_path / "sft"
    args = ["train", "stage=sft", "data=countdown_tiny", "data.sft_dataset.n=32", "data.evaluate=null", "max_steps=2",
            "stage.trainer.save_steps=1", "stage.trainer.per_device_train_batch_size=4", "report_to=[]",
            f"run_dir={run_dir}"]
    real_save = PreTrainedModel.save_pretrained

    def dies_halfway(self, save_directory, *a, **kw):
        real_save(self, save_directory, *a, **kw)
        if Path(save_directory).name == "model.partial":  # the final model, not a checkpoint
            weights = Path(save_directory) / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", dies_halfway)
    with pytest.raises(OSError, match="No space"):
        run_cli(*args)
    assert not any((run_dir / name).exists() for name in ("model", "model.partial", "DONE", "results.json"))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real_save)
    code, _, err = run_cli(*args, "resume=true")
    assert code == 0, err
    good = {p.name: p.read_bytes() for p in (run_dir / "model").iterdir()}
    (run_dir / "DONE").unlink()  # as if killed after publishing model/, before DONE

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", dies_halfway)
    with pytest.raises(OSError, match="No space"):
        run_cli(*args, "resume=true")
    assert {p.name: p.read_bytes() for p in (run_dir / "model").iterdir()} == good
    assert not (run_dir / "DONE").exists() and not (run_dir / "model.partial").exists()
