"""rlft.rloo.sampling.RecordingSampler: through `generate(custom_generate=...)` it draws the tokens stock
generate draws from the same seed, and its log-probs are the ones a full forward recomputes."""

import pytest
import torch
from transformers import GenerationConfig

from rlft import models
from rlft.rloo.sampling import RecordingSampler


@pytest.fixture(scope="module")
def lm(tiny_base):
    model, tokenizer = models.load_causal_lm(tiny_base), models.load_tokenizer(tiny_base)
    tokenizer.padding_side = "left"
    texts = [f"{'a ' * (i % 5)}problem {i} asks for {i * 13 % 29}" for i in range(12)]  # ragged: left padding
    return model, tokenizer, tokenizer(texts, return_tensors="pt", padding=True)


def _config(tokenizer, **kwargs):
    base = dict(max_new_tokens=24, do_sample=True, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, temperature=1.0, top_p=1.0, top_k=0, disable_compile=True)
    return GenerationConfig(**{**base, **kwargs})


def _stock_and_ours(model, inputs, config, sampler, seed):
    """The same seed through stock generate and through the sampler; asserts the same tokens."""
    torch.manual_seed(seed)
    stock = model.generate(**inputs, generation_config=config)
    torch.manual_seed(seed)
    ours = model.generate(**inputs, generation_config=config, custom_generate=sampler)
    assert torch.equal(ours, stock)
    return ours, ours[:, inputs["input_ids"].shape[1]:]


def _full_forward_logps(model, inputs, sequences, temperature):
    prompt = inputs["input_ids"].shape[1]
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(sequences[:, prompt:])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=sequences, attention_mask=mask).logits[:, prompt - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(2, sequences[:, prompt:, None]).squeeze(2)


@pytest.mark.parametrize("kwargs", [
    {},
    {"temperature": 0.7, "min_new_tokens": 24},               # temperature warper + EOS masked for every step
    {"temperature": 1.3, "top_k": 7, "repetition_penalty": 1.2},  # processors that reshape the distribution
    {"do_sample": False},                                     # greedy
])
def test_same_tokens_as_stock_generate_and_log_probs_of_a_full_forward(lm, kwargs):
    model, tokenizer, inputs = lm
    config = _config(tokenizer, **kwargs)
    sampler = RecordingSampler(config.temperature)
    ours, new = _stock_and_ours(model, inputs, config, sampler, seed=0)
    assert sampler.logps.shape == new.shape
    live = torch.ones_like(new, dtype=torch.bool)  # up to and including each row's EOS
    is_eos = new == tokenizer.eos_token_id
    live[:, 1:] = (is_eos.cumsum(1) - is_eos.long())[:, 1:] == 0
    expected = _full_forward_logps(model, inputs, ours, config.temperature)
    # the forward recomputes with one pass instead of the cache: float error only (fp32)
    torch.testing.assert_close(sampler.logps[live], expected[live], atol=2e-5, rtol=1e-5)
    assert (sampler.logps[live] <= 0).all() and sampler.logps[live].min() > -20


def test_repeated_prompts_prefill_once_and_draw_what_stock_draws(lm, monkeypatch):
    model, tokenizer, inputs = lm
    repeated = {key: value[:6].repeat_interleave(4, dim=0) for key, value in inputs.items()}  # RLOO's k = 4
    config = _config(tokenizer, temperature=0.9)
    sampler = RecordingSampler(0.9)
    prefill_rows = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: prefill_rows.append(k["input_ids"].shape) or forward(*a, **k))
    torch.manual_seed(3)
    ours = model.generate(**repeated, generation_config=config, custom_generate=sampler)
    assert prefill_rows[0][0] == 6 and all(shape == (24, 1) for shape in prefill_rows[1:])
    monkeypatch.undo()
    torch.manual_seed(3)
    stock = model.generate(**repeated, generation_config=config)
    assert torch.equal(ours, stock)
    torch.testing.assert_close(sampler.logps, _full_forward_logps(model, repeated, ours, 0.9), atol=2e-5, rtol=1e-5)


def test_rows_finish_at_eos_and_are_padded_like_stock(lm):
    model, tokenizer, inputs = lm
    # one token in eight ends a row: rows stop at different steps and the loop ends before max_new_tokens
    stops = list(range(3, 1024, 8))
    config = _config(tokenizer, max_new_tokens=200, eos_token_id=stops)
    sampler = RecordingSampler()
    ours, new = _stock_and_ours(model, inputs, config, sampler, seed=1)
    ends = torch.isin(new, torch.tensor(stops)).int().argmax(1)
    assert new.shape[1] < 200 and len(set(ends.tolist())) >= 3  # rows ended at several different steps
    for row, end in zip(new, ends):
        assert (row[end + 1:] == tokenizer.pad_token_id).all()
    assert sampler.logps.shape == new.shape


def test_what_it_does_not_cover_runs_transformers_loop_and_says_so(lm):
    model, tokenizer, inputs = lm
    config = _config(tokenizer, return_dict_in_generate=True)
    sampler = RecordingSampler()
    torch.manual_seed(0)
    stock = model.generate(**inputs, generation_config=config).sequences
    torch.manual_seed(0)
    ours = model.generate(**inputs, generation_config=config, custom_generate=sampler).sequences
    assert torch.equal(ours, stock) and sampler.logps is None
    # a static cache (rows cannot be copied; TRL's cache_implementation can ask for it): transformers' loop
    config = _config(tokenizer, cache_implementation="static")
    sampler = RecordingSampler()
    _stock_and_ours(model, inputs, config, sampler, seed=0)
    assert sampler.logps is None
    with pytest.raises(ValueError, match="temperature"):
        RecordingSampler(0.0)
