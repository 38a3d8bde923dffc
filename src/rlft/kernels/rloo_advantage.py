"""RLOO advantages in one launch, with exactly TRL 1.16's semantics (RLOOTrainer._generate_and_score_completions).

    advantages, kl = rloo_advantages(rewards, k=4, beta=0.03, old_logps=old, ref_logps=ref, mask=mask)
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
Rewards arrive gathered from every rank; per-token KL inputs are only known locally, so
multi-process callers pass per-sequence `kl` (summed locally, then gathered) instead.

Layout (style.md): Triton kernel -> launcher -> torch reference (the CPU path) -> dispatcher.
"""

from __future__ import annotations

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
                          G, K, T, stride_t, beta,
                          KL_MODE: tl.constexpr, NORMALIZE: tl.constexpr,
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
            r = tl.where(scorable, r - beta * kl, 0.0)
        count = tl.sum(scorable.to(tl.float32), 1)[:, None]                  # scorable samples per group
        total = tl.sum(r, 1)[:, None]
        has = scorable & (count > 1.5)                                        # samples that get an advantage
        denom = tl.where(count > 1.5, count - 1.0, 1.0)                       # no 0/0 lanes
        a = tl.where(has, r - (total - r) / denom, 0.0)
        if NORMALIZE:
            n = tl.sum(tl.sum(has.to(tl.float32), 1), 0)
            n_safe = tl.where(n > 1.5, n, 2.0)
            mean = tl.sum(tl.sum(a, 1), 0) / n_safe
            dev = tl.where(has, a - mean, 0.0)
            std = tl.sqrt(tl.sum(tl.sum(dev * dev, 1), 0) / (n_safe - 1.0))
            a = tl.where(n > 1.5, tl.where(has, dev / (std + 1e-4), 0.0), 0.0)  # scalar & block: nested
        tl.store(adv_ptr + idx, a, mask=ok)


# ----------------------------------------------------------------------------- launcher

def _triton_advantages(rewards, k, beta, old_logps, ref_logps, mask, kl, normalize):
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
        g, k, t, old_logps.stride(0) if mode == 1 else 0, float(beta),
        KL_MODE=mode, NORMALIZE=normalize, BLOCK_G=max(2, triton.next_power_of_2(g)),
        BLOCK_K=max(2, triton.next_power_of_2(k)), BLOCK_T=16,
    )
    return adv, (kl_out if mode else None)


# ----------------------------------------------------------------------------- torch reference (CPU path)

def _torch_advantages(rewards, k, beta, old_logps, ref_logps, mask, kl, normalize):
    r = rewards.float().view(-1, k)                                           # (G, K)
    scorable = ~torch.isnan(r)
    r = r.nan_to_num(0.0)
    if beta != 0:
        if kl is None:
            kl = ((old_logps.float() - ref_logps.float()) * mask.float()).sum(-1)
        kl = kl.float()
        r = torch.where(scorable, r - beta * kl.view(-1, k), 0.0)
    count = scorable.sum(1, keepdim=True).float()
    has = scorable & (count > 1)
    baseline = (r.sum(1, keepdim=True) - r) / (count - 1).clamp(min=1)
    a = torch.where(has, r - baseline, 0.0)
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


# ----------------------------------------------------------------------------- dispatcher

def rloo_advantages(rewards: torch.Tensor, k: int, beta: float = 0.0, old_logps: torch.Tensor | None = None,
                    ref_logps: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                    kl: torch.Tensor | None = None, normalize: bool = False, backend: str | None = None):
    """Leave-one-out advantages (N,) fp32 and the per-sequence KL (N,) (None when beta = 0).

    rewards (N,) with NaN for unscorable samples, N = prompts * k with each prompt's samples
    adjacent (TRL's order). With beta != 0 give either per-token old_logps, ref_logps and mask
    (N, T), or per-sequence kl (N,). backend: "triton" (default on CUDA; on CPU only under
    TRITON_INTERPRET=1) or "torch".
    """
    n = rewards.numel()
    if k < 1 or n % k:
        raise ValueError(f"{n} rewards do not split into groups of k={k}")
    if beta != 0 and kl is None and (old_logps is None or ref_logps is None or mask is None):
        raise ValueError("beta != 0 needs old_logps, ref_logps and mask, or kl")
    if backend is None:
        backend = "triton" if rewards.is_cuda and triton is not None else "torch"
    if backend == "triton":
        if triton is None:
            raise RuntimeError("backend='triton' needs the triton package")
        contiguous = [x.contiguous() if x is not None else None for x in (old_logps, ref_logps, mask, kl)]
        return _triton_advantages(rewards.float().contiguous(), k, beta, *contiguous, normalize)
    return _torch_advantages(rewards, k, beta, old_logps, ref_logps, mask, kl, normalize)
