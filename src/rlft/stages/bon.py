"""Best-of-N with a verifier: N samples per held-out problem, one picked. No training.

    rlft train stage=bon model=tiny data=countdown init_from=runs/sft/model n=16 num_prompts=200 run_dir=runs/bon
    rlft train stage=bon data=countdown init_from=runs/sft/model select=reward reward=reward_model reward.path=runs/rm/model
    make demo   (best-of-16 on the SFT and on the RLOO model)

Any data preset with a task (data.task: Countdown, ifcheck, IFEval; rlft.tasks): greedy answers,
then N samples per held-out prompt, one picked by the task's verifier (select=verifier) or by the
`reward` group (select=reward, e.g. a reward model), every answer judged by the task. Writes
run_dir/results.json: the greedy metrics, pass@1 and best-of-n for every n in `stage.sweep` up to N
(unbiased, from the same N samples) for exact success (`accuracy`: Countdown's right answer, every
instruction followed) and the mean task score, each with a 95% interval (with select=reward also
the verifier's pick of the same samples, sampled.verifier), plus seed, N, temperature,
prompt count and how the task scored (Countdown's data.scorer: rlft's last answer anywhere, or
tinyzero's last line only).

A win-rate against a reference model (instruction data, a judge) is stage=winrate: it shares no
step with this one after the policy loads (one model sampled N times and checked by a verifier,
against two models answering once and compared by a judge), so each stage reads on its own.
"""

from __future__ import annotations

from transformers import set_seed

from rlft import evaluate, generation, models, preflight, reward_functions
from rlft.config import build
from rlft.errors import UserError


def main(cfg) -> tuple[dict, dict]:
    # 1. seed and held-out problems (num_prompts overrides the preset's count)
    set_seed(cfg.seed)
    if not cfg.data.get("heldout"):
        raise UserError(f"stage=bon needs held-out prompts; data={cfg.data.name} has no heldout")
    if not cfg.data.get("task"):
        raise UserError(f"stage=bon picks answers with a task's verifier and data={cfg.data.name} has no task "
                        "(data=countdown, ifcheck and ifeval do); to compare a model with a reference model use "
                        "stage=winrate")
    if cfg.select not in ("verifier", "reward"):
        raise UserError(f"select={cfg.select!r}: choose verifier or reward")
    heldout = preflight.cap(build(cfg.data.heldout, **({"n": cfg.num_prompts} if cfg.num_prompts else {})), "eval")

    # 2. the policy to evaluate (any model dir: init_from)
    path = models.resolve_model_path(cfg.model, cfg.init_from)
    tokenizer = models.load_tokenizer(path, cfg.model.chat_template, chat=True)
    # generation_backend=vllm on GPU boxes: the same results, sampled by vLLM
    model = generation.load_sampling_policy(path, tokenizer, cfg.model.frozen_dtype, cfg.generation_backend, cfg.seed)

    # 3. the pick: the task's verifier, or the `reward` group (select=reward: e.g. a reward model)
    task = build(cfg.data.task)
    selector = reward_functions.selector(cfg.reward) if cfg.select == "reward" else None
    selector_name = f"reward={cfg.reward.name}" if selector else f"{task.name} verifier"

    # 4. greedy answers, then N samples per problem, one picked, every answer judged by the task
    greedy = build(cfg.data.evaluate)(model, tokenizer, heldout)
    sampled = evaluate.best_of_n(model, tokenizer, heldout, task, cfg.data.system_prompt, n=cfg.n,
                                 temperature=cfg.temperature, sweep=cfg.stage.sweep,
                                 max_new_tokens=cfg.data.evaluate.max_new_tokens,
                                 batch_size=cfg.data.evaluate.batch_size, selector=selector,
                                 selector_name=selector_name)
    card = {"base_model": path, "generation_backend": cfg.generation_backend, "selector": selector_name}
    return {"greedy": greedy, "sampled": sampled, "seed": cfg.seed, "model": path}, card
