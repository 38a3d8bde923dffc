"""RLOO through the real CLI entry on the tiny model: verifier and reward-model rewards, full and LoRA."""

import json

import pytest
from conftest import changed_tensors, state_dict

pytestmark = pytest.mark.smoke

FAST = ["max_steps=2", "stage.trainer.logging_steps=1", "stage.trainer.learning_rate=1e-3",
        "stage.trainer.per_device_train_batch_size=8", "stage.trainer.gradient_accumulation_steps=1",
        "stage.trainer.max_completion_length=24", "stage.trainer.temperature=1.0", "data.heldout.n=8",
        "data.evaluate.max_new_tokens=24", "report_to=[]"]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_rloo_countdown_cli_contract(tmp_path, run_cli, countdown_sft, peft):
    run_dir = tmp_path / f"rloo_{peft}"
    code, out, err = run_cli("train", "stage=rloo", "model=tiny", "data=countdown_tiny", "reward=countdown",
                             f"init_from={countdown_sft}", f"run_dir={run_dir}", f"peft={peft}",
                             "data.prompt_dataset.n=64", *FAST)
    assert code == 0, err
    changed = changed_tensors(state_dict(countdown_sft), state_dict(run_dir / "model"))
    assert changed
    if peft == "lora":
        assert (run_dir / "adapter" / "adapter_config.json").is_file()
        assert all("proj" in k for k in changed)
    records = _records(run_dir)
    assert sum("loss" in r for r in records) == 2
    assert all(r["unscorable/countdown"] == 0 for r in records if "loss" in r)
    assert max(r["rewards/countdown/std"] for r in records if "loss" in r) > 1e-3  # the verifier's reward varied
    results = json.loads((run_dir / "results.json").read_text())
    assert results["heldout"]["accuracy"]["n"] == 8
    assert "| rloo | heldout | accuracy |" in out
    card = (run_dir / "model" / "README.md").read_text()
    assert "rlft.rloo.RLOOTrainer" in card and "k: 4" in card
    assert "old_logps: sampler" in card  # beta 0.03, on-policy: recorded while sampling (LoRA too)
    assert "prompts_dropped_over_length: 0 over " in card


@pytest.mark.parametrize("override,trainer", [("stage.algorithm._target_=trl.RLOOTrainer", "trl.RLOOTrainer"),
                                              ("+stage.algorithm.old_logps=forward", "rlft.rloo.RLOOTrainer")])
def test_rloo_trainer_class_and_options_from_the_config(tmp_path, run_cli, countdown_sft, override, trainer):
    run_dir = tmp_path / "rloo"
    code, out, err = run_cli("train", "stage=rloo", "model=tiny", "data=countdown_tiny", "reward=countdown",
                             f"init_from={countdown_sft}", f"run_dir={run_dir}", "data.prompt_dataset.n=64",
                             override, *FAST)
    assert code == 0, err
    assert changed_tensors(state_dict(countdown_sft), state_dict(run_dir / "model"))
    card = (run_dir / "model" / "README.md").read_text()
    assert f"trainer: {trainer}" in card
    assert "old_logps: forward" in card  # stock TRL's pass, or rlft's when asked for


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_rloo_reward_model_cli_contract(tmp_path, run_cli, tiny_base, peft):
    from rlft.config import build, compose

    rm_dir = build(compose(["reward_model=tiny"]).reward_model.build)  # an (untrained) RM scores variably
    run_dir = tmp_path / f"rloo_rm_{peft}"
    code, out, err = run_cli("train", "stage=rloo", "model=tiny", "data=ifcheck", "reward=reward_model", f"reward.path={rm_dir}",
                             f"init_from={tiny_base}", f"run_dir={run_dir}", f"peft={peft}",
                             "data.prompt_dataset.n=32", *FAST)
    assert code == 0, err
    assert changed_tensors(state_dict(tiny_base), state_dict(run_dir / "model"))
    records = _records(run_dir)
    assert all("rewards/reward_model/mean" in r for r in records if "loss" in r)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["vs_reference"]["wins"] + results["vs_reference"]["ties"] + results["vs_reference"]["losses"] == 8


