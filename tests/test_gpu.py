"""The CUDA tier (`make test-gpu`; deselected by default, skipped without CUDA): the Triton kernels
compiled for real, rlft's sampler and the shared-prompt pass on the GPU, each against the same
references the CPU tests use, and every model each stage samples from or scores with found on the
GPU where it is used (nothing here calls .cuda() on a model: placement is rlft's, as on a user's
box). Run without TRITON_INTERPRET (make test sets it for the CPU tier)."""

import os

import pytest
import torch
from conftest import record_model_uses

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
              pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles Triton: unset TRITON_INTERPRET")]

QWEN_HIDDEN, QWEN_VOCAB = 896, 151_936


def _full_logits(hidden, weight, targets, temperature):
    from trl.trainer.utils import selective_log_softmax

    logits = hidden.float() @ weight.float().t()
    lp_all = (logits / temperature).log_softmax(-1)
    return selective_log_softmax(logits, targets, temperature=temperature), -(lp_all.exp() * lp_all).sum(-1)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-3), (torch.bfloat16, 2e-2)])  # tf32 / bf16 tensor cores
@pytest.mark.parametrize("n", [1, 777])
def test_triton_linear_logprobs_at_qwen_shapes(dtype, tol, n):
    from rlft.kernels import linear_logprobs

    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = (torch.randn(n, QWEN_HIDDEN, device="cuda", generator=g) / 30).to(dtype).requires_grad_()
    weight = (torch.randn(QWEN_VOCAB, QWEN_HIDDEN, device="cuda", generator=g) * 0.02).to(dtype).requires_grad_()
    targets = torch.randint(0, QWEN_VOCAB, (n,), device="cuda", generator=g)
    lp, ent = linear_logprobs(hidden, weight, targets, 0.7, with_entropy=True)  # CUDA default: Triton
    ref_lp, ref_ent = _full_logits(hidden, weight, targets, 0.7)
    torch.testing.assert_close(lp, ref_lp, atol=tol, rtol=tol)
    torch.testing.assert_close(ent, ref_ent, atol=tol * 10, rtol=tol)
    w = torch.randn(n, device="cuda", generator=g)
    got = torch.autograd.grad((lp * w + 0.1 * ent).sum(), (hidden, weight))
    want = torch.autograd.grad((ref_lp * w + 0.1 * ref_ent).sum(), (hidden, weight))
    for a, b in zip(got, want):
        scale = b.float().abs().max().item()
        torch.testing.assert_close(a.float(), b.float(), atol=tol * scale, rtol=tol * 10)


def test_triton_rloo_advantages_match_the_torch_reference():
    from rlft.kernels.rloo_advantage import rloo_advantages

    g = torch.Generator(device="cuda").manual_seed(0)
    rewards = torch.rand(48, device="cuda", generator=g)
    rewards[5] = float("nan")
    old, ref = (torch.randn(48, 33, device="cuda", generator=g) for _ in range(2))
    mask = (torch.rand(48, 33, device="cuda", generator=g) > 0.2).float()
    for normalize in (False, True):
        a = rloo_advantages(rewards, 4, 0.03, old, ref, mask, normalize=normalize, backend="triton")
        b = rloo_advantages(rewards, 4, 0.03, old, ref, mask, normalize=normalize, backend="torch")
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_sampler_and_shared_prompt_pass_on_cuda(tiny_base):
    from transformers import GenerationConfig

    from rlft import models, rloo
    from rlft.rloo.sampling import RecordingSampler

    model, tokenizer = models.load_frozen_lm(tiny_base), models.load_tokenizer(tiny_base)  # placed as stages place it
    assert next(model.parameters()).device == torch.device("cuda", torch.cuda.current_device())
    tokenizer.padding_side = "left"
    texts = [f"{'a ' * (i % 3)}problem {i}" for i in range(8)]
    inputs = {k: v.repeat_interleave(4, 0).cuda() for k, v in tokenizer(texts, return_tensors="pt", padding=True).items()}
    config = GenerationConfig(max_new_tokens=20, do_sample=True, temperature=0.9, top_k=0, top_p=1.0,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    sampler = RecordingSampler(0.9)
    torch.manual_seed(0)
    stock = model.generate(**inputs, generation_config=config)
    torch.manual_seed(0)
    ours = model.generate(**inputs, generation_config=config, custom_generate=sampler)
    assert torch.equal(ours, stock) and sampler.logps is not None
    prompt = inputs["input_ids"].shape[1]
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(ours[:, prompt:])], 1)
    labels = ours.masked_fill(mask == 0, -100)
    labels[:, :prompt] = -100
    assert rloo.add_fused_lm_head(model, 0.9, with_entropy=True)
    out = model(input_ids=ours, attention_mask=mask, labels=labels, fused_lm_head=True)  # shared prompt pass
    torch.testing.assert_close(out.log_probs[:, prompt - 1:], sampler.logps, atol=1e-4, rtol=1e-4)


def _rm_dir():
    from rlft.config import build, compose

    return build(compose(["reward_model=tiny"]).reward_model.build)


STAGES = {  # each stage's sampled and scored models, through the real CLI (tests/test_placement.py on CPU)
    "bon": (["stage=bon", "data=countdown", "n=2", "num_prompts=2", "data.evaluate.max_new_tokens=4",
             "stage.sweep=[1,2]", "select=reward", "reward=reward_model", "reward.path={rm}", "init_from={base}"],
            {"countdown held-out", "reward_models.score"}),
    "winrate": (["stage=winrate", "data=ifcheck", "init_from={base}", "reference={base}", "judge=reward_model",
                 "judge.path={rm}", "num_prompts=2", "data.evaluate.max_new_tokens=4"],
                {"policy responses", "reference responses", "reward_models.score"}),
    "rm_off_the_shelf": (["stage=rm", "stage.train=false", "data=ifcheck", "data.preference_heldout.n=4"],
                         {"reward_models.score"}),
    "rloo_lora": (["stage=rloo", "data=ifcheck", "reward=reward_model", "reward.path={rm}", "init_from={base}",
                   "peft=lora", "data.prompt_dataset.n=8", "stage.trainer.per_device_train_batch_size=4",
                   "stage.trainer.max_completion_length=4", "max_steps=1", "stage.trainer.gradient_accumulation_steps=1",
                   "data.heldout.n=2", "data.evaluate.max_new_tokens=4", "report_to=[]"],
                  {"reward_models.score", "ifcheck held-out"}),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_sampled_and_scored_model_sits_on_the_gpu(stage, tmp_path, run_cli, tiny_base, monkeypatch):
    uses = record_model_uses(monkeypatch)  # records only: the device is the real one
    args, expected = STAGES[stage]
    rm = _rm_dir()
    code, _, err = run_cli("train", "model=tiny", *(a.format(rm=rm, base=tiny_base) for a in args),
                           f"run_dir={tmp_path / stage}")
    assert code == 0, err
    assert not [(what, device) for what, device, through in uses if device != "cuda" or not through], uses
    assert expected <= {what for what, _, _ in uses}
