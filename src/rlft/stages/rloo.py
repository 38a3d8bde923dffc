"""REINFORCE leave-one-out (RLOO) with rlft's fused kernels: a subclass of trl.RLOOTrainer.

    rlft train stage=rloo model=tiny data=countdown reward=countdown init_from=runs/sft/model run_dir=runs/rloo max_steps=2
    rlft train stage=rloo model=tiny data=ifcheck reward=reward_model reward.path=runs/rm/model init_from=runs/sft/model
    rlft train experiment=tiny_math_rloo          # the tiny Countdown row "SFT + RLOO" (make demo)

k samples per prompt (stage.trainer.num_generations), each scored by the `reward` group's
functions (weighted sum; a function that fails marks samples unscorable, never ends the run),
KL to the init_from model as a reward penalty. Writes run_dir/model (with peft also adapter/),
and, when the data preset has held-out prompts, run_dir/results.json (and, where the task's judge
gives per-prompt scores, the win-rate against the init_from model, whose answers are read from its
run when it judged the same rows the same way).
"""

from __future__ import annotations

from transformers import set_seed

from rlft import models, preflight, reward_functions
from rlft.config import build
from rlft.errors import UserError
from rlft.evaluate import recorded_heldout
from rlft.metrics import MetricsLogger
from rlft.stats import win_rate
from rlft.runcontrol import batch_facts, fit


def main(cfg) -> tuple[dict | None, dict]:
    # 1. seed and prompts first, so a bad data file fails before any model loads
    set_seed(cfg.seed)
    if not cfg.data.get("prompt_dataset"):
        raise UserError(f"stage=rloo needs prompts: data={cfg.data.name} has no prompt_dataset")
    train_dataset = preflight.cap(build(cfg.data.prompt_dataset), "train")  # cap: a handful in a pre-flight
    heldout = preflight.cap(build(cfg.data.heldout) if cfg.data.get("heldout") and cfg.data.get("evaluate") else None,
                            "eval")

    # 2. rewards, each guarded, weighted in config order (a bad reward-model path fails here, early too)
    names, reward_funcs, weights = reward_functions.from_config(cfg.reward, cfg.stage.unscorable_patience)

    # 3. policy (the reference is the same weights: TRL loads it, or disables the adapter with peft)
    path = models.resolve_model_path(cfg.model, cfg.init_from)
    tokenizer = models.load_tokenizer(path, cfg.model.chat_template, chat=True)
    model = models.load_causal_lm(path, cfg.model.dtype, cfg.peft.quantization)
    models.end_turns_at_stop_ids(model, tokenizer)  # the completion mask ends at <|im_end|> too
    peft_config = build(cfg.peft.config) if cfg.peft.get("config") else None
    train_dataset, too_long, cap = _cap_prompts(train_dataset, tokenizer, model, cfg)

    # 4. trainer: rlft.rloo.RLOOTrainer (or stock trl.RLOOTrainer) from stage.algorithm; every TRL
    # knob from stage.trainer (trl.RLOOConfig); generation stops at the end of the assistant turn
    args = build(cfg.stage.trainer, reward_weights=weights)
    args.generation_kwargs = {**(args.generation_kwargs or {}), "eos_token_id": models.stop_token_ids(tokenizer)}
    args.model_init_kwargs = {"dtype": cfg.model.frozen_dtype, **(args.model_init_kwargs or {})}  # TRL's reference
    per_generation = args.generation_batch_size // args.num_generations  # prompts sampled at once, all ranks
    if len(train_dataset) < per_generation:
        raise UserError(f"data.prompt_dataset: {len(train_dataset)} prompts, fewer than one generation batch "
                        f"({per_generation} prompts = generation_batch_size {args.generation_batch_size} / "
                        f"num_generations {args.num_generations}); add prompts or lower "
                        "stage.trainer.per_device_train_batch_size")
    trainer = build(cfg.stage.algorithm)(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[MetricsLogger(cfg.run_dir)],
    )

    # 5. train (resume=true continues from the newest intact checkpoint in run_dir/checkpoints;
    # SIGTERM/SIGINT saves one and stops: rlft.runcontrol.fit)
    fit(trainer, cfg)

    # 6. save model/ (with peft: adapter/ too, merged into model/)
    policy = models.save_trained(trainer, cfg.run_dir, path, tokenizer, cfg.model.dtype, peft_config is not None)

    # 7. held-out evaluation with the task's judge; win-rate against the start where it scores per prompt
    results = None
    if policy is not None and heldout:
        evaluate = build(cfg.data.evaluate)
        results = {"heldout": evaluate(policy, tokenizer, heldout)}
        if cfg.data.get("task") and build(cfg.data.task).instructions:
            ref = recorded_heldout(path, cfg, cfg.model.frozen_dtype) or evaluate(
                models.load_frozen_lm(path, cfg.model.frozen_dtype), tokenizer, heldout)
            results |= {"reference": ref, "vs_reference": win_rate(results["heldout"]["scores"], ref["scores"])}
    card = {
        "base_model": path,
        "reference_model": path,
        "trainer": cfg.stage.algorithm._target_,
        "old_logps": getattr(trainer, "old_logps_source", "forward"),  # rlft: sampler | forward | unused (beta 0)
        "rewards": dict(zip(names, weights)),
        "train_prompts": len(train_dataset),
        "prompts_dropped_over_length": f"{too_long} over {cap} tokens",
        "steps": trainer.state.global_step,
        "k": args.num_generations,
        "objective": cfg.stage.algorithm.get("objective", "mean"),  # mean | pass_at_k (rlft.rloo)
        **({"pass_k": [list(p) for p in trainer.pass_k_schedule]} if getattr(trainer, "pass_k_schedule", None) else {}),
        "beta": args.beta,
        "learning_rate": args.learning_rate,
        **batch_facts(args),  # per device x accumulation x processes, and the world size
        "max_completion_length": args.max_completion_length,
        "temperature": args.temperature,
    }
    return results, card


def _cap_prompts(dataset, tokenizer, model, cfg):
    """The prompts RLOO can sample from: those of at most stage.max_prompt_length tokens (chat
    template applied), and short enough that max_completion_length more fit the model's positions
    (TRL 1.16 has no prompt cap: one long prompt would blow the memory the batch was sized for).
    The rest are dropped and counted in the model card; none left is one line naming the key."""
    completion = cfg.stage.trainer.max_completion_length
    positions = getattr(model.config, "max_position_embeddings", None)
    limits = [x for x in (cfg.stage.max_prompt_length, positions - completion if positions else None) if x]
    if not limits:
        return dataset, 0, None
    cap = min(limits)
    lengths = [len(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=False)
                   if isinstance(row["prompt"], list) else tokenizer(row["prompt"])["input_ids"]) for row in dataset]
    keep = [i for i, n in enumerate(lengths) if n <= cap]
    if not keep:
        raise UserError(f"stage.max_prompt_length={cfg.stage.max_prompt_length}: all {len(lengths)} prompts of "
                        f"data.prompt_dataset are longer than {cap} tokens (the shortest has {min(lengths)}; "
                        f"max_position_embeddings {positions}, stage.trainer.max_completion_length {completion})")
    return (dataset.select(keep) if len(keep) < len(lengths) else dataset), len(lengths) - len(keep), cap
