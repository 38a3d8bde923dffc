"""Peak GPU memory of one training step of every paper cell, traced at the real shapes.

    python scripts/memory_plan.py                 # every paper_* cell (~1 min a cell on 2 CPU cores)
    python scripts/memory_plan.py paper_if_sft    # one cell

Each cell's config is composed as `rlft train experiment=<cell>` composes it; two micro-batches
of the step it takes per device (micro-batch x length, activation checkpointing, LoRA or full; the
second with the first's gradients and AdamW's moments held, as in steady state) run on Qwen2.5-0.5B's
published architecture (and the reward model's) under torch's FakeTensorMode, so no weight or
activation is allocated and no FLOP is spent, while torch.distributed._tools.MemTracker records
every tensor the real step would hold: fp32 master weights, gradients and AdamW's two moments of
the trained parameters, bf16 autocast activations (as `bf16: true` runs them on a GPU), the frozen
reference and reward models in their load dtype, and the logits or rlft's fused log-prob tiles.
Printed: the peak of those tensors (GiB). On a GPU add the CUDA context and the caching
allocator's slack, ~1-2 GiB: the "fits 24 GB" check below keeps 3 GiB of headroom.

The step modelled per stage (sequence lengths are the config's maxima, the worst case):
  sft   forward + backward of micro-batch x max_length with the LM loss, then AdamW
  dpo   the policy on chosen and rejected (2 x micro-batch rows), the reference forward without
        grad (bf16; LoRA: the same model with the adapter off), then AdamW
  rloo  rlft's fused log-prob pass with backward over micro-batch x (prompt 512 + completion), the
        reference's pass without grad (bf16), the reward model scoring the micro-batch, then AdamW
  rm    the reward model on chosen and rejected (2 x batch rows of max_length), then AdamW; off the
        shelf (stage.train=false): forward only
"""

from __future__ import annotations

import argparse
import sys

import torch
from peft import LoraConfig, get_peft_model
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker
from transformers import AutoConfig, AutoModelForSequenceClassification, Qwen2Config, Qwen2ForCausalLM

from rlft import config
from rlft.kernels import linear_logprobs
from rlft.rehearsal.models import deberta_config, distilbert_config, qwen_config

GIB = 2**30
BUDGET_GIB = 24 - 3  # a 24 GB card, less the CUDA context and allocator slack
PROMPT = 512  # RLOO prompts: the longest UltraFeedback / Countdown prompt the length budget allows


def _qwen(dtype=None):
    cfg = {k: v for k, v in qwen_config(instruct=False).items()
           if k not in ("architectures", "torch_dtype", "transformers_version")}
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.float32)  # built in its dtype (a fake tensor cannot be cast in place)
    try:
        with torch.device("meta"):  # shapes only; _fake gives them storage-free tensors to trace
            return Qwen2ForCausalLM(Qwen2Config(**cfg))
    finally:
        torch.set_default_dtype(default)


def _reward_model(name: str):
    published = deberta_config(num_hidden_layers=24) if "deberta" in name else distilbert_config(n_layers=6)
    cfg = AutoConfig.for_model(**{k: v for k, v in published.items() if k not in ("architectures", "torch_dtype")},
                               num_labels=1)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(cfg)


def _fake(model):
    """The meta-device model's parameters as fake CPU tensors (inside FakeTensorMode), ties restored."""
    if model is not None:
        model.to_empty(device="cpu")
        (model.get_base_model() if hasattr(model, "get_base_model") else model).tie_weights()
    return model


def _trainable(model, lora: dict | None):
    if lora is None:
        return model, [p for p in model.parameters()]
    model = get_peft_model(model, LoraConfig(**lora))
    return model, [p for p in model.parameters() if p.requires_grad]


class _NoHook:
    def remove(self) -> None:
        pass


def _frozen_params_take_no_hooks() -> None:
    """MemTracker hooks every parameter of a module it enters, and torch refuses a grad hook on a
    frozen one (a LoRA base weight): skip those (they never get a gradient to track)."""
    for name in ("register_hook", "register_post_accumulate_grad_hook"):
        original = getattr(torch.Tensor, name)
        if getattr(original, "_rlft_skips_frozen", False):
            continue

        def hook(self, fn, _original=original):
            return _original(self, fn) if self.requires_grad else _NoHook()

        hook._rlft_skips_frozen = True
        setattr(torch.Tensor, name, hook)


