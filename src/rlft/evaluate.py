"""Scoring a policy on held-out rows through their task (rlft.tasks); its answers come from
rlft.generation."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf
from transformers import set_seed

from rlft import generation, stats
from rlft.stats import expected_max_at_k, expected_pick_at_k, pass_at_k, win_rate
from rlft.tasks import Task


def chat_messages(user_texts: list[str], system_prompt: str | None = None) -> list[list[dict]]:
    """One user turn per text, after the system prompt if there is one."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [system + [{"role": "user", "content": text}] for text in user_texts]


def chat_prompts(tokenizer, user_texts: list[str], system_prompt: str | None = None) -> list[str]:
    """Render user turns with the chat template, ending where the assistant starts."""
    return [tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            for messages in chat_messages(user_texts, system_prompt)]


def task_prompts(tokenizer, task: Task, rows: list[dict], system_prompt: str | None) -> list[str]:
    """The rows' user turns in `task`'s prompt format, rendered with the chat template."""
    return chat_prompts(tokenizer, [task.user_text(r) for r in rows], system_prompt)


def _shown(task: Task, row: dict) -> dict:
    return {k: row[k] for k in task.shown if k in row}


GREEDY = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0}


def _decoding(decoding: dict | None) -> dict:
    """{do_sample, temperature, top_p, repetition_penalty}: greedy where a key is not given."""
    unknown = sorted(set(decoding or {}) - set(GREEDY))
    if unknown:
        raise ValueError(f"decoding: unknown key(s) {', '.join(unknown)}; expected {', '.join(GREEDY)}")
    return {**GREEDY, **(decoding or {})}


def heldout(model, tokenizer, rows: list[dict], task: Task, system_prompt: str | None = None,
            max_new_tokens: int = 64, batch_size: int = 64, decoding: dict | None = None,
            seed: int | None = None) -> dict:
    """Responses to held-out rows, judged by `task` (rlft.tasks): the task's metrics (each with a
    95% interval), how it scored, and the per-prompt scores (for win-rates against another model's
    answers to the same rows). Greedy unless `decoding` ({do_sample, temperature, top_p,
    repetition_penalty}) samples, e.g. as the paper's authors scored Countdown (T 0.2, top-p 0.9,
    repetition penalty 1.1); sampling starts from `seed`, so every model meets the same draws."""
    decoding = _decoding(decoding)

    def answer(which: list[dict], name: str) -> tuple[list[str], list]:
        if decoding["do_sample"] and seed is not None:
            set_seed(seed)
        responses = generation.generate(model, tokenizer, task_prompts(tokenizer, task, which, system_prompt), max_new_tokens,
                             batch_size, decoding["do_sample"], decoding["temperature"], desc=f"{name} held-out",
                             top_p=decoding["top_p"], repetition_penalty=decoding["repetition_penalty"])
        return responses, [task.verdict(r, row) for r, row in zip(responses, which, strict=True)]

    responses, verdicts = answer(rows, task.name)
    out = {
        **task.summarize(verdicts),
        "decoding": "greedy" if decoding == GREEDY else {**decoding, "seed": seed if decoding["do_sample"] else None},
        **task.describe(),
        "max_new_tokens": max_new_tokens,
        "scores": [v.score for v in verdicts],
        "samples": [{**_shown(task, row), "response": r, "score": v.score}
                    for row, r, v in list(zip(rows, responses, verdicts))[:20]],
    }
    for name, (extra, dropped) in task.extra_heldout().items():  # e.g. IFBench beside IFEval: out of distribution
        out |= {f"{name}_{metric}": value for metric, value in task.summarize(answer(extra, name)[1]).items()}
        out |= {f"{name}_rows_checked": len(extra), f"{name}_rows_dropped": dropped}
    return out


# what a held-out evaluation depends on besides the weights: the same rows, asked and judged the same way
_SAME_EVALUATION = ("data.heldout", "data.evaluate", "data.task", "data.template", "model.chat_template", "seed")


