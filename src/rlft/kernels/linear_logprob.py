"""Per-token log-probs of the sampled tokens straight from the final hidden states and the lm_head
weight, with the [tokens, vocab] logits never materialised.

    logp, entropy = linear_logprobs(hidden, weight, targets, temperature=0.7, with_entropy=True)
    # hidden (N, H), weight (V, H), targets (N,) int64 -> logp (N,) fp32, entropy (N,) fp32 or None

Why: Qwen2.5's vocabulary is 151,936 wide, so the logits of 4,096 completion tokens are 2.5 GB in
fp32 before log_softmax copies them, three times per RLOO step (policy, old, reference). Here the
tokens and the vocabulary are walked in tiles with an online log-sum-exp (running max m, running
sum s = sum exp(z - m), rescaled by exp(m_old - m_new) when the max grows); only per-token numbers
persist: log Z, the target logit, and sum p*z for the entropy. The backward recomputes each tile's
logits, turns them into dL/dlogits in place and accumulates the two gradient GEMMs in fp32:
extra memory is one tile, the price is one more GEMM.

Math, with z = hidden @ weight.T / T and log Z = logsumexp(z):
    log p(target) = z_target - log Z            entropy = log Z - sum_j p_j z_j
    dlogp/dz_j = 1[j = target] - p_j            dentropy/dz_j = -p_j (log p_j + entropy)
and d/dlogits = d/dz / T.

Layout, as in every kernel module here: Triton kernels -> launchers -> torch reference (the CPU
path) -> dispatcher.
"""

from __future__ import annotations

import torch

try:  # Triton ships with torch on Linux; without it (macOS, some CPU installs) only the torch path runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

# Torch path tile: 1,024 tokens x 8,192 vocab in fp32 = 32 MB, plus one temporary of the same size.
TOKENS_PER_TILE = 1024
VOCAB_PER_TILE = 8192
# Torch path: the forward keeps (scaled) logit tiles for the backward up to this many bytes, and the
# backward recomputes only the others: a kept tile saves one of its four GEMMs (three, like the
# full-logits path, still without its log-softmax and gradient copies). Qwen2.5's vocab: all tiles
# kept up to ~880 tokens, the first 512 MiB of them beyond; the tiny model: always all.
KEEP_LOGITS_BYTES = 512 * 2**20


# ----------------------------------------------------------------------------- Triton kernels

