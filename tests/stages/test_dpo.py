"""DPO through the real CLI entry on the tiny model: full and LoRA."""

import json

import pytest
from conftest import changed_tensors, state_dict

pytestmark = pytest.mark.smoke

FAST = ["stage.trainer.logging_steps=1", "stage.trainer.learning_rate=1e-3", "stage.trainer.gradient_accumulation_steps=1",
        "stage.trainer.per_device_train_batch_size=4", "data.preference_dataset.n=64", "data.heldout.n=8",
        "data.evaluate.max_new_tokens=16"]


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_dpo_cli_contract(tmp_path, run_cli, tiny_base, peft):
    run_dir = tmp_path / f"dpo_{peft}"
    code, out, err = run_cli("train", "stage=dpo", "model=tiny", "data=ifcheck", f"init_from={tiny_base}",
                             f"run_dir={run_dir}", "max_steps=4", f"peft={peft}", *FAST)
    assert code == 0, err
    changed = changed_tensors(state_dict(tiny_base), state_dict(run_dir / "model"))
    assert changed
    if peft == "lora":
        assert (run_dir / "adapter" / "adapter_config.json").is_file()
        assert all("proj" in k for k in changed)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in r for r in records) and sum("loss" in r for r in records) == 4
    results = json.loads((run_dir / "results.json").read_text())
    assert {"heldout", "reference", "vs_reference"} <= set(results)
    vs = results["vs_reference"]
    assert vs["wins"] + vs["ties"] + vs["losses"] == 8
    assert "| vs_reference | win_rate |" in out
    assert "pairs_over_max_length: 0 (truncated by TRL" in (run_dir / "model" / "README.md").read_text()


def test_over_length_pairs_are_counted(tiny_base):
    from rlft import models
    from rlft.data import count_over_length, ifcheck_preference_dataset

    pairs = ifcheck_preference_dataset(20, seed=0)
    tok = models.load_tokenizer(tiny_base)
    assert count_over_length(tok, pairs, 10_000) == 0
    assert count_over_length(tok, pairs, 8) == 20
    assert count_over_length(tok, pairs, None) == 0


def test_the_reference_answers_are_read_from_its_run_when_it_judged_them_the_same_way(tmp_path, run_cli, tiny_base):
    """DPO's reference is its init_from model, whose SFT run already answered the held-out prompts:
    those answers are read from its results.json, not generated again; they are what a fresh pass
    gives (seed=1 changes nothing greedy decoding sees, but is not the SFT run's config: generated)."""
    sft = tmp_path / "sft"
    code, _, err = run_cli("train", "stage=sft", "model=tiny", "data=ifcheck", f"init_from={tiny_base}",
                           f"run_dir={sft}", "max_steps=2", "data.heldout.n=8", "data.evaluate.max_new_tokens=16")
    assert code == 0, err
    answers = {}
    for seed in (0, 1):
        run_dir = tmp_path / f"dpo_seed{seed}"
        code, _, err = run_cli("train", "stage=dpo", "model=tiny", "data=ifcheck", f"init_from={sft}/model",
                               f"run_dir={run_dir}", "max_steps=1", f"seed={seed}", *FAST)
        assert code == 0, err
        answers[seed] = json.loads((run_dir / "results.json").read_text())["reference"]
    assert answers[0]["recorded_in"] == str(sft / "results.json") and "recorded_in" not in answers[1]
    recorded = json.loads((sft / "results.json").read_text())["heldout"]
    assert answers[0]["scores"] == recorded["scores"]
    assert [s["response"] for s in answers[1]["samples"]] == [s["response"] for s in recorded["samples"]]
    assert answers[1]["scores"] == recorded["scores"]
