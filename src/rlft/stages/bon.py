"""Best-of-N: N samples per held-out prompt, one chosen by the task's verifier. No training.

    rlft train stage=bon model=tiny data=countdown init_from=runs/sft/model n=16 num_prompts=200 run_dir=runs/bon
    make demo   (SFT, then this stage on the SFT model)

Writes run_dir/results.json: greedy accuracy, pass@1 and best-of-n for every n in `sweep` up to
N (unbiased, from the same N samples), exact match and mean TinyZero score, each with a 95%
interval, plus seed, N, temperature and prompt count.
"""

from __future__ import annotations


def main(cfg) -> tuple[dict, dict]:
    from transformers import set_seed

    from rlft import evaluate, models
    from rlft.config import build
    from rlft.errors import UserError

    # 1. seed and held-out problems (num_prompts overrides the preset's count)
    set_seed(cfg.seed)
    if cfg.data.get("task") != "countdown":
        raise UserError(f"stage=bon needs held-out problems and a verifier (a countdown data preset); "
                        f"data={cfg.data.name} has none")
    problems = build(cfg.data.heldout, **({"n": cfg.num_prompts} if cfg.num_prompts else {}))

    # 2. the policy to sample from (any model dir: init_from)
    path = models.resolve_model_path(cfg.model, cfg.init_from)
    tokenizer = models.load_tokenizer(path, cfg.model.chat_template)
    model = models.load_causal_lm(path, cfg.model.dtype)

    # 3. greedy answers, then N samples per prompt chosen by the verifier
    greedy = build(cfg.data.evaluate)(model, tokenizer, problems)
    sampled = evaluate.countdown_best_of_n(model, tokenizer, problems, cfg.data.template, cfg.data.system_prompt,
                                           n=cfg.n, temperature=cfg.temperature, sweep=cfg.stage.sweep,
                                           max_new_tokens=cfg.data.evaluate.max_new_tokens,
                                           batch_size=cfg.data.evaluate.batch_size)
    results = {"greedy": greedy, "sampled": sampled, "seed": cfg.seed, "model": path}
    return results, {"base_model": path}
