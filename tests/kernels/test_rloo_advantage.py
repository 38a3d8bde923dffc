"""rlft.kernels.rloo_advantage: Triton (under TRITON_INTERPRET=1) vs the torch reference vs TRL
1.16's own lines (transcribed from RLOOTrainer._generate_and_score_completions)."""

import math

import pytest
import torch

from rlft.kernels.rloo_advantage import rloo_advantages

BACKENDS = ["torch", "triton"]


def trl_formula(rewards, k, beta, old, ref, mask, normalize):
    """RLOOTrainer's advantage lines, verbatim but for names (one reward function, weight 1)."""
    from trl.trainer.utils import nanstd

    rewards_per_func = rewards.float().unsqueeze(1)
    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * torch.ones(1).unsqueeze(0)).nansum(dim=1)
    rewards[unscorable_mask] = torch.nan
    if beta != 0.0:
        per_token_kl = old - ref
        kl = (per_token_kl * mask).sum(-1)
        rewards = rewards - beta * kl
    grouped_rewards = rewards.view(-1, k)
    scorable_counts = (~torch.isnan(grouped_rewards)).sum(dim=1, keepdim=True)
    grouped_sum = torch.nansum(grouped_rewards, dim=1, keepdim=True)
    if k > 1:
        baselines = (grouped_sum - grouped_rewards) / (scorable_counts - 1)
        advantages = rewards - baselines.view(-1)
    else:
        advantages = torch.zeros_like(rewards)
    if normalize:
        advantages = (advantages - torch.nanmean(advantages)) / (nanstd(advantages) + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def _batch(prompts, k, t, seed=0, nan_frac=0.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(prompts * k, generator=g)
    if nan_frac:
        rewards[torch.rand(prompts * k, generator=g) < nan_frac] = math.nan
    old = -torch.rand(prompts * k, t, generator=g) * 3
    ref = -torch.rand(prompts * k, t, generator=g) * 3
    lengths = torch.randint(1, t + 1, (prompts * k,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    return rewards, old.to(dtype), ref.to(dtype), mask


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prompts,k,t", [(3, 4, 9), (5, 3, 1), (4, 1, 7), (1, 2, 33), (7, 5, 20)])
@pytest.mark.parametrize("beta", [0.0, 0.03])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("nan_frac", [0.0, 0.3])
def test_matches_trl(backend, prompts, k, t, beta, normalize, nan_frac):
    rewards, old, ref, mask = _batch(prompts, k, t, seed=prompts * 100 + k * 10 + t, nan_frac=nan_frac)
    want = trl_formula(rewards.clone(), k, beta, old, ref, mask, normalize)
    adv, kl = rloo_advantages(rewards, k, beta, old, ref, mask, normalize=normalize, backend=backend)
    # fp32 sums over at most a few dozen terms in another order: 1e-5 absolute, 1e-4 relative
    # (normalisation divides by a std that can be small, so relative error matters there)
    torch.testing.assert_close(adv, want, atol=1e-5, rtol=1e-4)
    if beta:
        torch.testing.assert_close(kl, ((old - ref) * mask).sum(-1), atol=1e-5, rtol=1e-5)
    else:
        assert kl is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_sequence_kl_equals_per_token(backend):
    """Multi-process callers pass the gathered per-sequence KL; same advantages as the per-token inputs."""
    rewards, old, ref, mask = _batch(6, 4, 12, seed=5, nan_frac=0.2)
    a, kl = rloo_advantages(rewards, 4, 0.1, old, ref, mask, normalize=True, backend=backend)
    b, _ = rloo_advantages(rewards, 4, 0.1, kl=kl, normalize=True, backend=backend)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_logprobs(backend):
    """bf16 log-probs are summed in fp32 inside; compared with the fp32 formula on the same values."""
    rewards, old, ref, mask = _batch(4, 4, 16, seed=7, dtype=torch.bfloat16)
    want = trl_formula(rewards.clone(), 4, 0.05, old.float(), ref.float(), mask, True)
    adv, _ = rloo_advantages(rewards, 4, 0.05, old, ref, mask, normalize=True, backend=backend)
    torch.testing.assert_close(adv, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unscorable_samples_leave_the_baseline(backend):
    nan = math.nan
    rewards = torch.tensor([1.0, nan, 3.0, 5.0,    # baseline of 1.0 is (3+5)/2: NaN left out
                            nan, 2.0, nan, nan,    # one scorable sample: nothing to compare, 0
                            nan, nan, nan, nan])   # no scorable sample: all 0
    adv, _ = rloo_advantages(rewards, 4, backend=backend)
    assert adv.tolist() == [1.0 - 4.0, 0.0, 3.0 - 3.0, 5.0 - 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_k1_and_constant_groups_give_zero(backend):
    assert rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), 1, normalize=True, backend=backend)[0].tolist() == [0, 0, 0]
    adv, _ = rloo_advantages(torch.tensor([2.0, 2.0, 2.0, 7.0, 7.0, 7.0]), 3, normalize=True, backend=backend)
    assert adv.abs().max().item() == 0.0


def test_bad_groups_are_named():
    with pytest.raises(ValueError, match="groups of k=4"):
        rloo_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="beta != 0 needs"):
        rloo_advantages(torch.zeros(4), 2, beta=0.1)
