"""rlft.kernels.rloo_advantage: Triton (under TRITON_INTERPRET=1) vs the torch reference vs TRL
1.16's own lines (transcribed from RLOOTrainer._generate_and_score_completions); the pass@k
advantages vs enumeration of every k-subset, and their gradient vs the exact one."""

import itertools
import math

import pytest
import torch

from rlft.kernels.rloo_advantage import max_at_k, rloo_advantages

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


# ----------------------------------------------------------------------------- pass@k / max@k (pass_k=m)

def _subset_advantages(rewards: list[float], m: int) -> list[float]:
    """The definition, by enumeration: n/m' * 1/C(n, m') * sum over m'-subsets I holding i of
    (max_I - max_{I minus i}); m' = min(m, n) over the n scorable (non-NaN) samples; m' = 1: RLOO."""
    idx = [i for i, r in enumerate(rewards) if not math.isnan(r)]
    n, out = len(idx), [0.0] * len(rewards)
    mm = min(m, n)
    if n < 2:
        return out
    if mm == 1:
        return [0.0 if math.isnan(r) else r - (sum(rewards[j] for j in idx) - r) / (n - 1) for r in rewards]
    for subset in itertools.combinations(idx, mm):
        best = max(rewards[j] for j in subset)
        for i in subset:
            out[i] += best - max(rewards[j] for j in subset if j != i)
    return [x * n / mm / math.comb(n, mm) for x in out]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rewards_kind", ["binary", "tinyzero", "continuous"])
