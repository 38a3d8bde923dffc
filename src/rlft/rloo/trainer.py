"""rlft's RLOO trainer: trl.RLOOTrainer (trl pinned exactly) with rlft's kernels in the hot loop.

    rlft train stage=rloo model=tiny data=countdown reward=countdown init_from=runs/sft/model max_steps=2

What changes against stock trl.RLOOTrainer, and nothing else:
1. Log-probs. TRL patches the policy (and reference) forward so `model(..., labels=..., fused_lm_head=True)`
   returns per-token log-probs; `add_fused_lm_head` below answers that call with
   rlft.kernels.linear_logprobs (chunked online log-sum-exp, never the [tokens, vocab] logits).
   Models it does not cover (logit soft-capping or scaling, an lm_head bias or adapter, ZeRO-3
   partitioned weights) keep TRL's own fused head.
2. Advantages. KL penalty, leave-one-out baseline and normalisation are one rloo_advantages launch;
   `objective="pass_at_k"` makes them climb pass@k / max@k (PKPO, arXiv 2505.15201) instead of the
   mean reward, with k fixed (`pass_k`) or annealed over steps (`pass_k_schedule`).
3. On-policy (one iteration, every generation consumed before the optimizer steps), TRL's extra
   no-grad forward for the "old" log-probs is skipped: the policy has not moved since sampling,
   so old == current and the loss uses current.detach() (ratio exp(0) = 1, same gradient). With a
   KL penalty (beta > 0) the KL's old log-probs come from the sampler itself
   (rlft.rloo.sampling.RecordingSampler, transformers' custom_generate hook: the log-prob of each token
   as it was drawn, before min_new_tokens / top-k / ... processors, = what the forward recomputes
   to float error); `old_logps="forward"` keeps TRL's forward. tests/test_rloo_trainer.py proves
   the equalities against stock TRL.
4. Each prompt once. A batch repeats every prompt k times; the sampler prefills each distinct prompt
   once, and the log-prob passes run the shared prompt columns once per distinct prompt and the
   completions against copies of its key/value cache (_shared_prompt_hidden).
The two trl methods these changes live in, `_generate_and_score_completions` (old log-probs and
advantages) and `_compute_loss` (the ratio on-policy), are copied verbatim into rlft/rloo/trl_copy.py
with every changed line fenced; this class takes them from there, so a trl upgrade is a diff of
that one file.
"""

from __future__ import annotations

import functools
import os
import types

import torch
import trl
from trl.trainer.rloo_trainer import is_peft_model
from trl.trainer.utils import FusedCausalLMOutput

from rlft.kernels import linear_logprobs
from rlft.rloo.objective import pass_k_schedule_from
from rlft.rloo.trl_copy import CopiedFromTRL
from rlft.rloo.sampling import RecordingSampler, repeated_rows, shareable


