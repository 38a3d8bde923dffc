"""Direct preference optimisation with trl.DPOTrainer; the reference is the starting model.

    rlft train stage=dpo model=tiny data=ifcheck init_from=runs/sft/model run_dir=runs/dpo max_steps=4
    rlft train stage=dpo model=tiny data=ifcheck init_from=runs/sft/model peft=lora ...

Policy and reference both load from `init_from` (an SFT run's model dir); with peft the
reference is the same weights with the adapter switched off (TRL's way, no second copy).
Writes run_dir/model and, when the data has a judge, run_dir/results.json: the judge's score of
policy and reference on held-out prompts and the policy's win-rate against the reference (the
reference's answers read from its run's results.json when that run judged the same rows the same
way: rlft.evaluate.recorded_heldout).
"""

from __future__ import annotations

from transformers import set_seed
from trl import DPOTrainer

from rlft import models, preflight
from rlft.config import build
from rlft.data import count_over_length
from rlft.evaluate import recorded_heldout
from rlft.metrics import MetricsLogger
from rlft.stats import win_rate
from rlft.runcontrol import batch_facts, fit


def main(cfg) -> tuple[dict | None, dict]:
    # 1. seed and data first, so a bad data file fails before any model loads
    set_seed(cfg.seed)
    train_dataset = preflight.cap(build(cfg.data.preference_dataset), "train")  # cap: a handful in a pre-flight
    heldout = preflight.cap(build(cfg.data.heldout) if cfg.data.get("heldout") and cfg.data.get("evaluate") else None,
                            "eval")

    # 2. policy and reference from the same weights
    path = models.resolve_model_path(cfg.model, cfg.init_from)
    tokenizer = models.load_tokenizer(path, cfg.model.chat_template, chat=True)
    model = models.load_causal_lm(path, cfg.model.dtype, cfg.peft.quantization)
    peft_config = build(cfg.peft.config) if cfg.peft.get("config") else None
    ref_model = None if peft_config is not None else models.load_causal_lm(path, cfg.model.frozen_dtype)

    # 3. trainer: every TRL knob comes from stage.trainer (trl.DPOConfig); pairs over max_length
    # are truncated by TRL (truncation_mode) and counted here, never silently
    args = build(cfg.stage.trainer)
    over_length = count_over_length(tokenizer, train_dataset, args.max_length)
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[MetricsLogger(cfg.run_dir)],
    )

    # 4. train (resume=true continues from the newest intact checkpoint in run_dir/checkpoints;
    # SIGTERM/SIGINT saves one and stops: rlft.runcontrol.fit)
    fit(trainer, cfg)

    # 5. save model/ (with peft: adapter/ too, merged into model/)
    policy = models.save_trained(trainer, cfg.run_dir, path, tokenizer, cfg.model.dtype, peft_config is not None)

    # 6. judge policy and reference on held-out prompts; the policy's win-rate against it
    results = None
    if policy is not None and heldout:
        evaluate = build(cfg.data.evaluate)
        ours = evaluate(policy, tokenizer, heldout)
        # the start's answers as its run recorded them; else the reference DPOTrainer prepared (already
        # on the device), or with peft a fresh copy of the start
        ref = recorded_heldout(path, cfg, cfg.model.frozen_dtype) or evaluate(
            models.on_accelerator(ref_model) if ref_model is not None
            else models.load_frozen_lm(path, cfg.model.frozen_dtype), tokenizer, heldout)
        results = {"heldout": ours, "reference": ref, "vs_reference": win_rate(ours["scores"], ref["scores"])}
    card = {
        "base_model": path,
        "reference_model": path,
        "train_pairs": len(train_dataset),
        "steps": trainer.state.global_step,
        "beta": args.beta,
        "learning_rate": args.learning_rate,
        **batch_facts(args),  # per device x accumulation x processes, and the world size
        "max_length": args.max_length,
        "pairs_over_max_length": f"{over_length} (truncated by TRL, truncation_mode={args.truncation_mode})",
    }
    return results, card
