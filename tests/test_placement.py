"""Device placement: every model a stage samples from or scores with sits on the process's
accelerator device, put there by the one helper (models.on_accelerator, asking
models.accelerator_device). Without a GPU the test controls the device: `meta`, which no model
loads to, so a model that skipped the helper is seen on the CPU where it is used
(conftest.record_model_uses). The CUDA twin of these checks is tests/test_gpu.py."""

import pytest
import torch
from conftest import record_model_uses

from rlft import models

META = torch.device("meta")


@pytest.fixture
def uses(monkeypatch):
    return record_model_uses(monkeypatch, META)


def assert_all_placed(uses, *expected: str) -> None:
    """Each use on the test's device, through the helper; every `expected` use seen."""
    bypassed = [(what, device) for what, device, through in uses if device != "meta" or not through]
    assert not bypassed, f"sampled or scored off the accelerator device (not through models.on_accelerator): {bypassed}"
    seen = {what for what, _, _ in uses}
    assert set(expected) <= seen, (expected, seen)


def _rm_dir():
    from rlft.config import build, compose

    return build(compose(["reward_model=tiny"]).reward_model.build)


# ---------------------------------------------------------------- the helper's own rules

def test_on_accelerator_moves_a_model_to_the_device_and_leaves_others_owners_alone(monkeypatch):
    monkeypatch.setattr(models, "accelerator_device", lambda: META)
    assert models.accelerator_device() == META

    plain = torch.nn.Linear(2, 2)
    assert models.on_accelerator(plain) is plain and plain.weight.device == META

    mapped = torch.nn.Linear(2, 2)  # loaded with a device_map (bitsandbytes 4-bit, or split over GPUs)
    mapped.hf_device_map = {"": 0}
    quantized = torch.nn.Linear(2, 2)  # transformers refuses .to() on a bitsandbytes model
    quantized.quantization_method = "bitsandbytes"
    zero3 = torch.nn.Linear(2, 2)  # DeepSpeed ZeRO-3: each rank holds a shard behind a placeholder
    for p in zero3.parameters():
        p.ds_id = 0
    for model in (mapped, quantized, zero3):
        assert models.on_accelerator(model) is model and model.weight.device.type == "cpu"

    class Served:  # a generation.VLLMPolicy: vLLM holds the weights
        pass

    served = Served()
    assert models.on_accelerator(served) is served


def test_load_frozen_lm_places_through_the_helper(monkeypatch, tiny_base):
    monkeypatch.setattr(models, "accelerator_device", lambda: META)
    assert next(models.load_frozen_lm(tiny_base).parameters()).device == META
    assert next(models.load_causal_lm(tiny_base).parameters()).device.type == "cpu"  # a Trainer places this one


# ---------------------------------------------------------------- every stage, through the real CLI

@pytest.mark.smoke
def test_bon_samples_and_its_reward_model_picks_on_the_device(tmp_path, run_cli, tiny_base, uses):
    code, _, err = run_cli("train", "stage=bon", "model=tiny", "data=countdown", f"init_from={tiny_base}", "n=2",
                           "num_prompts=2", "data.evaluate.max_new_tokens=4", "stage.sweep=[1,2]", "select=reward",
                           "reward=reward_model", f"reward.path={_rm_dir()}", f"run_dir={tmp_path / 'bon'}")
    assert code == 0, err
    assert_all_placed(uses, "countdown held-out", "reward_models.score")


@pytest.mark.smoke
def test_winrate_policy_reference_and_judge_on_the_device(tmp_path, run_cli, tiny_base, uses):
    code, _, err = run_cli("train", "stage=winrate", "model=tiny", "data=ifcheck", f"init_from={tiny_base}",
                           f"reference={tiny_base}", "judge=reward_model", f"judge.path={_rm_dir()}", "num_prompts=2",
                           "data.evaluate.max_new_tokens=4", f"run_dir={tmp_path / 'winrate'}")
    assert code == 0, err
    assert_all_placed(uses, "policy responses", "reference responses", "reward_models.score")


@pytest.mark.smoke
def test_sample_draws_on_the_device(tmp_path, run_cli, tiny_base, uses):
    code, _, err = run_cli("train", "stage=sample", "data=ifcheck", "k=2", "num_prompts=4", "stage.max_new_tokens=4",
                           "keep=pairs", f"init_from={tiny_base}", f"run_dir={tmp_path / 'sample'}")
    assert code in (0, 2), err  # 4 prompts x 2 short samples may all tie (nothing kept: one line); sampled either way
    assert_all_placed(uses, "ifcheck samples")


@pytest.mark.smoke
def test_off_the_shelf_reward_model_is_scored_on_the_device(tmp_path, run_cli, uses):
    code, _, err = run_cli("train", "stage=rm", "stage.train=false", "reward_model=tiny", "data=ifcheck",
                           "data.preference_heldout.n=4", f"run_dir={tmp_path / 'rm'}")
    assert code == 0, err
    assert_all_placed(uses, "reward_models.score")


TRAIN = ["max_steps=1", "stage.trainer.logging_steps=1", "stage.trainer.gradient_accumulation_steps=1",
         "data.heldout.n=2", "data.evaluate.max_new_tokens=4", "report_to=[]"]


@pytest.mark.smoke
def test_rloo_reward_model_and_the_merged_lora_model_evaluated_on_the_device(tmp_path, run_cli, tiny_base, uses):
    """The RLOO reward's reward model scores every batch on the device; after LoRA the merged model
    (and the reference it is compared with) answer the held-out prompts there."""
    code, _, err = run_cli("train", "stage=rloo", "model=tiny", "data=ifcheck", "reward=reward_model",
                           f"reward.path={_rm_dir()}", f"init_from={tiny_base}", "peft=lora", "data.prompt_dataset.n=8",
                           "stage.trainer.per_device_train_batch_size=4", "stage.trainer.max_completion_length=4",
                           *TRAIN, f"run_dir={tmp_path / 'rloo'}")
    assert code == 0, err
    assert_all_placed(uses, "reward_models.score", "ifcheck held-out")
    assert sum(what == "ifcheck held-out" for what, _, _ in uses) == 2  # the merged policy, then the reference


@pytest.mark.smoke
@pytest.mark.parametrize("peft", ["none", "lora"])
def test_dpo_policy_and_reference_evaluated_on_the_device(tmp_path, run_cli, tiny_base, uses, peft):
    code, _, err = run_cli("train", "stage=dpo", "model=tiny", "data=ifcheck", f"init_from={tiny_base}", f"peft={peft}",
                           "data.preference_dataset.n=4", "stage.trainer.per_device_train_batch_size=4", *TRAIN,
                           f"run_dir={tmp_path / 'dpo'}")
    assert code == 0, err
    assert_all_placed(uses, "ifcheck held-out")
    assert sum(what == "ifcheck held-out" for what, _, _ in uses) == 2


@pytest.mark.smoke
def test_sft_lora_merged_model_evaluated_on_the_device(tmp_path, run_cli, tiny_base, uses):
    code, _, err = run_cli("train", "stage=sft", "model=tiny", "data=countdown", "peft=lora", "data.sft_dataset.n=8",
                           "stage.trainer.per_device_train_batch_size=4", "stage.trainer.warmup_steps=0", *TRAIN,
                           f"run_dir={tmp_path / 'sft'}")
    assert code == 0, err
    assert_all_placed(uses, "countdown held-out")