def add_fused_lm_head(model, temperature: float = 1.0, with_entropy: bool = False) -> bool:
    """Route `model(..., labels=labels, fused_lm_head=True)` to rlft.kernels.linear_logprobs.

    Same contract as trl.trainer.utils.add_fused_lm_head (the output is a FusedCausalLMOutput whose
    per-token fields are zero where the label is -100), installed over TRL's patch. Returns False,
    leaving TRL's patch in place, for models this kernel does not cover.
    """
    text_config = model.config.get_text_config()
    scaled = any(getattr(text_config, key, None) is not None
                 for key in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                             "logits_scaling"))
    lm_head = model.get_output_embeddings()
    if scaled or type(lm_head) is not torch.nn.Linear or lm_head.bias is not None or hasattr(lm_head.weight, "ds_id"):
        return False
    original_forward = types.MethodType(type(model).forward, model)  # the class's own, not TRL's patch

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head:  # generation and everything else: the model's own forward
            for key, value in (("labels", labels), ("shift_labels", shift_labels),
                               ("num_items_in_batch", num_items_in_batch)):
                if value is not None:
                    kwargs[key] = value
            return original_forward(*args, **kwargs)
        shared = shift_labels is None and not args and _shared_prompt_hidden(self, labels=labels, **kwargs)
        if shared:                                   # each distinct prompt ran once (see _shared_prompt_hidden)
            hidden, labels = shared
        else:
            kwargs["use_cache"] = False
            hidden = self.base_model(*args, **kwargs).last_hidden_state             # (B, L, H)
            if shift_labels is None:
                hidden, labels = hidden[:, :-1], labels[:, 1:]                      # position t predicts t+1
            else:
                labels = shift_labels
        mask = labels != -100                                                        # (B, L-1) or (B, L-S)
        weight = self.get_output_embeddings().weight
        logp, entropy = linear_logprobs(hidden[mask], weight, labels[mask], temperature, with_entropy)
        # masked_scatter keeps an all-masked micro-batch connected to the graph (a zero, not an error)
        if shared:  # back to the (B, L-1) layout TRL reads: the first L-S columns held no labels
            mask = torch.cat([mask.new_zeros(mask.size(0), kwargs["input_ids"].size(1) - 1 - mask.size(1)), mask], 1)
        log_probs = logp.new_zeros(mask.shape).masked_scatter(mask, logp)
        entropy = entropy.new_zeros(mask.shape).masked_scatter(mask, entropy) if entropy is not None else None
        loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, label_mask=mask)

    model.forward = types.MethodType(forward, model)
    return True


def _shared_prompt_hidden(model, input_ids=None, attention_mask=None, labels=None, **rest):
    """Hidden states for the labelled positions, running each distinct prompt once.

    RLOO scores k completions of every prompt, so a batch holds each prompt k times. The leading
    columns no row has a label in (the prompt, left-padded) are run once per distinct row, their
    key/value cache is copied to each row of the group, and only the completion columns run per
    row: (k-1)/k of the prompt tokens' compute is saved in every log-prob pass (backward included).
    Exactly the same attention: prompt tokens only ever attend to the prompt, completion tokens to
    the prompt and their own past; positions are the full sequence's. Returns (hidden, labels) for
    the columns S-1.., each predicting the next token, or None where this does not apply (no
    repeated prompt, extra model inputs, gradient checkpointing, which cannot keep a cache).
    """
    if (input_ids is None or attention_mask is None or labels is None or set(rest) - {"use_cache", "return_dict"}
            or (model.training and torch.is_grad_enabled() and getattr(model, "is_gradient_checkpointing", False))):
        return None
    unlabelled = (labels == -100).all(0)
    prefix = int(unlabelled.int().cumprod(0).sum())  # S: leading columns without a label in any row
    if prefix < 2 or prefix >= input_ids.size(1):
        return None
    repeated = repeated_rows(input_ids[:, :prefix], attention_mask[:, :prefix])
    if repeated is None:
        return None
    first, group = repeated
    out = model.base_model(input_ids=input_ids[first, :prefix], attention_mask=attention_mask[first, :prefix],
                           use_cache=True)
    cache = out.cache
    if not shareable(cache):  # e.g. linear-attention layers: rows cannot be copied, run whole rows
        return None
    cache.batch_select_indices(group)                 # each row gets its prompt's keys/values (gradients add up)
    tail = model.base_model(input_ids=input_ids[:, prefix:], attention_mask=attention_mask, cache=cache,
                            use_cache=False).last_hidden_state                  # (B, L-S, H)
    hidden = torch.cat([out.last_hidden_state[group, prefix - 1:], tail[:, :-1]], 1)  # column t predicts t+1
    return hidden, labels[:, prefix:]


