"""Training data with no human labels: k samples per training prompt, judged by the data's task.

    rlft train stage=sample data=ifeval model=smollm2_135m keep=correct k=8 run_dir=runs/if_samples
    rlft train stage=sample data=ifeval init_from=runs/sft/model keep=pairs k=8 run_dir=runs/if_pairs
    make real-if   (rejection-sampled SFT targets from the base model, then on-policy pairs from SFT)

The prompts are the data preset's on-policy prompts (data.prompt_dataset, never a held-out one);
each gets k samples at `temperature` from the model, every sample judged by the task (rlft.tasks).
keep=correct writes run_dir/sft.jsonl: rejection sampling, the distinct samples the task calls
correct (every instruction followed), at most `per_prompt` of them per prompt, as SmolTalk-style
chats. keep=pairs writes run_dir/pairs.jsonl: one pair per prompt, chosen = the sample that meets the
most of the prompt's instructions and rejected = the one that meets the fewest, prompts whose
samples all score alike dropped, with scores on UltraFeedback's 1..10 scale (1 + 9 x score) for a
regression reward model, in UltraFeedback-binarized's schema; with stage.heldout_pairs=N the last N
pairs go to run_dir/pairs_heldout.jsonl instead (prompts the reward model never trains on: its
pairwise accuracy). Each row also carries the task columns
it was judged on (e.g. the constraints), so every label can be checked again. data.sft_dataset / data.preference_dataset
read them back (data=ifeval's defaults point there). results.json and the model card count prompts,
samples, what was kept and what was dropped, so the labels' provenance stays with the data.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import set_seed

from rlft import evaluate, generation, models, preflight, rundir, stats
from rlft.config import build
from rlft.errors import UserError

FILES = {"correct": "sft.jsonl", "pairs": "pairs.jsonl"}


def main(cfg) -> tuple[dict, dict]:
    # 1. seed, the task and the prompts (num_prompts overrides the preset's count)
    set_seed(cfg.seed)
    if cfg.keep not in FILES:
        raise UserError(f"keep={cfg.keep!r}: choose correct (rejection-sampled SFT rows) or pairs (preference pairs)")
    if cfg.k < 2 or cfg.stage.per_prompt < 1 or (cfg.num_prompts is not None and cfg.num_prompts < 1):
        raise UserError(f"k must be >= 2, stage.per_prompt >= 1 and num_prompts >= 1 (or null); got k={cfg.k}, "
                        f"stage.per_prompt={cfg.stage.per_prompt}, num_prompts={cfg.num_prompts}")
    if not cfg.data.get("task") or not cfg.data.get("prompt_dataset"):
        raise UserError(f"stage=sample judges samples with the data's task and draws from its prompt_dataset; "
                        f"data={cfg.data.name} lacks {'a task' if not cfg.data.get('task') else 'a prompt_dataset'}")
    task = build(cfg.data.task)
    prompts = preflight.cap(build(cfg.data.prompt_dataset, **({"n": cfg.num_prompts} if cfg.num_prompts else {})), "eval")
    rows = prompts.to_list()
    missing = task.missing_columns(rows[0]) if rows else []
    if missing:
        raise UserError(f"data.prompt_dataset has no {', '.join(missing)} column for the {task.name} task")

    # 2. the model to sample from (any model dir: init_from)
    path = models.resolve_model_path(cfg.model, cfg.init_from)
    tokenizer = models.load_tokenizer(path, cfg.model.chat_template, chat=True)
    model = generation.load_sampling_policy(path, tokenizer, cfg.model.frozen_dtype, cfg.generation_backend, cfg.seed)

    # 3. k samples per prompt, every one judged by the task
    k = cfg.k
    rendered = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    responses = generation.generate(model, tokenizer, rendered, cfg.stage.max_new_tokens,
                                  max(1, cfg.stage.batch_size // k), do_sample=True, temperature=cfg.temperature,
                                  num_return_sequences=k, desc=f"{task.name} samples")
    groups = [[(resp, task.verdict(resp, row)) for resp in responses[i * k : (i + 1) * k]]
              for i, row in enumerate(rows)]

    # 4. what is kept: correct samples (keep=correct) or the best and worst sample (keep=pairs)
    out, counts = (_correct(rows, groups, cfg.stage.per_prompt) if cfg.keep == "correct" else _pairs(rows, groups))
    out = [{**r, **{c: row[c] for c in task.columns}} for r, row in out]  # what it was judged on, kept with it
    if not out:
        raise UserError(f"stage=sample keep={cfg.keep}: no {task.name} sample of {len(rows) * k} was kept "
                        f"({counts}); sample more (k, num_prompts) or from a stronger model")
    held = cfg.stage.heldout_pairs if cfg.keep == "pairs" else 0
    if held and len(out) <= held:
        raise UserError(f"stage.heldout_pairs={held}: only {len(out)} pairs were made; lower it or sample more")
    files = {FILES[cfg.keep]: out[: len(out) - held]}
    if held:
        files["pairs_heldout.jsonl"] = out[len(out) - held :]
    if rundir.is_main_process():
        for name, part in files.items():
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
            rundir.write_atomic(Path(cfg.run_dir) / name, text)

    # 5. the counts, beside the data (pass@1 of the sampled model on the training prompts, too)
    scores = [v.score for g in groups for _, v in g]
    correct = sum(v.correct for g in groups for _, v in g)
    n = len(scores)
    results = {"samples": {
        "prompts": len(rows), "k": k, "temperature": cfg.temperature, "max_new_tokens": cfg.stage.max_new_tokens,
        "correct": stats.proportion(correct, n),
        "mean_score": stats.mean(scores),
        "kept": len(out), "files": {name: len(part) for name, part in files.items()}, **counts, **task.describe(),
    }}
    card = {"sampled_model": path, "task": task.name, "keep": cfg.keep, "rows_written": len(out),
            "labels": "no human labels: the task's checker judged the model's own samples", **counts}
    return results, card


def _chat(row: dict, response: str) -> list[dict]:
    return list(row["prompt"]) + [{"role": "assistant", "content": response}]


def _correct(rows, groups, per_prompt: int) -> tuple[list[tuple[dict, dict]], dict]:
    """Rejection sampling: each prompt's distinct correct samples, up to `per_prompt`."""
    out, solved = [], 0
    for row, group in zip(rows, groups):
        kept = list(dict.fromkeys(resp for resp, v in group if v.correct and resp.strip()))[:per_prompt]
        solved += bool(kept)
        out += [({"messages": _chat(row, resp)}, row) for resp in kept]
    return out, {"prompts_with_a_correct_sample": solved, "prompts_without": len(rows) - solved}


def _pairs(rows, groups) -> tuple[list[tuple[dict, dict]], dict]:
    """One on-policy pair per prompt: the best-scored sample against the worst; ties dropped."""
    out, ties = [], 0
    for row, group in zip(rows, groups):
        best = max(group, key=lambda s: s[1].score)
        worst = min(group, key=lambda s: s[1].score)
        if best[1].score == worst[1].score:
            ties += 1
            continue
        out.append(({"chosen": _chat(row, best[0]), "rejected": _chat(row, worst[0]),
                     "score_chosen": 1 + 9 * best[1].score, "score_rejected": 1 + 9 * worst[1].score}, row))
    return out, {"pairs": len(out), "prompts_dropped_as_ties": ties}