def step_peak_gib(cfg) -> tuple[float, str]:
    """The traced peak of one optimizer step of this composed config, and what the step was."""
    stage, args = cfg.stage.name, cfg.stage.get("trainer") or {}
    lora = None
    if cfg.peft.get("config"):
        lora = {k: v for k, v in dict(cfg.peft.config).items() if k != "_target_"}
    batch = args.get("per_device_train_batch_size", 1)
    checkpointing = bool(args.get("activation_checkpointing") or args.get("gradient_checkpointing"))
    if stage == "rm":
        model = _reward_model(cfg.reward_model.name)
        length, rows = cfg.reward_model.max_length, 2 * batch
        what = f"reward model, {rows} x {length}" + ("" if cfg.stage.train else ", forward only")
    else:
        model = _qwen()
        length = args.get("max_length") or PROMPT + args.get("max_completion_length", 0)
        rows = 2 * batch if stage == "dpo" else batch
        what = f"{rows} x {length}"
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    model, params = _trainable(model, lora if stage != "rm" else None)
    # the reference: frozen_dtype on a bf16 GPU (with LoRA it is the policy with the adapter off)
    reference = _qwen(torch.bfloat16).eval() if stage in ("dpo", "rloo") and lora is None else None
    scorer = _reward_model(str(cfg.reward_model.name)).eval() if stage == "rloo" and cfg.reward.get("path") else None
    with FakeTensorMode(allow_non_fake_inputs=True):
        model, reference, scorer = _fake(model), _fake(reference), _fake(scorer)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-6, foreach=True) if (stage != "rm" or cfg.stage.train) else None
        ids = torch.randint(0, 1000, (rows, length))

        def micro_batch_loss():
            """One micro-batch as the trainer runs it: frozen passes without grad, the loss with it."""
            with torch.autocast("cpu", dtype=torch.bfloat16):
                if stage == "rloo":  # rlft's fused head on the completion tokens (the mask is static here)
                    def logps(m):
                        lm = m.get_base_model() if lora and m is model else m
                        hidden = lm.model(input_ids=ids).last_hidden_state[:, PROMPT - 1:-1].reshape(-1, 896)
                        return linear_logprobs(hidden, lm.lm_head.weight, ids[:, PROMPT:].reshape(-1), 0.7)[0]

                    with torch.no_grad():
                        if reference is not None:
                            logps(reference)
                        else:  # LoRA: the reference is the policy with its adapter off
                            with model.disable_adapter():
                                logps(model)
                            tracker.reset_mod_stats()  # the module stats only; the peak stays
                        if scorer is not None:
                            scorer(input_ids=torch.randint(0, 1000, (rows, 512)))
                    loss = logps(model).sum()
                elif stage == "rm":
                    with torch.set_grad_enabled(optimizer is not None):
                        loss = model(input_ids=ids).logits.sum()
                else:
                    if stage == "dpo":
                        with torch.no_grad():
                            if reference is not None:
                                reference(input_ids=ids)
                            else:  # LoRA: the reference is the policy with its adapter off
                                with model.disable_adapter():
                                    model(input_ids=ids)
                                tracker.reset_mod_stats()
                    loss = model(input_ids=ids, labels=ids).loss
                return loss

        tracker = MemTracker()
        _frozen_params_take_no_hooks()
        tracker.track_external(*(m for m in (model, reference, scorer, optimizer) if m is not None))
        with tracker:
            if optimizer is None:
                micro_batch_loss()
            else:  # two micro-batches: the second runs with the first's gradients and AdamW's moments held
                micro_batch_loss().backward()
                optimizer.step()
                tracker.reset_mod_stats()  # MemTracker follows one pass per module; the peak is kept
                micro_batch_loss().backward()
                optimizer.step()
                optimizer.zero_grad()
        peak = max(v.get("Total", 0) for v in tracker.get_tracker_snapshot("peak").values())
    trained = "LoRA" if lora and stage != "rm" else ("none" if optimizer is None else "full")
    return peak / GIB, f"{what}, {trained}{', activation checkpointing' if checkpointing else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", nargs="*", help="experiment names (default: every paper_* training cell)")
    args = parser.parse_args()
    cells = args.cells or [n for n in config.group_options("experiment") if n.startswith("paper_")
                           and config.compose([f"experiment={n}"]).stage.name != "bon"]
    print(f"| cell | step per device | peak tensors (GiB) | fits {BUDGET_GIB + 3} GB |")
    print("|---|---|---|---|")
    over = []
    for name in cells:
        peak, what = step_peak_gib(config.compose([f"experiment={name}"]))
        fits = peak <= BUDGET_GIB
        over += [] if fits else [name]
        print(f"| {name} | {what} | {peak:.1f} | {'yes' if fits else 'NO'} |", flush=True)
    if over:
        sys.exit(f"over {BUDGET_GIB} GiB: {', '.join(over)}")


if __name__ == "__main__":
    main()
