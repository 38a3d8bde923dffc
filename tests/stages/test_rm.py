"""Reward models: the three variants through the real CLI entry, and the scoring contract."""

import json

import pytest
from conftest import changed_tensors, state_dict

from rlft import reward_models


@pytest.mark.smoke
@pytest.mark.parametrize("variant,backbone,peft", [("bt", "tiny", "none"), ("siamese", "tiny_deberta", "none"),
                                                  ("regression", "tiny", "none"), ("bt", "tiny", "lora")])
def test_rm_cli_contract(tmp_path, run_cli, variant, backbone, peft):
    run_dir = tmp_path / variant
    code, out, err = run_cli("train", "stage=rm", f"rm_loss={variant}", f"reward_model={backbone}", "data=ifcheck", f"peft={peft}",
                             f"run_dir={run_dir}", "max_steps=4", "stage.trainer.logging_steps=1",
                             "stage.trainer.learning_rate=1e-3", "data.preference_dataset.n=128",
                             "data.preference_heldout.n=16")
    assert code == 0, err
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    from rlft.config import build, compose

    base_dir = build(compose([f"reward_model={backbone}"]).reward_model.build)
    assert changed_tensors(state_dict(base_dir), state_dict(run_dir / "model"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in records) == 4 and any("accuracy" in r for r in records)
    acc = json.loads((run_dir / "results.json").read_text())["heldout"]["pairwise_accuracy"]
    assert acc["n"] == 16 and 0.0 <= acc["ci95"][0] <= acc["value"] <= acc["ci95"][1] <= 1.0
    assert f"variant: {variant}" in (run_dir / "model" / "README.md").read_text()
    assert (run_dir / "adapter" / "adapter_config.json").is_file() == (peft == "lora")


def bert_tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "write", "about", "rain", "it", "is", "wet", ".", "'",
             "system", "user", "assistant", "be", "brief"]
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})


def test_contract_pair_format_has_bert_special_tokens_and_keeps_cls_when_truncating(tmp_path):
    tok = bert_tokenizer(tmp_path)
    prompt = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "write about rain ."}]
    ids, truncated = reward_models.encode(tok, prompt, "it is wet .", "pair", max_length=64)
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "write", "about", "rain", ".", "[SEP]", "it", "is", "wet", ".", "[SEP]"]
    assert not truncated
    short, truncated = reward_models.encode(tok, prompt, "it is wet .", "pair", max_length=6)
    assert truncated and tok.convert_ids_to_tokens(short) == ["[CLS]", "it", "is", "wet", ".", "[SEP]"]


def test_contract_flat_format_is_the_authors_one_string_cut_from_the_right(tmp_path):
    """reward_model=distilbert (the paper's cells): system, user and assistant turns as one string,
    right-truncated as the authors' tokenizer(truncation=True) cuts it, the closing [SEP] kept."""
    tok = bert_tokenizer(tmp_path)
    prompt = [{"role": "system", "content": "be brief ."}, {"role": "user", "content": "write about rain ."}]
    ids, truncated = reward_models.encode(tok, prompt, "it is wet .", "flat", max_length=64)
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "system", "be", "brief", ".", "user", "write", "about", "rain",
                                              ".", "assistant", "it", "is", "wet", ".", "[SEP]"]
    assert not truncated
    short, truncated = reward_models.encode(tok, prompt, "it is wet .", "flat", max_length=6)
    assert truncated and tok.convert_ids_to_tokens(short) == ["[CLS]", "system", "be", "brief", ".", "[SEP]"]
    from rlft.config import compose

    for cell in ("paper_if_rm_distilbert", "paper_if_rm_siamese_distilbert", "paper_if_rloo_distilbert",
                 "paper_if_rloo_siamese_distilbert_lora"):  # trained and rewarded on the same input
        assert compose([f"experiment={cell}"]).reward_model.format == "flat", cell


