"""A sampling loop for transformers' `generate` that also returns each sampled token's log-prob.

    sampler = RecordingSampler(temperature=0.7)
    ids = model.generate(**inputs, generation_config=config, custom_generate=sampler)
    sampler.logps          # (batch, new tokens): log softmax(raw logits / temperature) at the sampled token

`generate` prepares everything as usual (generation config, the cache, its logits processors and
stopping criteria) and hands the decoding loop to `custom_generate` (transformers' documented
hook, same signature as GenerationMixin._sample). This loop is _sample's multinomial / greedy
loop for a decoder-only model, step for step: the same forward inputs, processors, token choice,
padding of finished rows and stopping, so with one seed it draws the same tokens (a test holds it
to stock generate). What it adds: at each step, before the processors touch the logits, the
log-prob of the chosen token under softmax(logits / temperature), which is exactly what TRL's
no-grad "old log-prob" forward recomputes afterwards over the whole sequence (to float error:
the forward sees the same tokens, with the cache instead of one pass).

Prompts repeated in the batch (RLOO draws k samples of each) are prefilled once each and their
cache rows copied, which saves (k-1)/k of the prompt pass.

Anything this loop does not cover (synced GPUs under ZeRO-3/FSDP, a streamer, dict outputs,
encoder-decoder or multimodal inputs, chunked prefill, a cache other than an empty in-memory
DynamicCache: static, offloaded, quantized) runs transformers' own _sample
and leaves `logps` None, so the caller knows to compute them the usual way.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
from transformers.generation.utils import GenerationMixin, _get_torch_distributed_world_size
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.integrations.fsdp import is_fsdp_managed_module

_PLAIN_INPUTS = {"attention_mask", "position_ids", "cache", "use_cache", "logits_to_keep"}


def shareable(cache) -> bool:
    """A cache whose rows can be copied per group (batch_select_indices): plain in-memory dynamic layers."""
    return (type(cache) is DynamicCache and not cache.offloading and bool(cache.layers)
            and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers))


def repeated_rows(*columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rows that repeat across `columns` (2-D tensors side by side, e.g. ids and mask): one
    representative row index per distinct row, and each row's group (an index into those), or
    None when every row is distinct."""
    rows = torch.cat(columns, 1)
    unique, group = torch.unique(rows, dim=0, return_inverse=True)
    if unique.size(0) == rows.size(0):
        return None
    first = torch.full((unique.size(0),), rows.size(0), device=rows.device, dtype=torch.long)
    return first.scatter_reduce(0, group, torch.arange(rows.size(0), device=rows.device), "amin"), group


class RecordingSampler:
    """custom_generate for `model.generate`; after each call `logps` holds the sampled tokens'
    log-probs (batch, new tokens; rows that had finished hold the pad token's, masked by callers)
    or None when the call fell back to transformers' own loop."""

    def __init__(self, temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.logps: torch.Tensor | None = None

    def covers(self, model, generation_config, synced_gpus: bool, streamer, model_kwargs: dict) -> bool:
        cache = model_kwargs.get("cache")
        return (not synced_gpus and streamer is None
                and not generation_config.return_dict_in_generate
                and not model.config.is_encoder_decoder
                and generation_config.prefill_chunk_size is None
                and model_kwargs.get("use_cache", False) and type(cache) is DynamicCache and not cache.offloading
                and cache.get_seq_length() == 0
                and set(model_kwargs) <= _PLAIN_INPUTS)

    def __call__(self, model, input_ids, logits_processor, stopping_criteria, generation_config,
                 synced_gpus=False, streamer=None, **model_kwargs):
        self.logps = None
        # generate drops synced_gpus / streamer before calling a custom_generate: work the former out as it
        # would (ZeRO-3 or FSDP across ranks: every rank must keep running forwards until all are done)
        synced_gpus = synced_gpus or ((is_deepspeed_zero3_enabled() or is_fsdp_managed_module(model))
                                      and _get_torch_distributed_world_size() > 1)
        if not self.covers(model, generation_config, synced_gpus, streamer, model_kwargs):
            return GenerationMixin._sample(model, input_ids, logits_processor=logits_processor,
                                           stopping_criteria=stopping_criteria, generation_config=generation_config,
                                           synced_gpus=synced_gpus, streamer=streamer, **model_kwargs)
        pad_token_id = generation_config._pad_token_tensor
        has_eos_stopping_criteria = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
        batch_size = input_ids.shape[0]
        unfinished = torch.ones(batch_size, dtype=torch.long, device=input_ids.device)
        if pad_token_id is not None:
            pad_token_id = pad_token_id.to(input_ids.device)
        attention_mask, cache = model_kwargs.get("attention_mask"), model_kwargs["cache"]
        extra = {"logits_to_keep": model_kwargs["logits_to_keep"]} if "logits_to_keep" in model_kwargs else {}
        position_ids = model_kwargs.get("position_ids")  # generate's, from the attention mask (left padding)
        logps = []
        logits = self._prefill(model, input_ids, attention_mask, position_ids, cache, extra)
        while True:
            # the log-prob TRL's old-log-prob forward would compute, before any processor (min_new_tokens,
            # top-k, ...) edits the distribution; processors may work in place, so this comes first
            step_logp = torch.log_softmax(logits / self.temperature if self.temperature != 1.0 else logits, dim=-1)
            scores = logits_processor(input_ids, logits)
            if generation_config.do_sample:
                next_tokens = torch.multinomial(torch.nn.functional.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                next_tokens = torch.argmax(scores, dim=-1)
            if has_eos_stopping_criteria:
                next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
            logps.append(step_logp.gather(1, next_tokens[:, None]))
            input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
            unfinished = unfinished & ~stopping_criteria(input_ids, scores)
            if unfinished.max() == 0:
                break
            if position_ids is not None:
                position_ids = position_ids[..., -1:] + 1
                extra["position_ids"] = position_ids
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones((batch_size, 1))], dim=-1)
            outputs = model(input_ids=next_tokens[:, None], attention_mask=attention_mask, cache=cache,
                            use_cache=True, return_dict=True, **extra)
            logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=input_ids.device)
            del outputs
        self.logps = torch.cat(logps, dim=1)
        return input_ids

    @staticmethod
    def _prefill(model, input_ids, attention_mask, position_ids, cache, extra) -> torch.Tensor:
        """The prompt pass. Prompts repeated in the batch (RLOO's k samples per prompt) run once each;
        their keys/values and next-token logits are then copied to every row that repeats them."""
        repeated = repeated_rows(*(x for x in (input_ids, attention_mask) if x is not None))
        group = None
        if repeated is not None and shareable(cache):  # one representative row per prompt
            first, group = repeated
            input_ids = input_ids[first]
            attention_mask = attention_mask[first] if attention_mask is not None else None
            position_ids = position_ids[..., first, :] if position_ids is not None else None
        if position_ids is not None:
            extra["position_ids"] = position_ids
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True,
                        return_dict=True, **extra)
        logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=input_ids.device)
        if group is not None:
            cache.batch_select_indices(group)
            logits = logits[group]
        return logits
