"""Reward models: one scoring contract, and the paper's three ways to train them.

The contract: `encode` turns (prompt messages, response) into a reward model's input ids the
same way at RM training, at RLOO time and at best-of-N time, so a reward model never scores
tokens it was not trained on (TRL re-tokenises decoded text with add_special_tokens=False at
RLOO time; rlft scores through `score` instead). Two formats:
  chat  the ChatML conversation (the policy's chat template), for decoder backbones (Qwen2)
  pair  tokenizer(prompt text, response): [CLS] prompt [SEP] response [SEP] for BERT-family
        backbones (DeBERTa, DistilBERT), as OpenAssistant's DeBERTa reward model expects
Over-long inputs are truncated from the left (the response end is what a reward model judges)
and counted; none is dropped. `flat` is the paper's authors' input: the whole conversation as one
"system\n...\nuser\n...\nassistant\n..." string, truncated from the right (experiment=paper_if_*
DistilBERT cells; reward_model.format=pair is rlft's default for BERT-family backbones).

Training (stage=rm, rm_loss=...; each class a `_target_` of configs/rm_loss/):
  bt          trl.RewardTrainer as it is: Bradley-Terry, -log sigmoid(r_c - r_r), chosen and rejected in one batch
  siamese     one shared encoder run separately on chosen and on rejected, the same loss
              (the paper's Siamese DistilBERT)
  regression  pointwise MSE of r(chosen), r(rejected) onto their scores, rescaled from 1..10 to
              -1..1 (targets=scaled), or the raw 1..10 scores as the paper's authors regress them
              (targets=raw: experiment=paper_if_rm_distilbert) (the paper's DistilBERT)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from trl import RewardTrainer

from rlft import models, preflight, stats

FORMATS = ("chat", "pair", "flat")


def prompt_text(messages: list[dict]) -> str:
    """The prompt as the `pair` format's first segment: its user (and assistant) turns, one per line,
    without the system turn."""
    return "\n".join(m["content"] for m in messages if m.get("role") != "system")


def flat_text(prompt: list[dict], response: str) -> str:
    """The `flat` format's one string, as the paper's authors fed their DistilBERT reward models:
    each turn (system turn included) as "role\ncontent", one after another."""
    return "\n".join(f"{m['role']}\n{m['content']}" for m in [*prompt, {"role": "assistant", "content": response}])


def encode(tokenizer, prompt: list[dict], response: str, fmt: str, max_length: int) -> tuple[list[int], bool]:
    """Input ids for the reward model, and whether they were truncated: from the left (chat, pair:
    the response's end is kept), or from the right for `flat` (the authors' tokenizer(truncation=True))."""
    if fmt == "chat":
        text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    elif fmt in ("pair", "flat"):
        ids = tokenizer(*((prompt_text(prompt), response) if fmt == "pair" else (flat_text(prompt, response),)),
                        add_special_tokens=True)["input_ids"]
    else:
        raise ValueError(f"unknown reward format {fmt!r}; use one of {FORMATS}")
    if len(ids) <= max_length:
        return ids, False
    if fmt == "flat":  # right-truncated; a closing [SEP] stays, as the tokenizer's own truncation keeps it
        sep = tokenizer.sep_token_id is not None and ids[-1] == tokenizer.sep_token_id
        return (ids[: max_length - 1] + [ids[-1]]) if sep else ids[:max_length], True
    keep = ids[-max_length:]
    if fmt == "pair" and tokenizer.cls_token_id is not None and ids[0] == tokenizer.cls_token_id:
        keep = [ids[0]] + ids[-(max_length - 1):]  # keep [CLS]: the DeBERTa head pools it
    return keep, True


def tokenize_pairs(dataset, tokenizer, fmt: str, max_length: int):
    """TRL preference rows -> rows with chosen_ids / rejected_ids made by `encode` (which TRL's
    RewardTrainer then uses as they are), and how many sides were truncated."""
    truncated = 0

    def one(row):
        nonlocal truncated
        c, tc = encode(tokenizer, row["prompt"], row["chosen"][-1]["content"], fmt, max_length)
        r, tr = encode(tokenizer, row["prompt"], row["rejected"][-1]["content"], fmt, max_length)
        truncated += tc + tr
        return {"chosen_ids": c, "rejected_ids": r}

    out = dataset.map(one, remove_columns=[c for c in dataset.column_names if c not in ("score_chosen", "score_rejected")],
                      desc="encoding pairs for the reward model")
    return out, truncated


def score(model, tokenizer, prompts: list[list[dict]], responses: list[str], fmt: str, max_length: int,
          batch_size: int = 32) -> list[float]:
    """Rewards for (prompt, response) pairs through the contract (right padding, as in training)."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rewards: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            ids = [torch.tensor(encode(tokenizer, p, r, fmt, max_length)[0])
                   for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])]
            input_ids = pad_sequence(ids, batch_first=True, padding_value=pad_id).to(device)  # (B, T)
            mask = pad_sequence([torch.ones_like(i) for i in ids], batch_first=True, padding_value=0).to(device)
            rewards += model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float().tolist()
    model.train(was_training)
    return rewards