def recorded_heldout(model_path: str, cfg, dtype: str) -> dict | None:
    """The held-out evaluation of `model_path` that the rlft run which wrote it recorded, if that run
    judged the same rows the same way as `cfg` would (the keys in _SAME_EVALUATION, and the weights in
    `dtype`); None otherwise. A DPO or RLOO run's reference is its init_from model, which its SFT run
    already answered: reading those answers saves a second pass over the held-out prompts (greedy, or
    sampled from the same seed: the same answers). The run must be DONE and `model_path` its model/."""
    run = Path(model_path).parent
    if Path(model_path).name != "model" or not (run / "DONE").is_file():
        return None
    try:
        old = OmegaConf.load(run / "config.yaml")
        recorded = json.loads((run / "results.json").read_text())["heldout"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(recorded, dict) or "scores" not in recorded or old.get("model", {}).get("dtype") != dtype:
        return None
    for key in _SAME_EVALUATION:
        then, now = (OmegaConf.select(c, key, default=None) for c in (old, cfg))
        if _plain(then) != _plain(now):
            return None
    return {**recorded, "recorded_in": str(run / "results.json")}


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def best_of_n(model, tokenizer, rows: list[dict], task: Task, system_prompt: str | None, n: int,
              temperature: float = 1.0, sweep: list[int] | None = None, max_new_tokens: int = 64,
              batch_size: int = 64, selector=None, selector_name: str | None = None) -> dict:
    """N sampled responses per held-out row; the task's verdict picks the best of any n of them.

    The verdict needs only what the prompt already holds (Countdown's numbers and target, the
    instructions' arguments), so the selection is deployable at inference time, yet it is
    pass@n-like: pass@1 is reported beside it. Every best-of-n (n in `sweep`, up to N) comes from the
    same N samples through unbiased estimators over subsets (pass@k for `correct`, the expected
    maximum for `score`), averaged over prompts with a normal 95% interval. With a
    `selector(prompts, responses, rows) -> keys` (a reward model), each subset's pick is its
    highest-key sample instead, judged by the task.
    """
    prompts = task_prompts(tokenizer, task, rows, system_prompt)
    responses = generation.generate(model, tokenizer, prompts, max_new_tokens, max(1, batch_size // n), do_sample=True,
                         temperature=temperature, num_return_sequences=n, desc=f"{task.name} best-of-{n}")
    verdicts = [[task.verdict(r, row) for r in responses[i * n : (i + 1) * n]] for i, row in enumerate(rows)]
    keys = None
    if selector is not None:
        repeated = [row for row in rows for _ in range(n)]
        flat = selector(chat_messages([task.user_text(row) for row in repeated], system_prompt), responses, repeated)
        keys = [flat[i * n : (i + 1) * n] for i in range(len(rows))]
    sweep = sorted({k for k in (sweep or _powers_of_two(n)) if 1 <= k <= n} | {n})
    out = {**_picks(verdicts, keys, sweep), "samples_per_prompt": n, "temperature": temperature,
           "num_prompts": len(rows), "selector": selector_name or f"{task.name} verifier", **task.describe(),
           "max_new_tokens": max_new_tokens}
    if keys is not None:  # the verifier's pick of the same samples costs nothing more: beside the selector's
        out["verifier"] = {**_picks(verdicts, None, sweep), "selector": f"{task.name} verifier"}
    return out


def _picks(verdicts: list[list], keys: list[list] | None, sweep: list[int]) -> dict:
    """pass@1 and best-of-k for k in `sweep` from each prompt's N verdicts: the best of any k
    (keys None: the verifier picks) or the highest-key of any k (a selector's keys)."""
    n = len(verdicts[0])
    out = {}
    for k in sweep:
        if keys is None:
            exact = [pass_at_k(n, sum(v.correct for v in vs), k) for vs in verdicts]
            means = [expected_max_at_k([v.score for v in vs], k) for vs in verdicts]
        else:
            exact = [expected_pick_at_k([float(v.correct) for v in vs], ks, k) for vs, ks in zip(verdicts, keys)]
            means = [expected_pick_at_k([v.score for v in vs], ks, k) for vs, ks in zip(verdicts, keys)]
        name = "pass@1" if k == 1 else f"best_of_{k}"
        out[f"{name}_accuracy"] = {**stats.mean(exact), "k": k}  # k: the report reads it, never the name
        out[f"{name}_mean_score"] = {**stats.mean(means), "k": k}
    return out


def _powers_of_two(n: int) -> list[int]:
    return [2**i for i in range(n.bit_length()) if 2**i <= n]


def instruction_win_rate(model, tokenizer, reference, reference_tokenizer, rows: list[dict], judge,
                         system_prompt: str | None = None, max_new_tokens: int = 256, batch_size: int = 16,
                         selector=None, n: int = 1, temperature: float = 1.0, decoding: dict | None = None,
                         seed: int | None = None) -> dict:
    """Responses of a model and of a reference model to held-out prompts (rows {prompt, ...}),
    scored by `judge(prompts, responses, rows)`; the model's win-rate against the reference (ties
    count 1/2) and both mean judge scores, each with a 95% interval. With a `selector` (a reward
    model) and n > 1, also best-of-n: n samples per prompt at `temperature`, the selector's pick
    judged against the same reference responses.

    `decoding` ({do_sample, temperature, top_p, repetition_penalty}; default greedy) is the same
    for both models. When sampling, each model's generation starts from `seed`, so every policy
    evaluated meets the same reference responses.
    """
    decoding = _decoding(decoding)
    texts = [r["prompt"] for r in rows]
    messages = chat_messages(texts, system_prompt)

    def respond(who, tok, desc: str) -> list[str]:
        if decoding["do_sample"] and seed is not None:
            set_seed(seed)  # each model from the same seed: the reference's samples do not depend on the policy's
        return generation.generate(who, tok, chat_prompts(tok, texts, system_prompt), max_new_tokens, batch_size,
                        decoding["do_sample"], decoding["temperature"], desc=desc, top_p=decoding["top_p"],
                        repetition_penalty=decoding["repetition_penalty"])

    ours = respond(model, tokenizer, "policy responses")
    theirs = respond(reference, reference_tokenizer, "reference responses")
    s_ours, s_theirs = judge(messages, ours, rows), judge(messages, theirs, rows)
    unbounded = (float("-inf"), float("inf"))  # reward-model scores are not confined to [0, 1]
    m = len(rows)
    out = {
        "vs_reference": win_rate(s_ours, s_theirs),
        "judge_score": stats.mean(s_ours, bounds=unbounded),
        "reference_judge_score": stats.mean(s_theirs, bounds=unbounded),
        "decoding": {**decoding, "max_new_tokens": max_new_tokens, "seed": seed if decoding["do_sample"] else None},
        "samples": [{"prompt": t, "response": a, "reference": b, "score": x, "reference_score": y}
                    for t, a, b, x, y in list(zip(texts, ours, theirs, s_ours, s_theirs))[:10]],
    }
    if selector is not None and n > 1:
        sampled = generation.generate(model, tokenizer, chat_prompts(tokenizer, texts, system_prompt), max_new_tokens,
                           max(1, batch_size // n), do_sample=True, temperature=temperature, num_return_sequences=n,
                           desc=f"best-of-{n} samples")
        keys = selector([msg for msg in messages for _ in range(n)], sampled, [r for r in rows for _ in range(n)])
        picks = [max(range(i * n, (i + 1) * n), key=lambda j: keys[j]) for i in range(m)]
        s_best = judge(messages, [sampled[j] for j in picks], rows)
        out[f"best_of_{n}_vs_reference"] = win_rate(s_best, s_theirs)
        out[f"best_of_{n}_judge_score"] = {**stats.mean(s_best, bounds=unbounded), "k": n}
    return out