def test_rloo_errors_name_the_problem(tmp_path, run_cli, tiny_base):
    code, _, err = run_cli("train", "stage=rloo", "data=smoltalk", f"init_from={tiny_base}", f"run_dir={tmp_path / 'a'}")
    assert code == 2 and "data=smoltalk has no prompt_dataset" in err
    code, _, err = run_cli("train", "stage=rloo", "data=ifcheck", "reward=reward_model", f"init_from={tiny_base}",
                           f"run_dir={tmp_path / 'b'}")
    assert code == 2 and "reward.path" in err
    code, _, err = run_cli("train", "stage=rloo", "data=ifcheck", "reward=reward_model", f"reward.path={tmp_path / 'nope'}",
                           f"init_from={tiny_base}", f"run_dir={tmp_path / 'c'}", "data.prompt_dataset.n=8")
    assert code == 2 and str(tmp_path / "nope") in err
    assert len(err.strip().splitlines()) == 1


def test_a_reward_that_never_scores_stops_the_run_in_one_line(tmp_path, run_cli, tiny_base):
    """reward=countdown on ifcheck prompts (no nums, no target): every batch unscorable. Guarded, the
    run would train to DONE on zeros; after stage.unscorable_patience batches it stops, naming the
    reward and why, and writes no model and no DONE."""
    run_dir = tmp_path / "never"
    code, _, err = run_cli("train", "stage=rloo", "model=tiny", "data=ifcheck", "reward=countdown",
                           f"init_from={tiny_base}", f"run_dir={run_dir}", "data.prompt_dataset.n=64",
                           "stage.unscorable_patience=2", *[a for a in FAST if a != "max_steps=2"], "max_steps=4")
    lines = [line for line in err.splitlines() if line.startswith("rlft: error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "reward countdown scored no sample in 2 batches in a row" in lines[0]
    assert "no nums, target column for the countdown task" in lines[0]
    assert not (run_dir / "DONE").exists() and not (run_dir / "model").exists()


def test_a_reward_model_whose_head_gives_nan_stops_the_run_in_one_line(tmp_path, run_cli, tiny_base):
    """A reward model whose every score is NaN (a broken head) marks every sample unscorable: after
    stage.unscorable_patience batches the run stops, naming the reward, with no model and no DONE."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from rlft import config

    rm = tmp_path / "nan_rm"
    shutil.copytree(config.build(config.compose(["reward_model=tiny"]).reward_model.build), rm,
                    ignore=shutil.ignore_patterns("manifest.json", "build.json"))  # a plain model dir
    weights = load_file(str(rm / "model.safetensors"))
    weights["score.weight"] = torch.full_like(weights["score.weight"], float("nan"))
    save_file(weights, str(rm / "model.safetensors"), metadata={"format": "pt"})
    run_dir = tmp_path / "nan"
    code, _, err = run_cli("train", "stage=rloo", "model=tiny", "data=ifcheck", "reward=reward_model",
                           f"reward.path={rm}", f"init_from={tiny_base}", f"run_dir={run_dir}",
                           "data.prompt_dataset.n=64", "stage.unscorable_patience=2",
                           *[a for a in FAST if a != "max_steps=2"], "max_steps=4")
    lines = [line for line in err.splitlines() if line.startswith("rlft: error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "reward reward_model scored no sample in 2 batches in a row" in lines[0], lines[0]
    assert not (run_dir / "DONE").exists() and not (run_dir / "model").exists()


def test_prompts_past_the_cap_or_the_models_positions_are_dropped_and_counted(tiny_base):
    """TRL 1.16 has no prompt cap: rlft keeps prompts of at most stage.max_prompt_length tokens
    (chat template applied) that leave max_completion_length positions free; none left is one line."""
    from types import SimpleNamespace

    import datasets

    from rlft import models
    from rlft.config import compose
    from rlft.errors import UserError
    from rlft.stages.rloo import _cap_prompts

    tok = models.load_tokenizer(tiny_base, "chatml")
    rows = [{"prompt": [{"role": "user", "content": "1 + 2 " * n}]} for n in (1, 5, 40, 200)]
    lengths = [len(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, return_dict=False)) for r in rows]
    ds = datasets.Dataset.from_list(rows)
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=10_000))
    cap = lengths[2]
    kept, dropped, at = _cap_prompts(ds, tok, model, compose(["stage=rloo", f"stage.max_prompt_length={cap}"]))
    assert (len(kept), dropped, at) == (3, 1, cap) and kept[2] == rows[2]
    short = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=lengths[1] + 256))  # 256 new tokens
    kept, dropped, at = _cap_prompts(ds, tok, short, compose(["stage=rloo", "stage.max_prompt_length=null"]))
    assert (len(kept), dropped, at) == (2, 2, lengths[1])
    with pytest.raises(UserError) as e:
        _cap_prompts(ds, tok, model, compose(["stage=rloo", "stage.max_prompt_length=3"]))
    assert str(e.value).startswith("stage.max_prompt_length=3: all 4 prompts of data.prompt_dataset are longer than 3")
