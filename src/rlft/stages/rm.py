"""Reward model training: Bradley-Terry (trl.RewardTrainer), Siamese, or pointwise regression.

    rlft train stage=rm rm_loss=bt reward_model=tiny data=ifcheck run_dir=runs/rm max_steps=4
    rlft train stage=rm rm_loss=siamese reward_model=tiny_deberta data=ifcheck ...
    rlft train stage=rm rm_loss=regression reward_model=distilbert data=ultrafeedback ...   (GPU box, hub)
    rlft train stage=rm stage.train=false reward_model=deberta_v3_large_oasst data=ultrafeedback   (evaluate only)

Pairs go through rlft's scoring contract (rlft.reward_models.encode) before TRL sees them, so the
model is trained on exactly the ids it is later scored on. Writes run_dir/model
(AutoModelForSequenceClassification) and run_dir/results.json: held-out pairwise accuracy.
With stage.train=false a reward model used off the shelf is only evaluated (results.json, no model/).
"""

from __future__ import annotations

from transformers import set_seed

from rlft import models, preflight, reward_models
from rlft.config import build
from rlft.errors import UserError
from rlft.metrics import MetricsLogger
from rlft.runcontrol import batch_facts, fit


def main(cfg) -> tuple[dict | None, dict]:
    # 1. seed and data first, so a bad data file fails before any model loads
    set_seed(cfg.seed)
    pairs = preflight.cap(build(cfg.data.preference_dataset), "train")  # cap: a handful in a pre-flight
    heldout = preflight.cap(build(cfg.data.preference_heldout) if cfg.data.get("preference_heldout") else None, "eval")

    # 2. the reward model (init_from: continue from an earlier reward model dir)
    rm = cfg.reward_model
    path = models.resolve_model_path(rm, cfg.init_from)
    tokenizer = models.load_tokenizer(path, cfg.model.chat_template if rm.format == "chat" else None,
                                     chat=rm.format == "chat")
    model = models.load_reward_model(path, rm.dtype)
    if not cfg.stage.train:  # off the shelf (the paper's DeBERTa): held-out pairwise accuracy, no model/
        if heldout is None:
            raise UserError(f"stage.train=false evaluates only: data={cfg.data.name} has no preference_heldout")
        return ({"heldout": reward_models.pairwise_accuracy(models.on_accelerator(model), tokenizer, heldout,
                                                            rm.format, rm.max_length)},
                {"base_model": path, "variant": "off the shelf (not trained)"})

    # 3. encode through the scoring contract, then the variant's trainer (rm_loss.trainer)
    train_dataset, truncated = reward_models.tokenize_pairs(pairs, tokenizer, rm.format, rm.max_length)
    args = build(cfg.stage.trainer)
    peft_config = build(cfg.peft.config, task_type="SEQ_CLS") if cfg.peft.get("config") else None
    trainer = build(cfg.rm_loss.trainer)(
        model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
        peft_config=peft_config, callbacks=[MetricsLogger(cfg.run_dir)],
    )

    # 4. train (resume=true continues from the newest intact checkpoint in run_dir/checkpoints;
    # SIGTERM/SIGINT saves one and stops: rlft.runcontrol.fit)
    fit(trainer, cfg)

    # 5. save model/ (AutoModelForSequenceClassification), atomically; with peft the adapter is
    # saved to adapter/ and merged in place (the classifier head stays as trained)
    scorer = models.save_trained(trainer, cfg.run_dir, path, tokenizer, rm.dtype, peft_config is not None,
                                 merge=lambda adapter_dir: trainer.model.merge_and_unload())

    # 6. held-out pairwise accuracy through the same contract (main process only)
    results = None
    if scorer is not None and heldout is not None:
        results = {"heldout": reward_models.pairwise_accuracy(scorer, tokenizer, heldout, rm.format, rm.max_length)}
    card = {
        "base_model": path,
        "variant": cfg.rm_loss.name,
        "input_format": f"{rm.format}, max {rm.max_length} tokens, {'right' if rm.format == 'flat' else 'left'}-truncated "
                        f"({truncated} sides truncated)",
        "train_pairs": len(train_dataset),
        "steps": trainer.state.global_step,
        "learning_rate": args.learning_rate,
        **batch_facts(args),  # per device x accumulation x processes, and the world size
    }
    return results, card
