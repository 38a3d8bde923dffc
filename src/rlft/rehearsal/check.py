"""Probe the rehearsal hub the way a user's process does: hub ids through AutoConfig,
AutoTokenizer, AutoModel* and datasets.load_dataset, with HF_ENDPOINT pointing at the server.

    python -m rlft.rehearsal check --root HUB          # serves HUB, runs this in a fresh process
    python -m rlft.rehearsal.check                     # with the env of `python -m rlft.rehearsal env`

Prints one JSON object (what loaded, with which shapes and ids); run in a process whose
environment was set before huggingface_hub and datasets were imported (they read HF_ENDPOINT and
the offline switches at import time).
"""

from __future__ import annotations

import json
import sys

import datasets
import torch
import transformers
from huggingface_hub import constants

from rlft.rehearsal import hub

SPLITS = {
    hub.SMOLTALK: ["train", "test"],
    hub.ULTRAFEEDBACK: ["train_prefs", "test_prefs", "train_gen", "test_gen", "train_sft", "test_sft"],
    hub.WARMSTART: ["train", "test", "train+test"],  # train+test: the authors' SFT set (paper_math_sft)
    hub.COUNTDOWN_TASKS: ["train"],
}


def probe(forward: bool = True) -> dict:
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    out = {"endpoint": constants.ENDPOINT, "hub_offline": constants.HF_HUB_OFFLINE,
           "datasets_offline": datasets.config.HF_HUB_OFFLINE, "hf_home": constants.HF_HOME}
    for repo in (hub.QWEN_BASE, hub.QWEN_INSTRUCT):
        cfg = transformers.AutoConfig.from_pretrained(repo)
        tok = transformers.AutoTokenizer.from_pretrained(repo)
        r = {"model_type": cfg.model_type, "hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers,
             "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
             "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
             "tied": cfg.tie_word_embeddings, "rope_theta": (cfg.rope_parameters or {}).get("rope_theta"),
             "eos_token_id": cfg.eos_token_id, "tokenizer": type(tok).__name__, "len_tokenizer": len(tok),
             "ids": {s: tok(s, add_special_tokens=False)["input_ids"] for s in ("Hello", " world", "Hello world")},
             "special_ids": tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
             "eos_token": tok.eos_token, "pad_token": tok.pad_token,
             "chat": tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                             add_generation_prompt=True)}
        if forward and repo == hub.QWEN_BASE:
            model = transformers.AutoModelForCausalLM.from_pretrained(repo)
            with torch.no_grad():
                logits = model(torch.tensor([[9707, 1879]])).logits
            r |= {"model_class": type(model).__name__, "dtype": str(model.dtype), "logits_shape": list(logits.shape),
                  "params": sum(p.numel() for p in model.parameters()), "finite": bool(torch.isfinite(logits).all())}
            gen = transformers.GenerationConfig.from_pretrained(repo)
            r["generation_eos"] = gen.eos_token_id
        out[repo] = r
    for repo in (hub.DEBERTA_RM, hub.DISTILBERT):
        tok = transformers.AutoTokenizer.from_pretrained(repo)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(repo, num_labels=1)
        enc = tok("Hello world", "How are you?", return_tensors="pt")
        with torch.no_grad():
            score = model(**enc).logits
        cfg = model.config
        out[repo] = {"model_class": type(model).__name__, "tokenizer": type(tok).__name__,
                     "ids": enc["input_ids"][0].tolist(), "tokens": tok.convert_ids_to_tokens(enc["input_ids"][0]),
                     "hidden_size": getattr(cfg, "hidden_size", None), "heads": getattr(cfg, "num_attention_heads", None),
                     "vocab_size": cfg.vocab_size, "logits_shape": list(score.shape)}
    for repo, splits in SPLITS.items():
        out[repo] = {}
        for split in splits:
            ds = datasets.load_dataset(repo, split=split)
            out[repo][split] = {"rows": len(ds), "features": {k: str(v) for k, v in ds.features.items()}}
    return out


if __name__ == "__main__":
    json.dump(probe(forward="--no-forward" not in sys.argv), sys.stdout)
    print()