class RLOOTrainer(CopiedFromTRL, trl.RLOOTrainer):
    """trl.RLOOTrainer with rlft's fused log-prob kernel, one-launch advantages and, on-policy, no
    separate old-log-prob forward. Same constructor and config (trl.RLOOConfig), plus
    `old_logps`: "sampling" (the KL's old log-probs recorded while sampling) or "forward" (TRL's pass);
    `objective`: "mean" (RLOO: the mean reward) or "pass_at_k" (max@k of a prompt's samples: pass@k
    for 0/1 rewards), with `pass_k` (k <= num_generations) and optionally `pass_k_schedule`, a list of
    [step, k] pairs: k from that optimizer step on (annealing, e.g. [[0, 8], [100, 1]]).

        rlft train experiment=tiny_math_rloo +stage.algorithm.objective=pass_at_k +stage.algorithm.pass_k=4
    """

    def __init__(self, *args, old_logps: str = "sampling", objective: str = "mean", pass_k: int | None = None,
                 pass_k_schedule: list | None = None, **kwargs):
        if old_logps not in ("sampling", "forward"):
            raise ValueError(f"old_logps must be 'sampling' or 'forward', got {old_logps!r}")
        super().__init__(*args, **kwargs)
        self.pass_k_schedule = pass_k_schedule_from(objective, pass_k, pass_k_schedule, self.num_generations)
        policy = self.model.get_base_model() if is_peft_model(self.model) else self.model
        self.fused_lm_head = add_fused_lm_head(policy, self.temperature, with_entropy=True)
        if self.ref_model is not None:
            add_fused_lm_head(self.ref_model, self.temperature)
        # Every sample is trained on by the policy that drew it: one iteration, and each generation
        # batch is used up within one optimizer step (TRL's default: steps_per_generation = accumulation).
        on_policy = (self.num_iterations == 1
                     and self.args.gradient_accumulation_steps % self.args.steps_per_generation == 0)
        self.skip_old_logps = on_policy and self.beta == 0.0
        # On-policy with a KL penalty the sampler records the old log-probs as it draws the tokens
        # (transformers generation only: vLLM and continuous batching keep the forward).
        self.sampler = None
        if (on_policy and self.beta != 0.0 and old_logps == "sampling" and not self.use_vllm
                and not self.use_transformers_continuous_batching and (self.generation_config.num_beams or 1) == 1):
            self.sampler = RecordingSampler(self.temperature)
        self._sampling_logps = None
        self.old_logps_source = "unused" if self.skip_old_logps else "sampler" if self.sampler else "forward"

    def current_pass_k(self) -> int | None:
        """k of pass@k at this optimizer step (None: mean-reward RLOO); a function of the step, so resume-exact."""
        if self.pass_k_schedule is None:
            return None
        return [k for start, k in self.pass_k_schedule if start <= self.state.global_step][-1]

    # Exact resume: TRL samples anew when `_step % (steps_per_generation * num_iterations) == 0` or its
    # buffer is empty, and `_step` restarts at 0 after a resume, so a checkpoint inside a generation
    # buffer would resume out of phase. The counter and the buffer travel with the checkpoint.
    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        torch.save({"step": self._step, "buffered_inputs": self._buffered_inputs},
                   os.path.join(output_dir, f"rloo_buffer_{self.args.process_index}.pt"))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        path = os.path.join(checkpoint, f"rloo_buffer_{self.args.process_index}.pt") if checkpoint else None
        if path and os.path.isfile(path):
            state = torch.load(path, map_location=self.accelerator.device, weights_only=True)
            self._step, self._buffered_inputs = state["step"], state["buffered_inputs"]

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields):
        """TRL's, with rlft's sampling loop handed to `generate` (custom_generate) when it records old log-probs."""
        self._sampling_logps = None
        if self.sampler is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields)
        target = self.accelerator.unwrap_model(self.model_wrapped)  # what TRL's unwrap_model_for_generation yields
        own = vars(target).get("generate")
        target.generate = functools.partial(target.generate, custom_generate=self.sampler)
        try:
            completion_ids = super()._generate_single_turn(prompt_ids, images, multimodal_fields)
        finally:
            if own is None:
                del target.generate
            else:
                target.generate = own
        self._sampling_logps = self.sampler.logps  # None where generate fell back to its own loop
        return completion_ids
