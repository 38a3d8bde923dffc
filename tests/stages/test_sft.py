"""SFT through the real CLI entry on the tiny model: the CLI contract of the spine issue."""

import json
from pathlib import Path

import pytest
from conftest import changed_tensors, state_dict, write_jsonl

pytestmark = pytest.mark.smoke

FAST = ["stage.trainer.logging_steps=1", "stage.trainer.warmup_steps=0", "stage.trainer.learning_rate=1e-3",
        "data.heldout.n=8", "data.evaluate.max_new_tokens=16"]


def test_sft_full_contract(tmp_path, run_cli, tiny_base):
    run_dir = tmp_path / "sft"
    code, out, err = run_cli("train", "stage=sft", "model=tiny", "data=countdown", f"run_dir={run_dir}",
                             "max_steps=4", *FAST)
    assert code == 0, err
    for name in ("config.yaml", "env.json", "metrics.jsonl", "results.json", "DONE", "model/README.md"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "model")  # reloads
    assert changed_tensors(state_dict(tiny_base), state_dict(run_dir / "model"))

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and all(loss > 0 for loss in losses)

    env = json.loads((run_dir / "env.json").read_text())
    assert env["seed"] == 0 and env["packages"]["trl"] == "1.16.0"
    assert "max_steps: 4" in (run_dir / "config.yaml").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["heldout"]["accuracy"]["n"] == 8
    assert "| heldout | accuracy |" in out
    assert "stage `sft`" in (run_dir / "model" / "README.md").read_text()

    # A finished run dir is never overwritten without overwrite=true ...
    before = (run_dir / "model" / "model.safetensors").read_bytes()
    code, _, err = run_cli("train", "stage=sft", f"run_dir={run_dir}", "max_steps=1")
    assert code == 2 and "finished run (DONE)" in err and "overwrite=true" in err
    assert (run_dir / "model" / "model.safetensors").read_bytes() == before
    # ... and a second stage can start from it.
    code, _, err = run_cli("train", "stage=sft", f"run_dir={tmp_path / 'again'}", f"init_from={run_dir / 'model'}",
                           "max_steps=1", "data.sft_dataset.n=64", "keep_checkpoints=false", *FAST)
    assert code == 0, err
    # checkpoints serve resume only: kept by default, dropped once DONE with keep_checkpoints=false
    assert list((run_dir / "checkpoints").glob("checkpoint-*"))
    assert (tmp_path / "again" / "DONE").is_file() and not (tmp_path / "again" / "checkpoints").exists()
    assert f"base model: `{run_dir / 'model'}`" in (tmp_path / "again" / "model" / "README.md").read_text()


def test_sft_lora_saves_adapter_and_merged_model(tmp_path, run_cli, tiny_base):
    run_dir = tmp_path / "lora"
    code, _, err = run_cli("train", "stage=sft", "model=tiny", "data=countdown", "peft=lora", f"run_dir={run_dir}",
                           "max_steps=4", "data.sft_dataset.n=256", *FAST)
    assert code == 0, err
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "model")
    changed = changed_tensors(state_dict(tiny_base), state_dict(run_dir / "model"))
    assert changed and all(any(p in k for p in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed)


def test_sft_qlora_on_cpu(tmp_path, run_cli, tiny_base):
    run_dir = tmp_path / "qlora"
    code, _, err = run_cli("train", "stage=sft", "peft=qlora", f"run_dir={run_dir}", "max_steps=2",
                           "data.sft_dataset.n=32", "stage.trainer.per_device_train_batch_size=4", *FAST)
    assert code == 0, err
    changed = changed_tensors(state_dict(tiny_base), state_dict(run_dir / "model"))
    assert changed and all("proj" in k for k in changed)
    assert "quantization: 4bit" in (Path(run_dir) / "config.yaml").read_text()


def test_sft_on_local_smoltalk_and_warmstart_files(tmp_path, run_cli):
    chats = write_jsonl(tmp_path / "smol.jsonl", [{"messages": [
        {"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}."},
        {"role": "user", "content": "again"}, {"role": "assistant", "content": "no"}]} for i in range(16)])
    with chats.open("a") as f:  # one chat longer than max_length: truncated by TRL, counted by rlft
        f.write(json.dumps({"messages": [{"role": "user", "content": "long " * 300},
                                         {"role": "assistant", "content": "ok"}]}) + "\n")
        f.write(json.dumps({"messages": [{"role": "user", "content": "unanswered"}]}) + "\n")  # dropped, counted
    code, _, err = run_cli("train", "data=smoltalk", f"data.sft_dataset.path={chats}", f"run_dir={tmp_path / 'smol'}",
                           "max_steps=2", "stage.trainer.per_device_train_batch_size=4", "stage.trainer.max_length=128",
                           *FAST[:3])
    assert code == 0, err
    assert not (tmp_path / "smol" / "results.json").exists()  # no verifier for chat data
    card = (tmp_path / "smol" / "model" / "README.md").read_text()
    assert "rows_over_max_length: 1 (truncated by TRL" in card
    assert "(17 training rows)" in card and "rows_dropped: 1 of 18 (1 no user->assistant start)" in card

    warm = write_jsonl(tmp_path / "warm.jsonl", [{"query": f"Using the numbers [{i}, 1], make {i + 1}.",
                                                  "completion": f"<answer>{i}+1</answer>"} for i in range(16)])
    code, _, err = run_cli("train", "data=countdown_warmstart", f"data.sft_dataset.path={warm}",
                           f"run_dir={tmp_path / 'warm'}", "max_steps=2", "stage.trainer.per_device_train_batch_size=4",
                           *FAST)
    assert code == 0, err
    assert json.loads((tmp_path / "warm" / "results.json").read_text())["heldout"]["accuracy"]["n"] == 8


def test_unfinished_run_needs_resume_or_overwrite_and_resumes_exactly(tmp_path, run_cli):
    import shutil

    run_dir = tmp_path / "r"
    args = ["train", f"run_dir={run_dir}", "max_steps=2", "stage.trainer.save_steps=1", "data.sft_dataset.n=64",
            "stage.trainer.per_device_train_batch_size=4", *FAST]
    assert run_cli(*args)[0] == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step2_loss = next(r["loss"] for r in records if r["step"] == 2 and "loss" in r)
    (run_dir / "DONE").unlink()  # as if killed after checkpoint-1, before step 2 was saved
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-2")
    code, _, err = run_cli(*args)
    assert code == 2 and "unfinished run (checkpoint-1)" in err and "resume=true" in err
    code, _, err = run_cli(*args, "resume=true")
    assert code == 0, err
    assert (run_dir / "DONE").exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2]  # step 1 not trained again; step 2's first log cut on resume
    assert losses[-1]["loss"] == step2_loss  # same data position, weights, optimizer and RNG