def test_pass_at_k_equals_enumeration_of_all_k_subsets(backend, rewards_kind):
    """Every m from 1 past n, ties (0/1 and TinyZero's 0 / 0.1 / 1), NaN samples leaving their group."""
    g = torch.Generator().manual_seed({"binary": 1, "tinyzero": 2, "continuous": 3}[rewards_kind])
    k, groups = 6, 8
    if rewards_kind == "binary":
        rewards = torch.randint(0, 2, (groups * k,), generator=g).float()
    elif rewards_kind == "tinyzero":
        rewards = torch.tensor([0.0, 0.1, 1.0])[torch.randint(0, 3, (groups * k,), generator=g)]
    else:
        rewards = torch.randn(groups * k, generator=g)
    rewards[torch.rand(groups * k, generator=g) < 0.25] = math.nan
    rewards[:k] = math.nan        # a group with no scorable sample
    rewards[k:2 * k - 1] = math.nan  # and one with a single one
    for m in range(1, k + 2):
        adv, _ = rloo_advantages(rewards, k, pass_k=m, backend=backend)
        want = [a for i in range(groups) for a in _subset_advantages(rewards[i * k:(i + 1) * k].tolist(), m)]
        torch.testing.assert_close(adv, torch.tensor(want), atol=1e-6, rtol=1e-5, msg=f"pass_k={m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pass_at_k_binary_closed_form(backend):
    """0/1 rewards, c correct of n: a correct sample gets C(n-c, m-1) / C(n-1, m-1), a wrong one 0."""
    n, m = 8, 3
    rewards = torch.tensor([float(i < c) for c in range(n + 1) for i in range(n)])
    adv, _ = rloo_advantages(rewards, n, pass_k=m, backend=backend)
    want = [math.comb(n - c, m - 1) / math.comb(n - 1, m - 1) if i < c else 0.0 for c in range(n + 1) for i in range(n)]
    torch.testing.assert_close(adv, torch.tensor(want))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_pass_at_1_is_rloo(backend, normalize, beta):
    rewards, old, ref, mask = _batch(5, 4, 6, seed=11, nan_frac=0.2)
    want, _ = rloo_advantages(rewards, 4, beta, old, ref, mask, normalize=normalize, backend=backend)
    got, _ = rloo_advantages(rewards, 4, beta, old, ref, mask, normalize=normalize, backend=backend, pass_k=1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pass_at_n_credits_only_the_best_sample_by_its_margin(backend):
    """m = n: the only subset is the whole group; only its best sample changes its max, by the gap
    to the runner-up; tied best samples change nothing."""
    rewards = torch.tensor([0.2, 0.9, 0.5, 0.1,   0.7, 0.7, 0.3, 0.0,   1.0, 1.0, 1.0, 1.0])
    adv, _ = rloo_advantages(rewards, 4, pass_k=4, backend=backend)
    torch.testing.assert_close(adv, torch.tensor([0, 0.4, 0, 0,   0, 0, 0, 0,   0, 0, 0, 0.0]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pass_at_k_keeps_the_kl_penalty_per_sample(backend):
    """a_i = t_i - beta (kl_i - mean of the others' kl); normalisation as for RLOO; Triton == torch."""
    rewards, old, ref, mask = _batch(6, 5, 9, seed=12, nan_frac=0.2)
    plain, _ = rloo_advantages(rewards, 5, pass_k=3, backend=backend)
    adv, kl = rloo_advantages(rewards, 5, 0.1, old, ref, mask, pass_k=3, backend=backend)
    r, klg = rewards.view(-1, 5), kl.view(-1, 5)
    ok = ~torch.isnan(r)
    count = ok.sum(1, keepdim=True)
    kl_s = torch.where(ok, klg, 0.0)
    penalty = torch.where(ok & (count > 1), 0.1 * (kl_s - (kl_s.sum(1, keepdim=True) - kl_s) / (count - 1).clamp(min=1)), 0.0)
    torch.testing.assert_close(adv, plain - penalty.view(-1), atol=1e-6, rtol=1e-5)
    normed, _ = rloo_advantages(rewards, 5, 0.1, old, ref, mask, pass_k=3, normalize=True, backend=backend)
    has = adv != 0
    torch.testing.assert_close(normed[has], (adv[has] - adv[has].mean()) / (adv[has].std() + 1e-4), atol=1e-5, rtol=1e-4)
    other, _ = rloo_advantages(rewards, 5, 0.1, old, ref, mask, pass_k=3, normalize=True,
                               backend="torch" if backend == "triton" else "triton")
    torch.testing.assert_close(normed, other, atol=1e-6, rtol=1e-5)


def _exact_expectations(probs: torch.Tensor, values: list[float], n: int, m: int):
    """A categorical policy over len(values) answers, n samples a prompt, enumerated exactly:
    (E[max_at_k estimate], exact max@m, E[mean_i a_i grad log p(x_i)], exact (1/m) grad max@m)."""
    logits = probs.log().clone().requires_grad_(True)
    p = logits.softmax(0)
    exact = sum(p[list(t)].prod() * max(values[i] for i in t) for t in itertools.product(range(len(values)), repeat=m))
    (grad_exact,) = torch.autograd.grad(exact / m, logits)
    estimate, grad_estimate = 0.0, torch.zeros_like(logits)
    logp = logits.detach().log_softmax(0)
    for t in itertools.product(range(len(values)), repeat=n):
        weight = probs[list(t)].prod()
        rewards = torch.tensor([values[i] for i in t])
        estimate += weight * max_at_k(rewards, n, m).item()
        adv, _ = rloo_advantages(rewards, n, pass_k=m)
        score = torch.zeros_like(logits)  # mean_i a_i grad log p(x_i); grad log softmax = onehot - p
        for i, a in zip(t, adv):
            score += a * (torch.nn.functional.one_hot(torch.tensor(i), len(values)).float() - logp.exp())
        grad_estimate += weight * score / n
    return estimate, exact.item(), grad_estimate, grad_exact


@pytest.mark.parametrize("values", [[0.0, 1.0, 0.0], [0.0, 0.1, 1.0], [-0.3, 0.5, 1.2]],
                         ids=["pass@k", "tinyzero max@k", "reward-model max@k"])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_pass_at_k_estimate_and_gradient_are_unbiased(values, m):
    """Over every possible batch of n = 4 samples from a 3-answer policy: the max@m estimate's mean
    is the exact max@m, and mean_i a_i grad log p(x_i) has mean (1/m) grad max@m (exact, by autograd
    through the enumerated objective)."""
    probs = torch.tensor([0.5, 0.3, 0.2])
    estimate, exact, grad_estimate, grad_exact = _exact_expectations(probs, values, 4, m)
    assert estimate == pytest.approx(exact, abs=1e-6)
    torch.testing.assert_close(grad_estimate, grad_exact, atol=1e-6, rtol=1e-5)


def test_unbiasedness_check_catches_a_wrong_weight(monkeypatch):
    """The enumeration above is not vacuous: the weights off by one rank (C(rank_j + 1, m-2)) fail it."""
    from rlft.kernels import rloo_advantage

    real = rloo_advantage._pass_at_k_term
    monkeypatch.setattr(rloo_advantage, "_pass_at_k_term",
                        lambda r, scorable, count, pass_k: real(r, scorable, count + 1, pass_k))
    _, _, grad_estimate, grad_exact = _exact_expectations(torch.tensor([0.5, 0.3, 0.2]), [0.0, 0.1, 1.0], 4, 2)
    assert not torch.allclose(grad_estimate, grad_exact, atol=1e-4, rtol=1e-3)


def test_bad_pass_k_is_named():
    with pytest.raises(ValueError, match="pass_k must be a positive integer"):
        rloo_advantages(torch.zeros(4), 2, pass_k=0)