@pytest.mark.parametrize("targets,expected", [("scaled", [0.0, -1.0]), ("raw", [5.5, 1.0])])
def test_regression_targets_are_rescaled_or_the_authors_raw_scores(targets, expected):
    """rm_loss=regression fits r(chosen), r(rejected) to score_chosen, score_rejected: on -1..1
    (rlft's) or on the raw 1..10 scale (rm_loss.trainer.targets=raw, experiment=paper_if_rm_distilbert)."""
    from collections import defaultdict
    from types import SimpleNamespace

    import torch

    from rlft.config import compose

    rewards = torch.tensor([[0.5], [0.25]])  # r(chosen), r(rejected)
    fake = SimpleNamespace(targets=targets, _metrics={"train": defaultdict(list)})
    inputs = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "score_chosen": torch.tensor([5.5]),
              "score_rejected": torch.tensor([1.0])}

    class Model(torch.nn.Module):
        def forward(self, **kw):
            return SimpleNamespace(logits=rewards)

    model = Model().train()
    loss = reward_models.RegressionRewardTrainer.compute_loss(fake, model, inputs)
    assert loss.item() == pytest.approx(torch.nn.functional.mse_loss(rewards[:, 0], torch.tensor(expected)).item())
    assert compose(["experiment=paper_if_rm_distilbert"]).rm_loss.trainer.targets == "raw"
    assert compose(["stage=rm", "rm_loss=regression"]).rm_loss.trainer.targets == "scaled"


@pytest.mark.parametrize("backbone", ["tiny", "tiny_deberta"])
def test_rm_trains_on_exactly_the_ids_it_is_scored_on(backbone, tmp_path):
    """The dataset handed to TRL is the contract's encoding, and `score` feeds the model the same ids."""
    import torch

    from rlft import models
    from rlft.config import build, compose
    from rlft.data import ifcheck_preference_dataset

    cfg = compose([f"reward_model={backbone}"])
    path = build(cfg.reward_model.build)
    tok = models.load_tokenizer(path, "chatml" if cfg.reward_model.format == "chat" else None)
    pairs = ifcheck_preference_dataset(4, seed=0)
    encoded, _ = reward_models.tokenize_pairs(pairs, tok, cfg.reward_model.format, cfg.reward_model.max_length)
    model = models.load_reward_model(path)
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True)
    scores = reward_models.score(model, tok, [pairs[0]["prompt"]], [pairs[0]["chosen"][-1]["content"]],
                          cfg.reward_model.format, cfg.reward_model.max_length)
    assert seen[0][0].tolist() == encoded[0]["chosen_ids"]
    if cfg.reward_model.format == "chat":  # decoder RM: the whole ChatML conversation, unchanged by TRL
        assert tok.decode(encoded[0]["chosen_ids"]).startswith("<|im_start|>user\n")
    with torch.no_grad():  # the score is the model's output on exactly those ids
        expected = model(input_ids=torch.tensor([encoded[0]["chosen_ids"]])).logits[0, 0].item()
    assert scores == [pytest.approx(expected, abs=1e-6)]


@pytest.mark.smoke
def test_rm_off_the_shelf_is_evaluated_not_trained(tmp_path, run_cli):
    """stage.train=false (experiment=paper_if_rm_deberta): the reward model's held-out pairwise
    accuracy as it was downloaded, through the same contract; nothing trained, no model/ written."""
    from rlft import models
    from rlft.config import build, compose

    run_dir = tmp_path / "offshelf"
    code, out, err = run_cli("train", "stage=rm", "stage.train=false", "reward_model=tiny", "data=ifcheck",
                             "data.preference_heldout.n=16", f"run_dir={run_dir}")
    assert code == 0, err
    assert (run_dir / "DONE").is_file() and not (run_dir / "model").exists()
    got = json.loads((run_dir / "results.json").read_text())["heldout"]["pairwise_accuracy"]
    cfg = compose(["stage=rm", "reward_model=tiny", "data=ifcheck", "data.preference_heldout.n=16"])
    path = build(cfg.reward_model.build)
    fmt = cfg.reward_model.format
    tokenizer = models.load_tokenizer(path, cfg.model.chat_template if fmt == "chat" else None)
    expected = reward_models.pairwise_accuracy(models.load_reward_model(path), tokenizer,
                                        build(cfg.data.preference_heldout), cfg.reward_model.format,
                                        cfg.reward_model.max_length)["pairwise_accuracy"]
    assert got == expected and got["n"] == 16
