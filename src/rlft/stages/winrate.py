"""Win-rate against a reference model: both answer the held-out prompts, a judge scores them. No training.

    rlft train stage=winrate model=tiny data=ifcheck init_from=runs/dpo/model reference=runs/sft/model judge=rule
    rlft train experiment=paper_if_winrate init_from=runs/paper_if_dpo/model   (the handout's protocol; GPU box)
    rlft train experiment=paper_if_winrate_authors init_from=runs/paper_if_dpo/model   (the authors' protocol)

Responses of the model and of `reference` to the data's held-out prompts under `decoding` (greedy
by default; sampled and seeded with decoding.do_sample=true), scored by the `judge` group (rule |
reward_model | endpoint). Writes run_dir/results.json: the win-rate against the reference (ties count 1/2)
and both mean judge scores, with 95% intervals, and the protocol: decoding, held-out source and
count, reference. With select=reward also best-of-n: n samples per prompt at `temperature`, the
`reward` group's pick judged against the same reference answers.

Best-of-N with a task's verifier (Countdown) is stage=bon: it shares no step with this one after
the policy loads (one model sampled N times and checked by a verifier, against two models
answering once and compared by a judge), so each stage reads on its own.
"""

from __future__ import annotations

from omegaconf import OmegaConf
from transformers import set_seed

from rlft import evaluate, generation, models, preflight, reward_functions
from rlft.config import build
from rlft.errors import UserError


def main(cfg) -> tuple[dict, dict]:
    # 1. seed, the reference to win against, held-out prompts (num_prompts overrides the preset's count)
    set_seed(cfg.seed)
    if not cfg.data.get("heldout"):
        raise UserError(f"stage=winrate needs held-out prompts; data={cfg.data.name} has no heldout")
    if cfg.data.get("task") and not build(cfg.data.task).instructions:
        raise UserError(f"stage=winrate compares answers to instruction prompts; data={cfg.data.name}'s problems "
                        "are scored by its task's verifier: use stage=bon")
    if not cfg.reference:
        raise UserError(f"stage=winrate on data={cfg.data.name} compares against a reference model: "
                        "set reference=MODEL_DIR (the paper's is Qwen/Qwen2.5-0.5B-Instruct)")
    if cfg.select not in (None, "reward"):
        raise UserError(f"select={cfg.select!r}: choose null (no best-of-n pick) or reward")
    heldout = preflight.cap(build(cfg.data.heldout, **({"n": cfg.num_prompts} if cfg.num_prompts else {})), "eval")

    # 2. the policy to evaluate (any model dir: init_from), the reference and the judge
    path = models.resolve_model_path(cfg.model, cfg.init_from)
    tokenizer = models.load_tokenizer(path, cfg.model.chat_template, chat=True)
    # generation_backend=vllm on GPU boxes: the same results, sampled by vLLM
    model = generation.load_sampling_policy(path, tokenizer, cfg.model.frozen_dtype, cfg.generation_backend, cfg.seed)
    selector = reward_functions.selector(cfg.reward) if cfg.select == "reward" else None
    judge = build(cfg.judge.scorer)
    reference = models.load_frozen_lm(str(cfg.reference), cfg.model.frozen_dtype)
    reference_tokenizer = models.load_tokenizer(str(cfg.reference), cfg.model.chat_template, chat=True)

    # 3. both models answer every prompt under the same decoding; the judge scores both
    decoding = OmegaConf.to_container(cfg.decoding, resolve=True)
    evaluation = cfg.data.get("evaluate") or {}
    result = evaluate.instruction_win_rate(
        model, tokenizer, reference, reference_tokenizer, heldout, judge, cfg.data.system_prompt,
        max_new_tokens=evaluation.get("max_new_tokens", cfg.stage.max_new_tokens),
        batch_size=evaluation.get("batch_size", cfg.stage.batch_size), selector=selector, n=cfg.n,
        temperature=cfg.temperature, decoding=decoding, seed=cfg.seed)

    # 4. the protocol, beside the numbers: which prompts (loader and its arguments), how many, against whom
    source = {("loader" if k == "_target_" else k): v
              for k, v in OmegaConf.to_container(cfg.data.heldout, resolve=True).items() if k not in ("n", "_partial_")}
    result["prompts"] = {**source, "num_prompts": len(heldout)}
    result["reference"] = str(cfg.reference)
    card = {"base_model": path, "generation_backend": cfg.generation_backend, "reference_model": str(cfg.reference),
            "judge": cfg.judge.name, **({"selector": f"reward={cfg.reward.name}"} if selector else {})}
    return {"heldout": result, "seed": cfg.seed, "model": path, "reference": str(cfg.reference),
            "judge": cfg.judge.name}, card