if triton is not None:

    @triton.jit
    def _forward_kernel(h_ptr, w_ptr, t_ptr, logp_ptr, lse_ptr, ent_ptr, N, V, H, stride_h, stride_w, inv_t,
                        HAS_ENTROPY: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
        # One program per BLOCK_N tokens: walk the vocabulary in BLOCK_V columns, each logits block
        # (BLOCK_N, BLOCK_V) built in registers by tl.dot over BLOCK_H slices of the hidden size,
        # folded into the online log-sum-exp, and dropped. Nothing of size V is written.
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        target = tl.load(t_ptr + rows, mask=row_ok, other=0)
        m = tl.full([BLOCK_N], float("-inf"), tl.float32)   # running max of z
        s = tl.zeros([BLOCK_N], tl.float32)                  # sum exp(z - m)
        xs = tl.zeros([BLOCK_N], tl.float32)                 # sum exp(z - m) * z   (entropy)
        tz = tl.zeros([BLOCK_N], tl.float32)                 # z at the target
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            col_ok = cols < V
            acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
            for h0 in range(0, H, BLOCK_H):
                ks = h0 + tl.arange(0, BLOCK_H)
                k_ok = ks < H
                a = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :],
                            mask=row_ok[:, None] & k_ok[None, :], other=0.0)           # (BLOCK_N, BLOCK_H)
                b = tl.load(w_ptr + cols[None, :] * stride_w + ks[:, None],
                            mask=k_ok[:, None] & col_ok[None, :], other=0.0)           # (BLOCK_H, BLOCK_V)
                if UPCAST:
                    a, b = a.to(tl.float32), b.to(tl.float32)
                acc += tl.dot(a, b, input_precision=PRECISION)
            z = acc * inv_t
            z_masked = tl.where(col_ok[None, :], z, float("-inf"))
            new_m = tl.maximum(m, tl.max(z_masked, 1))
            rescale = tl.exp(m - new_m)
            e = tl.exp(z_masked - new_m[:, None])                                       # 0 on padding columns
            s = s * rescale + tl.sum(e, 1)
            if HAS_ENTROPY:
                xs = xs * rescale + tl.sum(e * tl.where(col_ok[None, :], z, 0.0), 1)
            m = new_m
            tz += tl.sum(tl.where(cols[None, :] == target[:, None], z, 0.0), 1)
        lse = m + tl.log(s)
        tl.store(logp_ptr + rows, tz - lse, mask=row_ok)
        tl.store(lse_ptr + rows, lse, mask=row_ok)
        if HAS_ENTROPY:
            tl.store(ent_ptr + rows, lse - xs / s, mask=row_ok)

    @triton.jit
    def _backward_kernel(h_ptr, w_ptr, t_ptr, lse_ptr, ent_ptr, glp_ptr, gent_ptr, dz_ptr, N, V, H,
                         stride_h, stride_w, stride_dz, vocab_start, inv_t,
                         HAS_ENTROPY_GRAD: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
        # One program per (BLOCK_N tokens, BLOCK_V vocab) block of a tile: recompute z with tl.dot
        # and write dL/dlogits into the tile; the launcher then runs the gradient GEMMs on the tile.
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        row_ok = rows < N
        col_ok = cols < V
        acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        for h0 in range(0, H, BLOCK_H):
            ks = h0 + tl.arange(0, BLOCK_H)
            k_ok = ks < H
            a = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptr + cols[None, :] * stride_w + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            if UPCAST:
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc += tl.dot(a, b, input_precision=PRECISION)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        glp = tl.load(glp_ptr + rows, mask=row_ok, other=0.0)
        target = tl.load(t_ptr + rows, mask=row_ok, other=0) - vocab_start
        log_p = acc * inv_t - lse[:, None]
        p = tl.exp(log_p)
        grad = glp[:, None] * (tl.where(cols[None, :] == target[:, None], 1.0, 0.0) - p)
        if HAS_ENTROPY_GRAD:
            ent = tl.load(ent_ptr + rows, mask=row_ok, other=0.0)
            gent = tl.load(gent_ptr + rows, mask=row_ok, other=0.0)
            grad -= gent[:, None] * p * (log_p + ent[:, None])
        tl.store(dz_ptr + rows[:, None] * stride_dz + cols[None, :], grad * inv_t,
                 mask=row_ok[:, None] & col_ok[None, :])


# ----------------------------------------------------------------------------- launchers

def _blocks(hidden: torch.Tensor) -> dict:
    # tl.dot needs every block dimension >= 16; on GPU larger token blocks reuse each weight load more.
    # fp32 models get IEEE fp32 products (TF32 would cost ~1e-3 relative); bf16 feeds the tensor cores.
    # The CPU interpreter's tl.dot mishandles bf16, so there the blocks are upcast first.
    return {"BLOCK_N": 64 if hidden.is_cuda else 16, "BLOCK_V": 128 if hidden.is_cuda else 32, "BLOCK_H": 32,
            "UPCAST": not hidden.is_cuda, "PRECISION": "ieee" if hidden.dtype == torch.float32 else "tf32"}


def _triton_forward(hidden, weight, targets, inv_t, with_entropy):
    n, h = hidden.shape
    v = weight.shape[0]
    logp = torch.empty(n, device=hidden.device, dtype=torch.float32)
    lse = torch.empty_like(logp)
    ent = torch.empty_like(logp) if with_entropy else None
    blocks = _blocks(hidden)
    grid = (triton.cdiv(n, blocks["BLOCK_N"]),)
    _forward_kernel[grid](hidden, weight, targets, logp, lse, ent if with_entropy else lse, n, v, h,
                          hidden.stride(0), weight.stride(0), inv_t, HAS_ENTROPY=with_entropy, **blocks)
    return logp, lse, ent


def _triton_backward(hidden, weight, targets, lse, ent, g_logp, g_ent, inv_t, need_h, need_w):
    n, h = hidden.shape
    v = weight.shape[0]
    grad_h = torch.zeros(hidden.shape, device=hidden.device, dtype=torch.float32) if need_h else None
    grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
    blocks = _blocks(hidden)
    tile = torch.empty(min(n, TOKENS_PER_TILE), min(v, VOCAB_PER_TILE), device=hidden.device, dtype=torch.float32)
    for t0 in range(0, n, TOKENS_PER_TILE):
        t1 = min(t0 + TOKENS_PER_TILE, n)
        for v0 in range(0, v, VOCAB_PER_TILE):
            v1 = min(v0 + VOCAB_PER_TILE, v)
            dz = tile[: t1 - t0, : v1 - v0]
            grid = (triton.cdiv(t1 - t0, blocks["BLOCK_N"]), triton.cdiv(v1 - v0, blocks["BLOCK_V"]))
            _backward_kernel[grid](hidden[t0:t1], weight[v0:v1], targets[t0:t1], lse[t0:t1],
                                   (ent if ent is not None else lse)[t0:t1], g_logp[t0:t1],
                                   (g_ent if g_ent is not None else g_logp)[t0:t1], dz,
                                   t1 - t0, v1 - v0, h, hidden.stride(0), weight.stride(0), dz.stride(0), v0, inv_t,
                                   HAS_ENTROPY_GRAD=g_ent is not None, **blocks)
            _accumulate(grad_h, grad_w, dz, hidden, weight, t0, t1, v0, v1)
    return grad_h, grad_w


def _accumulate(grad_h, grad_w, dz, hidden, weight, t0, t1, v0, v1):
    """grad_hidden += dz @ W_tile ; grad_weight += dz.T @ hidden_tile, accumulated in fp32."""
    if grad_h is not None:
        grad_h[t0:t1].addmm_(dz, weight[v0:v1].float())
    if grad_w is not None:
        grad_w[v0:v1].addmm_(dz.t(), hidden[t0:t1].float())


# ----------------------------------------------------------------------------- torch reference (CPU path)

def _torch_forward(hidden, weight, targets, inv_t, with_entropy, keep_bytes=0):
    n = hidden.shape[0]
    v = weight.shape[0]
    logp = torch.empty(n, device=hidden.device, dtype=torch.float32)
    lse = torch.empty_like(logp)
    ent = torch.empty_like(logp) if with_entropy else None
    kept = {}                                                             # (t0, v0) -> that tile's logits
    for t0 in range(0, n, TOKENS_PER_TILE):
        t1 = min(t0 + TOKENS_PER_TILE, n)
        h = hidden[t0:t1].float()                                         # (n_t, H)
        target = targets[t0:t1]
        m = torch.full((t1 - t0,), float("-inf"), device=h.device)
        s = torch.zeros_like(m)
        xs = torch.zeros_like(m)
        tz = torch.zeros_like(m)
        for v0 in range(0, v, VOCAB_PER_TILE):
            v1 = min(v0 + VOCAB_PER_TILE, v)
            z = h @ weight[v0:v1].float().t()                             # (n_t, v_t): the only big tensor
            if inv_t != 1.0:
                z.mul_(inv_t)
            if z.numel() * 4 <= keep_bytes:
                kept[t0, v0] = z if with_entropy else z.clone()           # (without entropy z is reused in place)
                keep_bytes -= z.numel() * 4
            in_tile = (target >= v0) & (target < v1)
            picked = z.gather(1, (target - v0).clamp(0, v1 - v0 - 1).unsqueeze(1)).squeeze(1)
            tz = torch.where(in_tile, picked, tz)
            new_m = torch.maximum(m, z.amax(1))
            rescale = torch.exp(m - new_m)
            if with_entropy:                                              # sum e*z needs z: one temporary
                e = torch.exp(z - new_m.unsqueeze(1))
                xs = xs * rescale + torch.linalg.vecdot(e, z)
            else:                                                         # in place: no temporary at all
                e = z.sub_(new_m.unsqueeze(1)).exp_()
            s = s * rescale + e.sum(1)
            m = new_m
        lse[t0:t1] = m + torch.log(s)
        logp[t0:t1] = tz - lse[t0:t1]
        if with_entropy:
            ent[t0:t1] = lse[t0:t1] - xs / s
    return logp, lse, ent, kept


def _torch_backward(hidden, weight, targets, lse, ent, g_logp, g_ent, inv_t, need_h, need_w, kept=None):
    kept = kept or {}
    n = hidden.shape[0]
    v = weight.shape[0]
    grad_h = torch.zeros(hidden.shape, device=hidden.device, dtype=torch.float32) if need_h else None
    grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
    for t0 in range(0, n, TOKENS_PER_TILE):
        t1 = min(t0 + TOKENS_PER_TILE, n)
        h = hidden[t0:t1].float()
        for v0 in range(0, v, VOCAB_PER_TILE):
            v1 = min(v0 + VOCAB_PER_TILE, v)
            if (t0, v0) in kept:                                          # the forward's logits (not in place:
                log_p = kept[t0, v0] - lse[t0:t1].unsqueeze(1)            # a retained graph may run it twice)
            else:
                log_p = h @ weight[v0:v1].float().t()                     # (n_t, v_t)
                if inv_t != 1.0:
                    log_p.mul_(inv_t)
                log_p.sub_(lse[t0:t1].unsqueeze(1))                       # log p_j
            if g_ent is None:
                dz = log_p.exp_().mul_(-g_logp[t0:t1].unsqueeze(1))      # -g * p_j, in place
            else:                                                         # - g_ent * p_j (log p_j + entropy)
                p = torch.exp(log_p)
                log_p.add_(ent[t0:t1].unsqueeze(1)).mul_(p).mul_(g_ent[t0:t1].unsqueeze(1))
                dz = p.mul_(-g_logp[t0:t1].unsqueeze(1)).sub_(log_p)
            target = targets[t0:t1] - v0
            in_tile = (target >= 0) & (target < v1 - v0)                 # + g at the target, where it is in
            dz.scatter_add_(1, target.clamp(0, v1 - v0 - 1).unsqueeze(1),  # this tile (static shapes: no
                            torch.where(in_tile, g_logp[t0:t1], 0.0).unsqueeze(1))  # boolean indexing, no sync)
            dz.mul_(inv_t)
            _accumulate(grad_h, grad_w, dz, hidden, weight, t0, t1, v0, v1)
    return grad_h, grad_w


# ----------------------------------------------------------------------------- autograd + dispatcher

class _LinearLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_t, with_entropy, use_triton, keep_bytes):
        ctx.set_materialize_grads(False)  # entropy is often logged only: no zero gradient to walk the vocab for
        if use_triton:
            logp, lse, ent = _triton_forward(hidden, weight, targets, inv_t, with_entropy)
            ctx.kept = None
        else:
            logp, lse, ent, ctx.kept = _torch_forward(hidden, weight, targets, inv_t, with_entropy, keep_bytes)
        ctx.save_for_backward(hidden, weight, targets, lse, ent if ent is not None else lse)
        ctx.inv_t, ctx.use_triton, ctx.with_entropy = inv_t, use_triton, with_entropy
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, targets, lse, ent = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[:2]
        if (g_logp is None and g_ent is None) or not (need_h or need_w):
            return None, None, None, None, None, None, None
        g_logp = torch.zeros_like(lse) if g_logp is None else g_logp.float().contiguous()
        g_ent = g_ent.float().contiguous() if (g_ent is not None and ctx.with_entropy) else None
        args = (hidden, weight, targets, lse, ent if ctx.with_entropy else None, g_logp, g_ent, ctx.inv_t,
                need_h, need_w)
        grad_h, grad_w = _triton_backward(*args) if ctx.use_triton else _torch_backward(*args, kept=ctx.kept)
        return (grad_h.to(hidden.dtype) if grad_h is not None else None,
                grad_w.to(weight.dtype) if grad_w is not None else None, None, None, None, None, None)


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                    with_entropy: bool = False, backend: str | None = None):
    """log p(targets) under softmax(hidden @ weight.T / temperature), and optionally the entropy, per token.

    hidden (N, H) any float dtype, weight (V, H), targets (N,) ints in [0, V). Returns fp32 (N,) tensors
    (entropy None unless asked). Differentiable in hidden and weight. backend: "triton" (default on
    CUDA; on CPU only under TRITON_INTERPRET=1, for tests) or "torch" (default elsewhere).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden (N, H) and weight (V, H) expected, got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if backend is None:
        backend = "triton" if hidden.is_cuda and triton is not None else "torch"
    if backend == "triton" and triton is None:
        raise RuntimeError("backend='triton' needs the triton package")
    use_triton = backend == "triton"
    if use_triton:
        hidden, weight = hidden.contiguous(), weight.contiguous()
    # logit tiles are kept only where a backward will come (needs_input_grad is set under no_grad too)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    keep_bytes = KEEP_LOGITS_BYTES if grad and not use_triton else 0
    return _LinearLogProb.apply(hidden, weight, targets.contiguous(), 1.0 / temperature, with_entropy, use_triton,
                                keep_bytes)