def load_scorer(path: str, fmt: str, dtype: str = "float32"):
    """A trained reward model, on the accelerator (models.on_accelerator), and its tokenizer, ready
    for `score` (ChatML template for `chat`): the judge's and the RLOO reward's reward model."""
    model = models.on_accelerator(models.load_reward_model(path, dtype, scoring=True))
    model.eval()
    return model, models.load_tokenizer(path, chat_template="chatml" if fmt == "chat" else None, chat=fmt == "chat")


@preflight.timed
def pairwise_accuracy(model, tokenizer, dataset, fmt: str, max_length: int, batch_size: int = 32) -> dict:
    """Held-out pairwise accuracy: how often r(chosen) > r(rejected), with a Wilson 95% interval."""
    prompts = [row["prompt"] for row in dataset]
    chosen = score(model, tokenizer, prompts, [row["chosen"][-1]["content"] for row in dataset], fmt, max_length, batch_size)
    rejected = score(model, tokenizer, prompts, [row["rejected"][-1]["content"] for row in dataset], fmt, max_length,
                     batch_size)
    n = len(chosen)
    wins = sum(c > r for c, r in zip(chosen, rejected))
    return {"pairwise_accuracy": stats.proportion(wins, n),
            "mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / n}


# --------------------------------------------------------------------------- trainers (configs/rm_loss/)

class SiameseRewardTrainer(RewardTrainer):
    """trl.RewardTrainer whose loss runs the shared encoder on chosen and on rejected separately."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids, mask = inputs["input_ids"], inputs["attention_mask"]  # (2B, T): chosen rows then rejected
        half = ids.shape[0] // 2
        r_c = model(input_ids=ids[:half], attention_mask=mask[:half], use_cache=False).logits.squeeze(-1)  # (B,)
        r_r = model(input_ids=ids[half:], attention_mask=mask[half:], use_cache=False).logits.squeeze(-1)  # (B,)
        loss = -F.logsigmoid(r_c - r_r).mean()
        mode = "train" if model.training else "eval"
        self._metrics[mode]["accuracy"].append((r_c > r_r).float().mean().item())
        self._metrics[mode]["margin"].append((r_c - r_r).mean().item())
        return (loss, {"r_c": r_c, "r_r": r_r}) if return_outputs else loss


class RegressionRewardTrainer(RewardTrainer):
    """trl.RewardTrainer with a pointwise loss: MSE of each reward onto its score, either rescaled
    from 1..10 to -1..1 (targets="scaled", rlft's: rewards on the scale RLOO's KL coefficient is
    tuned for) or the raw 1..10 score (targets="raw", the paper's authors': against the same KL
    coefficient the reward then weighs ~4.5x more).

    Each batch also carries the rows' score_chosen and score_rejected: the collator (TRL's, or the
    one passed in) is wrapped to add them, and a row without them is refused."""

    def __init__(self, targets: Literal["scaled", "raw"] = "scaled", **kwargs):
        super().__init__(**kwargs)
        self.targets = targets
        self.data_collator = _with_scores(kwargs.get("data_collator") or self.data_collator)

    def _set_signature_columns_if_needed(self):
        self._signature_columns = ["chosen_ids", "rejected_ids", "score_chosen", "score_rejected"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        targets = torch.cat([inputs.pop("score_chosen"), inputs.pop("score_rejected")])  # (2B,)
        rewards = model(**inputs, use_cache=False).logits.squeeze(-1)  # (2B,): chosen rows then rejected
        targets = targets.to(rewards.dtype)
        loss = F.mse_loss(rewards, (targets - 5.5) / 4.5 if self.targets == "scaled" else targets)
        half = rewards.shape[0] // 2
        mode = "train" if model.training else "eval"
        self._metrics[mode]["accuracy"].append((rewards[:half] > rewards[half:]).float().mean().item())
        return (loss, {"rewards": rewards}) if return_outputs else loss


def _with_scores(collate):
    """`collate`, adding each row's score_chosen and score_rejected to the batch as float tensors."""

    def with_scores(examples):
        batch = collate(examples)
        for key in ("score_chosen", "score_rejected"):
            if any(e.get(key) is None for e in examples):
                raise ValueError(f"rm_loss=regression needs {key!r} on every row")
            batch[key] = torch.tensor([float(e[key]) for e in examples])
        return batch

    return with_scores

