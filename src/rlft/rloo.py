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
   (rlft.sampling.RecordingSampler, transformers' custom_generate hook: the log-prob of each token
   as it was drawn, before min_new_tokens / top-k / ... processors, = what the forward recomputes
   to float error); `old_logps="forward"` keeps TRL's forward. tests/test_rloo_trainer.py proves
   the equalities against stock TRL.
4. Each prompt once. A batch repeats every prompt k times; the sampler prefills each distinct prompt
   once, and the log-prob passes run the shared prompt columns once per distinct prompt and the
   completions against copies of its key/value cache (_shared_prompt_hidden).
The two methods copied from trl 1.16 mark every changed line between `# --- rlft: begin` and
`# --- rlft: end`; a test checks that everything outside the fences still equals the installed
trl source, so a trl upgrade that touches them fails loudly.
"""

from __future__ import annotations

import functools
import os
import types
from typing import Any

import torch
import trl
from trl.trainer.rloo_trainer import (  # the names the copied methods use, from the module they came from
    apply_chat_template,
    disable_gradient_checkpointing,
    gather,
    gather_object,
    is_conversational,
    is_peft_model,
    nanmax,
    nanmin,
    nanstd,
    pad,
    prepare_multimodal_messages,
    use_adapter,
)
from trl.trainer.utils import FusedCausalLMOutput

from rlft.errors import UserError
from rlft.kernels import linear_logprobs, rloo_advantages
from rlft.kernels.rloo_advantage import max_at_k
from rlft.sampling import RecordingSampler, repeated_rows, shareable

COPIED_FROM_TRL = ("_generate_and_score_completions", "_compute_loss")


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


def pass_k_schedule_from(objective: str, pass_k, schedule, num_generations: int) -> list[tuple[int, int]] | None:
    """[(first step, k), ...] for objective="pass_at_k", None for "mean"; a bad value names its key."""
    key = "stage.algorithm"
    if objective not in ("mean", "pass_at_k"):
        raise UserError(f"{key}.objective: {objective!r} is not one of mean, pass_at_k")
    if objective == "mean":
        if pass_k is not None or schedule is not None:
            raise UserError(f"{key}.pass_k / pass_k_schedule need {key}.objective=pass_at_k")
        return None
    if (pass_k is None) == (schedule is None):
        raise UserError(f"{key}.objective=pass_at_k needs {key}.pass_k (a k) or {key}.pass_k_schedule "
                        "([[step, k], ...]), one of the two")
    name = f"{key}.pass_k" if schedule is None else f"{key}.pass_k_schedule"
    pairs = [(0, pass_k)] if schedule is None else [
        tuple(p) if hasattr(p, "__len__") and len(p) == 2 else (None, None) for p in schedule]
    for start, k in pairs:
        if not (isinstance(k, int) and 1 <= k <= num_generations):
            raise UserError(f"{name}: {k!r} is not an integer in 1..num_generations ({num_generations}): "
                            "pass@k is estimated from a prompt's num_generations samples")
        if not (isinstance(start, int) and start >= 0):
            raise UserError(f"{key}.pass_k_schedule: {start!r} is not a step (entries are [step, k])")
    starts = [start for start, _ in pairs]
    if starts[0] != 0 or starts != sorted(set(starts)):
        raise UserError(f"{key}.pass_k_schedule: steps {starts} must start at 0 and increase")
    return pairs


class RLOOTrainer(trl.RLOOTrainer):
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

    # ------------------------------------------------------------------ copied from trl 1.16.0

    def _generate_and_score_completions(
        self, inputs: list[dict[str, torch.Tensor | Any]]
    ) -> dict[str, torch.Tensor | Any]:
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"

        prompts = [x["prompt"] for x in inputs]

        if "images" in inputs[0]:
            images = [example.get("images") for example in inputs]
        elif "image" in inputs[0]:
            images = [[example.get("image")] if example.get("image") is not None else None for example in inputs]
        else:
            images = None
        # Transformers requires at least one image in the batch, otherwise it throws an error
        if images is not None and all(img_list == [] for img_list in images):
            images = None

        # If the prompts are conversational and the inputs contain images, we need to convert the prompts from
        # [{"role": "user", "content": "What color is the sky?"}] to
        # [{"role": "user", "content": [{"type": "image", "image": <Image>}, {"type": "text", "text": "What color is the sky?"}]}]
        if images is not None:
            if not is_conversational(inputs[0]):
                raise ValueError(
                    "Multimodal training requires conversational prompts. It looks like the dataset contains "
                    "non-conversational inputs, likely because a chat template was applied before passing the dataset "
                    "to the trainer. Please provide the raw conversational prompts and let the trainer apply the chat "
                    "template internally."
                )
            prompts = [
                prepare_multimodal_messages(prompt, images=image_list)
                for prompt, image_list in zip(prompts, images, strict=True)
            ]

        prompt_ids_list, completion_ids_list, completions = self._generate(prompts)

        # Convert lists of token IDs to padded tensors
        prompt_ids = [torch.tensor(ids) for ids in prompt_ids_list]
        prompt_mask = [torch.ones_like(ids, dtype=torch.long) for ids in prompt_ids]
        prompt_ids = pad(
            prompt_ids,
            padding_value=self._tokenizer.pad_token_id,
            padding_side="left",
            pad_to_multiple_of=self.pad_to_multiple_of,
        ).to(device=device)
        prompt_mask = pad(
            prompt_mask, padding_value=0, padding_side="left", pad_to_multiple_of=self.pad_to_multiple_of
        ).to(device=device)
        completion_ids = [torch.tensor(ids) for ids in completion_ids_list]
        completion_mask = [torch.ones_like(ids, dtype=torch.long) for ids in completion_ids]
        completion_ids = pad(
            completion_ids,
            padding_value=self._tokenizer.pad_token_id,
            padding_side="right",
            pad_to_multiple_of=self.pad_to_multiple_of,
        ).to(device=device)
        completion_mask = pad(
            completion_mask, padding_value=0, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of
        ).to(device=device)

        # If mask_truncated_completions is enabled, zero out truncated completions in completion_mask
        if self.mask_truncated_completions:
            eos_and_pad = [*self.eos_token_ids, self._tokenizer.pad_token_id]
            is_truncated = torch.tensor([ids[-1] not in eos_and_pad for ids in completion_ids_list], device=device)
            # Mask completion_mask for attention masking
            completion_mask = completion_mask * (~is_truncated).unsqueeze(1).int()

        # Concatenate prompt_mask with completion_mask for logit computation
        prompt_completion_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, P+C)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (B, P+C)

        logits_to_keep = completion_ids.size(1)  # we only need to compute the logits for the completion tokens
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size

        num_images = [len(img_list) if img_list else 0 for img_list in images] if images is not None else None

        # Get forward_kwargs for models with multimodal inputs.
        if images is not None:
            prompts_text = [
                apply_chat_template({"prompt": prompt}, self.processing_class, **self.chat_template_kwargs)["prompt"]
                for prompt in prompts
            ]
            prompt_inputs = self.processing_class(images=images, text=prompts_text, padding=True, return_tensors="pt")
            prompt_inputs = super()._prepare_inputs(prompt_inputs)
            forward_kwargs = {k: v for k, v in prompt_inputs.items() if k not in ["input_ids", "attention_mask"]}
        else:
            forward_kwargs = {}

        # Recover LFM2-VL tile counts; the full processor drops row/column metadata.
        num_tiles = None
        if images is not None and "spatial_shapes" in forward_kwargs:
            image_info = self.processing_class.image_processor(
                images=images, return_tensors="pt", return_row_col_info=True
            )
            tiles_per_image = image_info["image_rows"] * image_info["image_cols"]
            if self.processing_class.image_processor.use_thumbnail:
                tiles_per_image = tiles_per_image + (tiles_per_image > 1).to(tiles_per_image.dtype)
            num_tiles = [group.sum().item() for group in torch.split(tiles_per_image, num_images)]
        # Same for InternVL, whose pixel_values is tile-indexed ([total_tiles, channels, height, width]).
        elif (
            images is not None
            and forward_kwargs["pixel_values"].ndim == 4
            and forward_kwargs["pixel_values"].size(0) != sum(num_images)
        ):
            num_patches = self.processing_class.image_processor(
                images=images, crop_to_patches=True, return_tensors="pt"
            )["num_patches"]
            num_tiles = [group.sum().item() for group in torch.split(num_patches, num_images)]

        # If token_type_ids are used, extend them with zeros for the completion part
        if "token_type_ids" in forward_kwargs:
            token_type_ids = forward_kwargs["token_type_ids"]
            if self.pad_to_multiple_of is not None:
                # Needed only with pad_to_multiple_of: otherwise prompt_ids and token_type_ids must have equal len
                padding_size = prompt_ids.size(1) - token_type_ids.size(1)
                if padding_size > 0:
                    token_type_ids = torch.cat(
                        [token_type_ids.new_zeros((token_type_ids.size(0), padding_size)), token_type_ids], dim=1
                    )
            forward_kwargs["token_type_ids"] = torch.cat(
                [token_type_ids, token_type_ids.new_zeros(completion_ids.shape)], dim=1
            )
        # If mm_token_type_ids are used, extend them with zeros for the completion part
        if "mm_token_type_ids" in forward_kwargs:
            mm_token_type_ids = forward_kwargs["mm_token_type_ids"]
            if self.pad_to_multiple_of is not None:
                # Needed only with pad_to_multiple_of: otherwise prompt_ids and mm_token_type_ids must have equal len
                padding_size = prompt_ids.size(1) - mm_token_type_ids.size(1)
                if padding_size > 0:
                    mm_token_type_ids = torch.cat(
                        [mm_token_type_ids.new_zeros((mm_token_type_ids.size(0), padding_size)), mm_token_type_ids],
                        dim=1,
                    )
            forward_kwargs["mm_token_type_ids"] = torch.cat(
                [mm_token_type_ids, mm_token_type_ids.new_zeros(completion_ids.shape)], dim=1
            )

        # When gradient checkpointing is enabled with use_reentrant=True (non default), calling the model inside a
        # torch.no_grad() block triggers a harmless PyTorch warning ("None of the inputs have requires_grad=True").
        # Temporarily disable checkpointing to avoid this warning during inference.
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            # --- rlft: begin  on-policy the loss uses its own detached log-probs, and the KL the sampler's (see __init__)
            old_per_token_logps = old_logps = None
            if self._sampling_logps is not None:
                width = completion_ids.size(1) - self._sampling_logps.size(1)  # < 0 crops, > 0 pads (pad_to_multiple_of)
                old_per_token_logps = torch.nn.functional.pad(self._sampling_logps, (0, width)).to(device)
            elif not self.skip_old_logps:
                old_per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, prompt_completion_ids, attention_mask, logits_to_keep, batch_size,
                    num_images=num_images, num_tiles=num_tiles, **forward_kwargs,
                )
                old_logps = (old_per_token_logps * completion_mask).sum(1)  # mask out padding and tokens after EOS
            # --- rlft: end

            # Compute the per-token log probabilities for the reference model
            if self.beta != 0.0:
                if self.ref_model is not None:
                    ref_per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
                        self.ref_model,
                        prompt_completion_ids,
                        attention_mask,
                        logits_to_keep,
                        batch_size=batch_size,
                        num_images=num_images,
                        num_tiles=num_tiles,
                        **forward_kwargs,  # may contain pixel_values, image_grid_thw, pixel_attention_mask, spatial_shapes, image_sizes, image_position_ids
                    )
                else:
                    # When training a PEFT adapter, how we obtain the reference depends on the setup:
                    # - New adapter: disabling adapters yields the base model.
                    # - Re-training an existing adapter: an initial copy is loaded under the name "ref".
                    model = self.accelerator.unwrap_model(self.model)
                    with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
                        ref_per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
                            self.model,
                            prompt_completion_ids,
                            attention_mask,
                            logits_to_keep,
                            batch_size=batch_size,
                            num_images=num_images,
                            num_tiles=num_tiles,
                            **forward_kwargs,  # may contain pixel_values, image_grid_thw, pixel_attention_mask, spatial_shapes, image_sizes, image_position_ids
                        )
            else:
                ref_per_token_logps = None

        # Calculate rewards for each reward function. rewards_per_func aggregates rewards across all processes. This is
        # important because rewards will be normalized per group, and completions are distributed. We will later slice
        # rewards_per_func to extract each process's subset.
        rewards_per_func = self._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval

        # A completion for which every reward function returned None is unscorable. nansum would collapse it to 0,
        # which both biases the leave-one-out baseline and hands the completion a spurious advantage. Mark these rows
        # NaN so they're excluded from the (nan-aware) baseline below; their advantage is forced to 0 afterwards.
        unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)

        # Apply weights to each reward function's output and sum
        rewards = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        rewards[unscorable_mask] = torch.nan

        # Apply reward clipping if specified
        if self.reward_clip_range:
            rewards = rewards.clamp(min=self.reward_clip_range[0], max=self.reward_clip_range[1])

        # --- rlft: begin  KL penalty, leave-one-out baseline and normalisation: one rloo_advantages launch
        # (per-token KL is local to this rank: with several ranks the per-sequence sums are gathered first)
        per_token_kl = old_per_token_logps - ref_per_token_logps if self.beta != 0.0 else None
        kl = None
        if self.beta != 0.0 and self.accelerator.num_processes > 1:
            kl = gather((per_token_kl * completion_mask).sum(-1))
        pass_k = self.current_pass_k() if mode == "train" else None
        advantages, kl = rloo_advantages(
            rewards, num_generations, self.beta, old_per_token_logps, ref_per_token_logps, completion_mask, kl=kl,
            normalize=self.normalize_advantages, pass_k=pass_k,
        )
        if pass_k is not None:  # the objective being climbed: unbiased max@k of each prompt's samples
            self._metrics[mode]["pass_k"].append(pass_k)
            self._metrics[mode]["reward_max_at_k"].append(torch.nanmean(max_at_k(rewards, num_generations, pass_k)).item())
        if self.beta != 0.0:
            rewards = rewards - self.beta * kl  # what upstream's reward-std metric below sees
        # --- rlft: end
        grouped_rewards = rewards.view(-1, num_generations)
        mean_grouped_rewards = torch.nanmean(grouped_rewards, dim=1)
        if num_generations > 1:
            std_rewards = nanstd(grouped_rewards, dim=1)
        else:  # doesn't occur during training, but could occur in eval when num_generations_eval=1
            std_rewards = torch.zeros_like(mean_grouped_rewards)

        # --- rlft: begin  (advantages came from rloo_advantages above)
        # --- rlft: end

        is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))  # for logging

        # Slice to keep only the local part of the data
        process_slice = slice(
            self.accelerator.process_index * len(prompts),
            (self.accelerator.process_index + 1) * len(prompts),
        )
        all_process_advantages = advantages.clone()  # keep the aggregated advantages for logging
        advantages = advantages[process_slice]

        # Calculate and log the mean KL divergence between current and reference model
        if self.beta != 0.0:
            kl_stats = self.accelerator.reduce(
                torch.stack([(per_token_kl * completion_mask).sum(), completion_mask.sum().float()]), reduction="sum"
            )
            self._metrics[mode]["kl"].append((kl_stats[0] / kl_stats[1].clamp(min=1.0)).item())

        # Calculate mean reward per function, but only for samples where the function was applied (non-NaN values)
        for i, reward_func_name in enumerate(self.reward_func_names):
            mean_rewards = torch.nanmean(rewards_per_func[:, i]).item()
            self._metrics[mode][f"rewards/{reward_func_name}/mean"].append(mean_rewards)
            std_func_rewards = nanstd(rewards_per_func[:, i]).item()
            self._metrics[mode][f"rewards/{reward_func_name}/std"].append(std_func_rewards)
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[unscorable_mask] = torch.nan  # exclude unscorable rows from the logged reward stats
        self._metrics[mode]["reward"].append(torch.nanmean(rewards).item())
        self._metrics[mode]["reward_std"].append(nanstd(rewards).item())
        self._metrics[mode]["frac_reward_zero_std"].append(is_std_zero.float().mean().item())

        # Log prompts and completions
        self._logs["prompt"].extend(gather_object(prompts))
        self._logs["completion"].extend(gather_object(completions))
        for i, name in enumerate(self.reward_func_names):
            self._logs["rewards"][name].extend(rewards_per_func[:, i].tolist())
        self._logs["advantages"].extend(all_process_advantages.tolist())

        # Flush user-logged extra columns (from log_extra), gathering across processes.
        # Keys must be sorted so that all ranks call gather_object in the same order, otherwise values
        # get mis-attributed across columns (dict insertion order may differ between processes).
        for column in sorted(set(gather_object(list(self._pending_extra_logs)))):
            values = self._pending_extra_logs.get(column, [None] * len(prompts))
            self._logs["extra"][column].extend(gather_object(values))
        self._pending_extra_logs.clear()

        # Flush user-logged metrics (from log_metric), averaging across processes.
        # Keys must be sorted so that all ranks call accelerator.gather in the same order, otherwise values
        # get mis-attributed across metrics (dict insertion order may differ between processes).
        for name in sorted(set(gather_object(list(self._pending_metrics)))):
            values = self._pending_metrics.get(name, [])
            local_stats = torch.tensor([sum(values), len(values)], dtype=torch.float32, device=device)
            total, count = self.accelerator.gather(local_stats).view(-1, 2).sum(dim=0).tolist()
            self._metrics[mode][name].append(total / count)
        self._pending_metrics.clear()

        if images is not None and self.log_multimodal:
            self._logs["images"].extend(gather_object(images))

        output = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "old_logps": old_logps,
            "advantages": advantages,
        }
        if "pixel_values" in forward_kwargs:
            output["pixel_values"] = forward_kwargs["pixel_values"]
        if "image_grid_thw" in forward_kwargs:
            output["image_grid_thw"] = forward_kwargs["image_grid_thw"]
        if "pixel_attention_mask" in forward_kwargs:
            output["pixel_attention_mask"] = forward_kwargs["pixel_attention_mask"]
        if "spatial_shapes" in forward_kwargs:
            output["spatial_shapes"] = forward_kwargs["spatial_shapes"]
        if "image_sizes" in forward_kwargs:
            output["image_sizes"] = forward_kwargs["image_sizes"]
        if "token_type_ids" in forward_kwargs:
            output["token_type_ids"] = forward_kwargs["token_type_ids"]
        if "mm_token_type_ids" in forward_kwargs:
            output["mm_token_type_ids"] = forward_kwargs["mm_token_type_ids"]
        if "image_position_ids" in forward_kwargs:
            output["image_position_ids"] = forward_kwargs["image_position_ids"]
        if images is not None:
            output["num_images"] = num_images
            if num_tiles is not None:
                output["num_tiles"] = num_tiles
        return output

    def _compute_loss(self, model, inputs):
        # Compute the per-token log probabilities for the model
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)  # we only need to compute the logits for the completion tokens

        # Compute the per_token_logps and the entropy at each position in the completion
        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            logits_to_keep,
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            num_images=inputs.get("num_images"),
            pixel_attention_mask=inputs.get("pixel_attention_mask"),
            spatial_shapes=inputs.get("spatial_shapes"),
            num_tiles=inputs.get("num_tiles"),
            image_sizes=inputs.get("image_sizes"),
            token_type_ids=inputs.get("token_type_ids"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
            image_position_ids=inputs.get("image_position_ids"),
        )

        logps = (per_token_logps * completion_mask).sum(1)  # mask out padding and tokens after EOS
        # --- rlft: begin  on-policy without old log-probs: exp(logps - logps.detach()) = 1, gradient intact
        old_logps = inputs["old_logps"] if inputs["old_logps"] is not None else logps.detach()
        # --- rlft: end
        log_ratio = logps - old_logps

        # Compute the loss
        advantages = inputs["advantages"]
        coef_1 = torch.exp(log_ratio)
        coef_2 = torch.clamp(coef_1, 1 - self.epsilon_low, 1 + self.epsilon_high)
        per_sequence_loss1 = coef_1 * advantages
        per_sequence_loss2 = coef_2 * advantages
        per_sequence_loss = -torch.min(per_sequence_loss1, per_sequence_loss2)
        loss = per_sequence_loss.mean()

        # Log the metrics
        mode = "train" if self.model.training else "eval"

        # RLOO returns an unscaled loss (the HF Trainer divides by gradient accumulation), so add the aux term unscaled
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        # Entropy
        entropy_stats = self.accelerator.reduce(
            torch.stack([(entropies * completion_mask).sum(), completion_mask.sum().float()]), reduction="sum"
        )
        self._metrics[mode]["entropy"].append((entropy_stats[0] / entropy_stats[1].clamp(min=1.0)).item())

        # Compute the clipped probability ratios
        is_low_clipped = (coef_1 < 1 - self.epsilon_low) & (advantages < 0)
        is_high_clipped = (coef_1 > 1 + self.epsilon_high) & (advantages > 0)
        is_region_clipped = is_low_clipped | is_high_clipped
        gathered_low_clip = self.accelerator.gather(is_low_clipped.float())
        self._metrics[mode]["clip_ratio/low_mean"].append(gathered_low_clip.nanmean().item())
        self._metrics[mode]["clip_ratio/low_min"].append(nanmin(gathered_low_clip).item())
        gathered_high_clip = self.accelerator.gather(is_high_clipped.float())
        self._metrics[mode]["clip_ratio/high_mean"].append(gathered_high_clip.nanmean().item())
        self._metrics[mode]["clip_ratio/high_max"].append(nanmax(gathered_high_clip).item())
        gathered_clip_ratio = self.accelerator.gather(is_region_clipped.float())
        self._metrics[mode]["clip_ratio/region_mean"].append(gathered_clip_ratio.nanmean().item())
        return loss
