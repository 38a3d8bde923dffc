"""RLOO advantages in one launch, with exactly TRL 1.16's semantics (RLOOTrainer._generate_and_score_completions),
or, with `pass_k`, advantages whose policy gradient climbs pass@k / max@k instead of the mean reward.

    advantages, kl = rloo_advantages(rewards, k=4, beta=0.03, old_logps=old, ref_logps=ref, mask=mask)
    advantages, kl = rloo_advantages(rewards, k=8, ..., pass_k=4)     # PKPO's s^(loo-1), see below
    # rewards (N,) with N = prompts * k, a prompt's k samples adjacent; old/ref/mask (N, T) or kl (N,)

For sample i of a group of k samples of one prompt:
    kl_i = sum_t (old_it - ref_it) * mask_it          first-order log ratio summed over the completion
                                                      (can be < 0; RLOO's KL is a reward penalty)
    r_i  = reward_i - beta * kl_i                     NaN reward = unscorable sample
    b_i  = sum_{j != i, j scorable} r_j / (n_scorable - 1)   leave-one-out baseline over the group
    a_i  = r_i - b_i                                  unscorable samples, and a group's only scorable
                                                      sample, get 0 and stay out of normalisation
    normalise (optional): a = (a - mean(a)) / (std(a) + 1e-4) over the samples that have one
                                                      (Bessel-corrected std; fewer than two: all 0)
pass_k = m (Walder & Karkhanis, "Pass@k Policy Optimization", arXiv 2505.15201, eq. 33: s^(loo-1)).
The objective is max@m = E[max of m samples' rewards] (pass@m when rewards are 0/1). Within a group
of n scorable samples, m' = min(m, n); rank the rewards r_(0) <= ... <= r_(n-1) (ties in sample
order; the result does not depend on it). Sample i's share of max@m' over all m'-subsets I holding
it, less what I would score without it, is
    w_i = 1/C(n, m') * sum_{I ni i, |I| = m'} (max_I r - max_{I minus i} r)
        = 1/C(n, m') * sum_{j ranked below i} C(rank_j, m'-2) * (r_i - r_j)      (pairwise form used here)
sum_i w_i grad log p_i is unbiased for grad max@m' (the subtracted term does not depend on sample
i). The task term is scaled so the advantages keep RLOO's units and m = 1 is RLOO itself:
    t_i  = (n / m') w_i = sum_{j below i} C(rank_j, m'-2) / C(n-1, m'-1) * (r_i - r_j)    m' >= 2
    t_i  = r_i - mean_{j != i} r_j                                                          m' = 1
    a_i  = t_i - beta * (kl_i - mean_{j != i} kl_j)    KL stays a per-sample penalty with its own
                                                       leave-one-out baseline; normalisation as above
mean over samples of a_i grad log p_i is then unbiased for (1/m') grad max@m' - beta grad KL. With 0/1
rewards a correct sample gets C(n-c, m'-1) / C(n-1, m'-1) (c correct: the chance that it alone
passes among m'-1 others), a wrong one 0. pass_k=None (the default) is the mean-reward RLOO above,
bit for bit.
Rewards arrive gathered from every rank; per-token KL inputs are only known locally, so
multi-process callers pass per-sequence `kl` (summed locally, then gathered) instead.

Layout, as in every kernel module here: Triton kernel -> launcher -> torch reference (the CPU
path) -> dispatcher.
"""

from __future__ import annotations

import math

import torch

try:  # Triton ships with torch on Linux; without it only the torch path runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

NORM_EPS = 1e-4  # TRL's epsilon in the advantage normalisation


# ----------------------------------------------------------------------------- Triton kernel

