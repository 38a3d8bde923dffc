"""Sampling for evaluation, one interface for both backends: `generate` returns completions for
rendered prompts from a transformers model (batched, left-padded, the KV cache) or from a
`VLLMPolicy` (vLLM on a GPU box: the same strings, grouped the same way), and
`load_sampling_policy` gives either from a model dir (generation_backend=transformers | vllm).
Every held-out answer, best-of-N sample, win-rate answer and stage=sample draw comes through
here; RLOO's training samples are TRL's, recorded by rlft.rloo.sampling.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from rlft import modelkind, preflight
from rlft.errors import UserError
from rlft.models import load_frozen_lm, stop_token_ids


@preflight.timed  # a pre-flight scales sampling time by held-out items
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    num_return_sequences: int = 1,
    desc: str = "sampling",
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
) -> list[str]:
    """Completions for rendered prompts, batched with left padding and the KV cache.

    Returns len(prompts) * num_return_sequences strings, grouped by prompt. Every decoding knob is
    passed explicitly, so a model's generation_config.json adds nothing (Qwen2.5-Instruct's would
    add repetition_penalty 1.1, top_k 20 and top_p 0.8). top_p applies when sampling;
    repetition_penalty (1.0: off) to greedy decoding too. A VLLMPolicy samples through vLLM
    instead (same strings, same grouping).
    """
    # Hydra reads `temperature=2` as an int, and transformers' logits processors refuse ints
    temperature, top_p, repetition_penalty = float(temperature), float(top_p), float(repetition_penalty)
    if hasattr(model, "generate_texts"):
        return model.generate_texts(prompts, max_new_tokens, do_sample, temperature, num_return_sequences, top_p,
                                    repetition_penalty)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    completions: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
            batch = tokenizer(
                prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            with torch.no_grad():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    temperature=temperature if do_sample else None,
                    top_p=top_p if do_sample else None,
                    top_k=None,
                    repetition_penalty=repetition_penalty,
                    num_return_sequences=num_return_sequences,
                    eos_token_id=stop_token_ids(tokenizer),
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = out[:, batch["input_ids"].shape[1] :]  # (B*n, T_new)
            completions += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return completions


def load_sampling_policy(path: str, tokenizer, dtype: str, backend: str, seed: int):
    """A model dir to sample from and not train (stage=bon, winrate, sample): transformers' model on
    the accelerator (`load_frozen_lm`), or on a GPU box with backend="vllm" a VLLMPolicy, which
    `generate` samples through instead."""
    if backend not in ("transformers", "vllm"):
        raise UserError(f"generation_backend={backend!r}: choose transformers or vllm")
    if backend == "vllm":
        return VLLMPolicy(path, dtype, stop_token_ids(tokenizer), seed)
    return load_frozen_lm(path, dtype)


class VLLMPolicy:
    """A model dir served by vLLM for sampling (stage=bon or stage=winrate with generation_backend=vllm,
    on a GPU box): `generate` hands its prompts here instead of transformers' generate, and
    results keep the same schema. Only generation goes through vLLM; nothing is trained."""

    def __init__(self, path: str, dtype: str, stop_ids: list[int], seed: int):
        modelkind.check_dir(path, modelkind.CAUSAL_LM)
        try:
            from vllm import LLM  # an optional extra (GPU boxes): rlft imports without it
        except ImportError:
            raise UserError("generation_backend=vllm needs the vllm package (pip install vllm, on a CUDA box); "
                            "or use generation_backend=transformers") from None
        self.llm = LLM(model=path, dtype=dtype, seed=seed)
        self.stop_ids = stop_ids

    def generate_texts(self, prompts: list[str], max_new_tokens: int, do_sample: bool, temperature: float,
                       num_return_sequences: int, top_p: float = 1.0, repetition_penalty: float = 1.0) -> list[str]:
        from vllm import SamplingParams  # an optional extra, present once __init__ has run

        params = SamplingParams(n=num_return_sequences, temperature=temperature if do_sample else 0.0,
                                top_p=top_p if do_sample else 1.0, repetition_penalty=repetition_penalty,
                                max_tokens=max_new_tokens, stop_token_ids=self.stop_ids)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [c.text for out in outputs for c in out.outputs]  # grouped by prompt, like transformers
