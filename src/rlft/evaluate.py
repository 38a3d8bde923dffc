"""Sampling from a policy and scoring it on held-out problems with a task's verifier."""

from __future__ import annotations

from rlft.metrics import mean_interval, wilson_interval


def chat_prompts(tokenizer, user_texts: list[str], system_prompt: str | None = None) -> list[str]:
    """Render user turns with the chat template, ending where the assistant starts."""
    out = []
    for text in user_texts:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": text})
        out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return out


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
) -> list[str]:
    """Completions for rendered prompts, batched with left padding and the KV cache.

    Returns len(prompts) * num_return_sequences strings, grouped by prompt.
    """
    import torch
    from tqdm.auto import tqdm

    from rlft.models import stop_token_ids

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
                    top_p=None,
                    top_k=None,
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


def countdown_heldout(model, tokenizer, problems: list[dict], template: str, system_prompt: str | None,
                      max_new_tokens: int = 64, batch_size: int = 64) -> dict:
    """Greedy answers on held-out Countdown problems, scored by the TinyZero verifier.

    Reports exact-match accuracy (Wilson 95% CI) and the mean TinyZero score (0/0.1/1, normal
    95% CI) both, since the paper's "accuracy" is the mean score with 0.1 format credit in it.
    """
    from rlft.tasks import countdown

    users = [countdown.make_prompt(p["nums"], p["target"], template) for p in problems]
    responses = generate(model, tokenizer, chat_prompts(tokenizer, users, system_prompt), max_new_tokens,
                         batch_size, desc="countdown held-out")
    scores = [countdown.score(r, p["nums"], p["target"]) for r, p in zip(responses, problems)]
    n = len(scores)
    correct = sum(s == countdown.CORRECT for s in scores)
    answered = sum(s > 0 for s in scores)
    return {
        "accuracy": {"value": correct / n, "ci95": list(wilson_interval(correct, n)), "n": n},
        "mean_score": {"value": sum(scores) / n, "ci95": list(mean_interval(scores)), "n": n},
        "answer_rate": {"value": answered / n, "ci95": list(wilson_interval(answered, n)), "n": n},
        "decoding": "greedy",
        "samples": [{"nums": p["nums"], "target": p["target"], "response": r, "score": s}
                    for p, r, s in list(zip(problems, responses, scores))[:20]],
    }
