"""Supervised fine-tuning with trl.SFTTrainer, loss on assistant tokens only.

    rlft train stage=sft model=tiny data=countdown run_dir=runs/sft max_steps=4
    rlft train stage=sft model=tiny data=countdown peft=lora        # LoRA, merged into model/
    rlft train experiment=paper_math_sft                            # the paper's warm-start SFT

Writes run_dir/model (AutoModelForCausalLM; with peft the adapter also goes to run_dir/adapter)
and, when the data preset has held-out problems, run_dir/results.json.
"""

from __future__ import annotations

from transformers import set_seed
from trl import SFTTrainer

from rlft import models, preflight
from rlft.config import build
from rlft.data import count_over_length, dropped_rows
from rlft.errors import UserError
from rlft.metrics import MetricsLogger
from rlft.runcontrol import batch_facts, fit


def main(cfg) -> tuple[dict | None, dict]:
    # 1. seed and data first, so a bad data file fails before any model loads
    # (generated training sets exclude the held-out problems by config)
    set_seed(cfg.seed)
    train_dataset = preflight.cap(build(cfg.data.sft_dataset), "train")  # cap: a handful in a pre-flight
    heldout = preflight.cap(build(cfg.data.heldout) if cfg.data.get("heldout") and cfg.data.get("evaluate") else None,
                            "eval")

    # 2. model and tokenizer (init_from beats the preset: start from an earlier run)
    path = models.resolve_model_path(cfg.model, cfg.init_from)
    tokenizer = models.load_tokenizer(path, cfg.model.chat_template, chat=True)
    model = models.load_causal_lm(path, cfg.model.dtype, cfg.peft.quantization)

    # 3. trainer: every TRL knob comes from stage.trainer (trl.SFTConfig)
    args = build(cfg.stage.trainer)
    over_length = count_over_length(tokenizer, train_dataset, args.max_length)  # TRL truncates them: counted
    peft_config = build(cfg.peft.config) if cfg.peft.get("config") else None
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[MetricsLogger(cfg.run_dir)],
    )
    if len(trainer.train_dataset) == 0:  # TRL drops rows whose truncation left no assistant token
        raise UserError(f"data.sft_dataset: none of {len(train_dataset)} rows keeps an assistant token within "
                        f"stage.trainer.max_length={args.max_length}; raise it")

    # 4. train (resume=true continues from the newest intact checkpoint in run_dir/checkpoints;
    # SIGTERM/SIGINT saves one and stops: rlft.runcontrol.fit)
    fit(trainer, cfg)

    # 5. save model/ (with peft: adapter/ too, merged into model/)
    policy = models.save_trained(trainer, cfg.run_dir, path, tokenizer, cfg.model.dtype, peft_config is not None)

    # 6. evaluate on held-out prompts with the task's judge (data.evaluate), main process only
    results = None
    if policy is not None and heldout:
        results = {"heldout": build(cfg.data.evaluate)(policy, tokenizer, heldout)}
    card = {
        "base_model": path,
        "train_rows": len(train_dataset),
        "rows_dropped": dropped_rows(train_dataset),  # rows the loader could not train on, by reason
        "steps": trainer.state.global_step,
        "learning_rate": args.learning_rate,
        **batch_facts(args),  # per device x accumulation x processes, and the world size
        "max_length": args.max_length,
        "rows_over_max_length": f"{over_length} (truncated by TRL to max_length)",
    }
    return results, card