if triton is not None:

    @triton.jit
    def _advantage_kernel(reward_ptr, old_ptr, ref_ptr, mask_ptr, kl_in_ptr, adv_ptr, kl_out_ptr,
                          G, K, T, stride_t, beta, pass_k,
                          KL_MODE: tl.constexpr, NORMALIZE: tl.constexpr, PASS_AT_K: tl.constexpr,
                          BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr):
        # A single program holds every sample as a (groups, k) tile: the baseline is a row
        # reduction, the normalisation a whole-tile one, so one launch does it all.
        # KL_MODE: 0 no KL (beta = 0), 1 per-token inputs summed here, 2 per-sequence kl given.
        g = tl.arange(0, BLOCK_G)[:, None]
        k = tl.arange(0, BLOCK_K)[None, :]
        ok = (g < G) & (k < K)
        idx = g * K + k                                                       # (BLOCK_G, BLOCK_K)
        r = tl.load(reward_ptr + idx, mask=ok, other=0.0)
        scorable = ok & (r == r)                                              # NaN != NaN
        r = tl.where(scorable, r, 0.0)
        kl = tl.zeros([BLOCK_G, BLOCK_K], tl.float32)
        if KL_MODE == 1:
            for t0 in range(0, T, BLOCK_T):
                t = t0 + tl.arange(0, BLOCK_T)[None, None, :]
                m3 = ok[:, :, None] & (t < T)
                off = idx[:, :, None] * stride_t + t                          # (BLOCK_G, BLOCK_K, BLOCK_T)
                old = tl.load(old_ptr + off, mask=m3, other=0.0).to(tl.float32)
                ref = tl.load(ref_ptr + off, mask=m3, other=0.0).to(tl.float32)
                msk = tl.load(mask_ptr + off, mask=m3, other=0).to(tl.float32)
                kl += tl.sum((old - ref) * msk, 2)
        if KL_MODE == 2:
            kl = tl.load(kl_in_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        if KL_MODE != 0:
            tl.store(kl_out_ptr + idx, kl, mask=ok)
            if not PASS_AT_K:
                r = tl.where(scorable, r - beta * kl, 0.0)
        count = tl.sum(scorable.to(tl.float32), 1)[:, None]                  # scorable samples per group
        total = tl.sum(r, 1)[:, None]
        has = scorable & (count > 1.5)                                        # samples that get an advantage
        denom = tl.where(count > 1.5, count - 1.0, 1.0)                       # no 0/0 lanes
        a = tl.where(has, r - (total - r) / denom, 0.0)
        if PASS_AT_K:
            # pairwise (groups, i, j) tiles: rank of each sample, then the s^(loo-1) sum over j below i
            g3 = tl.arange(0, BLOCK_G)[:, None, None]
            ki = tl.arange(0, BLOCK_K)[None, :, None]
            kj = tl.arange(0, BLOCK_K)[None, None, :]
            ri = tl.load(reward_ptr + g3 * K + ki, mask=(g3 < G) & (ki < K), other=float("nan"))
            rj = tl.load(reward_ptr + g3 * K + kj, mask=(g3 < G) & (kj < K), other=float("nan"))
            both = (ri == ri) & (rj == rj)
            ri = tl.where(ri == ri, ri, 0.0)
            rj = tl.where(rj == rj, rj, 0.0)
            below = both & ((rj < ri) | ((rj == ri) & (kj < ki)))             # j ranks below i
            above = both & ((ri < rj) | ((ri == rj) & (ki < kj)))             # i ranks below j
            rank_j = tl.sum(above.to(tl.float32), 1)[:, None, :]              # (G, 1, K): rank of sample j
            n3 = count[:, :, None]                                            # (G, 1, 1)
            m3 = tl.minimum(n3, pass_k * 1.0)                                 # m' = min(m, n)
            q = (m3 - 1.0) / tl.where(n3 > 1.5, n3 - 1.0, 1.0)               # C(rank_j, m'-2) / C(n-1, m'-1)
            for t in range(1, pass_k - 1):
                q = q * tl.where(t <= m3 - 2.0, (rank_j - m3 + 2.0 + t) / (n3 - m3 + t), 1.0)
            t_pk = tl.sum(tl.where(below, q * (ri - rj), 0.0), 2)             # (G, K)
            a = tl.where(has & (count > 1.5) & (tl.minimum(count, pass_k * 1.0) > 1.5), t_pk, a)
            if KL_MODE != 0:
                kl_s = tl.where(scorable, kl, 0.0)
                kl_base = (tl.sum(kl_s, 1)[:, None] - kl_s) / denom
                a = tl.where(has, a - beta * (kl_s - kl_base), 0.0)
        if NORMALIZE:
            n = tl.sum(tl.sum(has.to(tl.float32), 1), 0)
            n_safe = tl.where(n > 1.5, n, 2.0)
            mean = tl.sum(tl.sum(a, 1), 0) / n_safe
            dev = tl.where(has, a - mean, 0.0)
            std = tl.sqrt(tl.sum(tl.sum(dev * dev, 1), 0) / (n_safe - 1.0))
            a = tl.where(n > 1.5, tl.where(has, dev / (std + 1e-4), 0.0), 0.0)  # scalar & block: nested
        tl.store(adv_ptr + idx, a, mask=ok)


# ----------------------------------------------------------------------------- launcher

def _triton_advantages(rewards, k, beta, old_logps, ref_logps, mask, kl, normalize, pass_k):
    n = rewards.numel()
    g = n // k
    adv = torch.empty(n, device=rewards.device, dtype=torch.float32)
    kl_out = torch.zeros(n, device=rewards.device, dtype=torch.float32)
    mode = 0 if beta == 0 else (1 if kl is None else 2)
    t = old_logps.shape[1] if mode == 1 else 1
    dummy = rewards
    _advantage_kernel[(1,)](
        rewards, old_logps if mode == 1 else dummy, ref_logps if mode == 1 else dummy,
        mask if mode == 1 else dummy, kl if mode == 2 else dummy, adv, kl_out,
        g, k, t, old_logps.stride(0) if mode == 1 else 0, float(beta), pass_k or 1,
        KL_MODE=mode, NORMALIZE=normalize, PASS_AT_K=pass_k is not None, BLOCK_G=max(2, triton.next_power_of_2(g)),
        BLOCK_K=max(2, triton.next_power_of_2(k)), BLOCK_T=16,
    )
    return adv, (kl_out if mode else None)


# ----------------------------------------------------------------------------- torch reference (CPU path)

def _torch_advantages(rewards, k, beta, old_logps, ref_logps, mask, kl, normalize, pass_k):
    r = rewards.float().view(-1, k)                                           # (G, K)
    scorable = ~torch.isnan(r)
    r = r.nan_to_num(0.0)
    if beta != 0:
        if kl is None:
            kl = ((old_logps.float() - ref_logps.float()) * mask.float()).sum(-1)
        kl = kl.float()
        if pass_k is None:
            r = torch.where(scorable, r - beta * kl.view(-1, k), 0.0)
    count = scorable.sum(1, keepdim=True).float()
    has = scorable & (count > 1)
    baseline = (r.sum(1, keepdim=True) - r) / (count - 1).clamp(min=1)
    a = torch.where(has, r - baseline, 0.0)
    if pass_k is not None:
        a = torch.where(has & (count.clamp(max=pass_k) > 1), _pass_at_k_term(r, scorable, count, pass_k), a)
        if beta != 0:
            kl_s = torch.where(scorable, kl.view(-1, k), 0.0)
            a = torch.where(has, a - beta * (kl_s - (kl_s.sum(1, keepdim=True) - kl_s) / (count - 1).clamp(min=1)), 0.0)
    if normalize:
        n = has.sum()
        if n > 1:
            mean = a[has].mean()
            dev = torch.where(has, a - mean, 0.0)
            std = (dev.pow(2).sum() / (n - 1)).sqrt()
            a = torch.where(has, dev / (std + NORM_EPS), 0.0)
        else:
            a = torch.zeros_like(a)
    return a.view(-1), (kl if beta != 0 else None)


def _pass_at_k_term(r, scorable, count, pass_k):
    """t_i of the module docstring for m' >= 2, (G, K): pairwise over (G, i, j)."""
    k = r.shape[1]
    order = torch.arange(k, device=r.device)
    ri, rj = r[:, :, None], r[:, None, :]
    both = scorable[:, :, None] & scorable[:, None, :]
    below = both & ((rj < ri) | ((rj == ri) & (order[None, None, :] < order[None, :, None])))   # j below i
    rank_j = below.sum(2, dtype=torch.float32)[:, None, :]                    # samples below j: (G, 1, K)
    n3 = count[:, :, None]
    m3 = n3.clamp(max=pass_k)
    q = (m3 - 1) / (n3 - 1).clamp(min=1)                                      # C(rank_j, m'-2) / C(n-1, m'-1)
    for t in range(1, pass_k - 1):
        q = q * torch.where(t <= m3 - 2, (rank_j - m3 + 2 + t) / (n3 - m3 + t), 1.0)
    return torch.where(below, q * (ri - rj), 0.0).sum(2)


def max_at_k(rewards: torch.Tensor, k: int, m: int) -> torch.Tensor:
    """Unbiased max@m (pass@m for 0/1 rewards) of each group of k samples, (N / k,), NaN-aware.

    1/C(n, m') * sum over the m'-subsets of the group's scorable rewards of their max, with
    m' = min(m, n): sum_i C(rank_i, m'-1) / C(n, m') * r_i (eq. 12 of arXiv 2505.15201). NaN for a
    group without a scorable sample. Logged by rlft.rloo.RLOOTrainer beside the mean reward.
    """
    r = rewards.float().view(-1, k)
    scorable = ~torch.isnan(r)
    n = scorable.sum(1).tolist()
    out = []
    for row, ok, count in zip(r, scorable, n):
        vals = row[ok].sort().values
        mm = min(m, count)
        if count == 0:
            out.append(math.nan)
            continue
        weights = [math.comb(i, mm - 1) / math.comb(count, mm) for i in range(count)]
        out.append(float((vals * torch.tensor(weights, dtype=torch.float32)).sum()))
    return torch.tensor(out)


# ----------------------------------------------------------------------------- dispatcher

def rloo_advantages(rewards: torch.Tensor, k: int, beta: float = 0.0, old_logps: torch.Tensor | None = None,
                    ref_logps: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                    kl: torch.Tensor | None = None, normalize: bool = False, backend: str | None = None,
                    pass_k: int | None = None):
    """Leave-one-out advantages (N,) fp32 and the per-sequence KL (N,) (None when beta = 0).

    pass_k: None for mean-reward RLOO; m >= 1 for the pass@m / max@m advantages of the module
    docstring (m = 1 is RLOO, up to float rounding).

    rewards (N,) with NaN for unscorable samples, N = prompts * k with each prompt's samples
    adjacent (TRL's order). With beta != 0 give either per-token old_logps, ref_logps and mask
    (N, T), or per-sequence kl (N,). backend: "triton" (default on CUDA; on CPU only under
    TRITON_INTERPRET=1) or "torch".
    """
    n = rewards.numel()
    if k < 1 or n % k:
        raise ValueError(f"{n} rewards do not split into groups of k={k}")
    if pass_k is not None and (int(pass_k) != pass_k or pass_k < 1):
        raise ValueError(f"pass_k must be a positive integer, got {pass_k!r}")
    if beta != 0 and kl is None and (old_logps is None or ref_logps is None or mask is None):
        raise ValueError("beta != 0 needs old_logps, ref_logps and mask, or kl")
    if backend is None:
        backend = "triton" if rewards.is_cuda and triton is not None else "torch"
    if backend == "triton":
        if triton is None:
            raise RuntimeError("backend='triton' needs the triton package")
        contiguous = [x.contiguous() if x is not None else None for x in (old_logps, ref_logps, mask, kl)]
        return _triton_advantages(rewards.float().contiguous(), k, beta, *contiguous, normalize, pass_k)
    return _torch_advantages(rewards, k, beta, old_logps, ref_logps, mask, kl, normalize, pass_k)
