"""The tiny model builder and the model loader."""

import json
from pathlib import Path

import pytest

from rlft import models
from rlft.errors import UserError

SMALL = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)


def test_tiny_build_is_deterministic_cached_and_reloads_as_qwen2(tmp_path):
    a = Path(models.build_tiny_causal_lm(str(tmp_path / "a"), **SMALL))
    b = Path(models.build_tiny_causal_lm(str(tmp_path / "b"), **SMALL))
    assert a.name == b.name  # same arguments, same cache key
    for name in ("model.safetensors", "tokenizer.json", "config.json", models.MANIFEST):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert models.build_tiny_causal_lm(str(tmp_path / "a"), **SMALL) == str(a)  # cached, not rebuilt
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime
    assert json.loads((a / "config.json").read_text())["model_type"] == "qwen2"
    other = models.build_tiny_causal_lm(str(tmp_path / "a"), **{**SMALL, "hidden_size": 48})
    assert other != str(a)  # a changed preset never reuses a stale build


def test_reloaded_tokenizer_keeps_the_trained_ids(tmp_path):
    trained = models._train_tokenizer(300)
    path = models.build_tiny_causal_lm(str(tmp_path), **SMALL)
    reloaded = models.load_tokenizer(path)
    assert type(reloaded).__name__ == "Qwen2Tokenizer"
    text = "<|im_start|>user\nNumbers: 3 7 12. Target: 16.<|im_end|>\nHéllo wörld ١٢ 😀\n\n  x"
    assert reloaded(text)["input_ids"] == trained(text)["input_ids"]
    assert reloaded.decode(reloaded(text)["input_ids"]) == text
    assert reloaded.convert_tokens_to_ids("<|im_end|>") in models.stop_token_ids(reloaded)


def test_chat_template_masks_exactly_the_assistant_turn(tiny_base):
    tok = models.load_tokenizer(tiny_base)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Numbers: 1 2 3. Target: 6."},
                {"role": "assistant", "content": "<answer>1+2+3</answer>"}]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assistant = tok.decode([i for i, m in zip(ids, mask) if m])
    assert assistant == "<answer>1+2+3</answer><|im_end|>"
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tok.apply_chat_template(messages, tokenize=False).startswith(prompt)


def test_missing_model_is_one_line_naming_it(tmp_path):
    with pytest.raises(UserError, match=r"model 'no/such-model' not found: not a local directory and the hub is offline"):
        models.load_causal_lm("no/such-model")
    with pytest.raises(UserError, match="init_from: model dir .*does not exist"):
        models.resolve_model_path({"build": None, "path": "x"}, init_from=str(tmp_path / "nope"))
