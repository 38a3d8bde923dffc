"""Best-of-N and win-rates: held-out evaluation of any model dir. No training.

    rlft train stage=bon model=tiny data=countdown init_from=runs/sft/model n=16 num_prompts=200 run_dir=runs/bon
    rlft train stage=bon model=tiny data=ifcheck init_from=runs/dpo/model reference=runs/sft/model judge=rule
    make demo   (best-of-16 on the SFT and on the RLOO model)

Countdown (data.task=countdown): N samples per held-out problem, one picked by the verifier
(select=verifier) or by the `reward` group (select=reward, e.g. reward=rm reward.path=DIR). Writes
run_dir/results.json: greedy accuracy, pass@1 and best-of-n for every n in `sweep` up to N
(unbiased, from the same N samples), exact match and mean TinyZero score, each with a 95%
interval, plus seed, N, temperature, prompt count and the scoring rule (data.scorer: rlft's last
answer anywhere, or tinyzero's last line only).

Instruction following (any other data): responses of the model and of `reference` to the
held-out prompts under `decoding` (greedy by default; sampled and seeded with decoding.do_sample=true),
scored by the `judge` group (rule | rm | endpoint); results.json holds the win-rate against the
reference (ties 1/2) and both mean judge scores, with 95% intervals, and the protocol: decoding,
held-out source and count, reference; with select=reward also the best-of-N pick's win-rate.
Two protocols ship: experiment=paper_if_winrate (the handout's) and paper_if_winrate_authors.
"""

from __future__ import annotations


def main(cfg) -> tuple[dict, dict]:
    from omegaconf import OmegaConf
    from transformers import set_seed

    from rlft import evaluate, models, rewards
    from rlft.config import build
    from rlft.errors import UserError

    # 1. seed and held-out prompts (num_prompts overrides the preset's count)
    set_seed(cfg.seed)
    if cfg.n < 1 or (cfg.num_prompts is not None and cfg.num_prompts < 1):
        raise UserError(f"n must be >= 1 and num_prompts >= 1 (or null); got n={cfg.n}, num_prompts={cfg.num_prompts}")
    if not cfg.data.get("heldout"):
        raise UserError(f"stage=bon needs held-out prompts; data={cfg.data.name} has no heldout")
    heldout = build(cfg.data.heldout, **({"n": cfg.num_prompts} if cfg.num_prompts else {}))

    # 2. the policy to evaluate (any model dir: init_from)
    path = models.resolve_model_path(cfg.model, cfg.init_from)
    tokenizer = models.load_tokenizer(path, cfg.model.chat_template)
    if cfg.generation_backend not in ("transformers", "vllm"):
        raise UserError(f"generation_backend={cfg.generation_backend!r}: choose transformers or vllm")
    decoding = OmegaConf.to_container(cfg.decoding, resolve=True)  # instruction data: both models' decoding
    if cfg.generation_backend == "vllm":  # GPU boxes: the same results, sampled by vLLM
        model = models.VLLMPolicy(path, cfg.model.frozen_dtype, models.stop_token_ids(tokenizer), cfg.seed)
    else:
        model = models.load_causal_lm(path, cfg.model.frozen_dtype)
    card = {"base_model": path, "generation_backend": cfg.generation_backend}

    # the best-of-N pick: the task's verifier, or the `reward` group (select=reward: e.g. a reward model)
    if cfg.select not in ("verifier", "reward"):
        raise UserError(f"select={cfg.select!r}: choose verifier or reward")
    selector = rewards.selector(cfg.reward) if cfg.select == "reward" else None
    selector_name = f"reward={cfg.reward.name}" if selector else "countdown verifier"
    card["selector"] = selector_name

    if cfg.data.get("task") == "countdown":
        # 3a. greedy answers, then N samples per prompt, one picked by the verifier or the reward
        greedy = build(cfg.data.evaluate)(model, tokenizer, heldout)
        sampled = evaluate.countdown_best_of_n(model, tokenizer, heldout, cfg.data.template, cfg.data.system_prompt,
                                               n=cfg.n, temperature=cfg.temperature, sweep=cfg.stage.sweep,
                                               max_new_tokens=cfg.data.evaluate.max_new_tokens,
                                               batch_size=cfg.data.evaluate.batch_size, selector=selector,
                                               selector_name=selector_name,
                                               scorer=cfg.data.evaluate.get("scorer", "rlft"))  # as greedy's
        return {"greedy": greedy, "sampled": sampled, "seed": cfg.seed, "model": path}, card

    # 3b. instruction following: the model against a reference model, scored by the judge
    if not cfg.reference:
        raise UserError(f"stage=bon on data={cfg.data.name} compares against a reference model: set reference=MODEL_DIR "
                        "(the paper's is Qwen/Qwen2.5-0.5B-Instruct)")
    judge = build(cfg.judge.scorer)
    reference = models.load_causal_lm(str(cfg.reference), cfg.model.frozen_dtype)
    evaluation = cfg.data.get("evaluate") or {}
    result = evaluate.instruction_win_rate(
        model, tokenizer, reference, models.load_tokenizer(str(cfg.reference), cfg.model.chat_template), heldout, judge,
        cfg.data.system_prompt, max_new_tokens=evaluation.get("max_new_tokens", cfg.stage.max_new_tokens),
        batch_size=evaluation.get("batch_size", cfg.stage.batch_size), selector=selector, n=cfg.n,
        temperature=cfg.temperature, decoding=decoding, seed=cfg.seed)
    # the protocol, beside the numbers: which prompts (loader and its arguments), how many, against whom
    source = {("loader" if k == "_target_" else k): v
              for k, v in OmegaConf.to_container(cfg.data.heldout, resolve=True).items() if k not in ("n", "_partial_")}
    result["prompts"] = {**source, "num_prompts": len(heldout)}
    result["reference"] = str(cfg.reference)
    card |= {"reference_model": str(cfg.reference), "judge": cfg.judge.name}
    return {"heldout": result, "seed": cfg.seed, "model": path, "reference": str(cfg.reference),
            "judge": cfg.judge.name}, card
