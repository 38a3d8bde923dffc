"""rlft.kernels.linear_logprob: Triton (under TRITON_INTERPRET=1) vs the torch reference vs TRL's
formula (full logits, then trl's selective_log_softmax), values and gradients."""

import pytest
import torch

from rlft.kernels import linear_logprob

# the torch path twice: keeping the forward's logits for the backward (small problems, the default
# here) and recomputing them tile by tile (what large problems do)
BACKENDS = ["torch", "torch-recompute", "triton"]


def linear_logprobs(*args, backend=None, **kwargs):
    """rlft's, with "torch-recompute" = the torch path with no logits kept (decided at the forward)."""
    keep = linear_logprob.KEEP_LOGITS_BYTES
    if backend == "torch-recompute":
        linear_logprob.KEEP_LOGITS_BYTES = 0
    try:
        return linear_logprob.linear_logprobs(*args, backend=backend and backend.split("-")[0], **kwargs)
    finally:
        linear_logprob.KEEP_LOGITS_BYTES = keep


def _inputs(n, h, v, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g) / h**0.5).to(dtype).requires_grad_()
    weight = torch.randn(v, h, generator=g).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, targets


def _full_logits(hidden, weight, targets, temperature):
    """TRL's path: materialise the logits, then trl's selective_log_softmax; entropy from log-probs."""
    from trl.trainer.utils import selective_log_softmax

    logits = hidden.float() @ weight.float().t()
    logp = selective_log_softmax(logits, targets, temperature=temperature)
    lp_all = (logits / temperature).log_softmax(-1)
    return logp, -(lp_all.exp() * lp_all).sum(-1)


# fp32: both paths accumulate the same products in another order; 1e-4 covers it at these sizes.
# bf16: inputs are rounded to bf16 once, every path then computes in fp32 from those values, so the
# gap stays accumulation-order sized; 2e-3 leaves room for the interpreter's bf16 round trips.
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-3}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,h,v", [(1, 16, 17), (37, 40, 101), (64, 48, 257)])  # one token; non-powers of two
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_match_full_logits(backend, dtype, n, h, v, temperature):
    hidden, weight, targets = _inputs(n, h, v, dtype)
    ref_lp, ref_ent = _full_logits(hidden, weight, targets, temperature)
    lp, ent = linear_logprobs(hidden, weight, targets, temperature, with_entropy=True, backend=backend)
    assert lp.dtype == torch.float32 and lp.shape == (n,)
    tol = TOL[dtype]
    torch.testing.assert_close(lp, ref_lp, atol=tol, rtol=tol)
    torch.testing.assert_close(ent, ref_ent, atol=tol, rtol=tol)

    # gradients of an arbitrary weighting of log-prob and entropy against autograd through full logits
    g = torch.Generator().manual_seed(1)
    w_lp, w_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)
    want = torch.autograd.grad((ref_lp * w_lp + ref_ent * w_ent).sum(), (hidden, weight))
    got = torch.autograd.grad((lp * w_lp + ent * w_ent).sum(), (hidden, weight))
    for a, b in zip(got, want):
        assert a.dtype == dtype
        scale = b.float().abs().max().item()
        torch.testing.assert_close(a.float(), b.float(), atol=tol * max(1.0, scale) * 4, rtol=tol * 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logprob_only_gradient_and_no_entropy(backend):
    hidden, weight, targets = _inputs(23, 32, 70)
    lp, ent = linear_logprobs(hidden, weight, targets, with_entropy=False, backend=backend)
    assert ent is None
    ref_lp, _ = _full_logits(hidden, weight, targets, 1.0)
    want = torch.autograd.grad(ref_lp.sum(), (hidden, weight))
    got = torch.autograd.grad(lp.sum(), (hidden, weight))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiles_smaller_than_the_problem(backend, monkeypatch):
    """Tokens and vocabulary spanning several tiles (ragged last tiles) give the same numbers."""
    monkeypatch.setattr(linear_logprob, "TOKENS_PER_TILE", 16)
    monkeypatch.setattr(linear_logprob, "VOCAB_PER_TILE", 48)
    hidden, weight, targets = _inputs(50, 24, 130)
    ref_lp, ref_ent = _full_logits(hidden, weight, targets, 0.9)
    lp, ent = linear_logprobs(hidden, weight, targets, 0.9, with_entropy=True, backend=backend)
    torch.testing.assert_close(lp, ref_lp, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ent, ref_ent, atol=1e-4, rtol=1e-4)
    want = torch.autograd.grad((ref_lp + ref_ent).sum(), (hidden, weight))
    got = torch.autograd.grad((lp + ent).sum(), (hidden, weight))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_torch_path_keeps_logit_tiles_for_the_backward_up_to_its_budget(monkeypatch):
    hidden, weight, targets = _inputs(20, 16, 50)
    lp, _ = linear_logprobs(hidden, weight, targets, 0.8, backend="torch")
    (tile,) = lp.grad_fn.kept.values()                           # 4 kB: all kept, no recompute GEMM
    torch.testing.assert_close(tile, (hidden @ weight.t()).detach() / 0.8)
    monkeypatch.setattr(linear_logprob, "KEEP_LOGITS_BYTES", 20 * 50 * 4 - 1)
    assert linear_logprobs(hidden, weight, targets, backend="torch")[0].grad_fn.kept == {}
    # several tiles, a budget for three of them: those kept, the rest recomputed, the same gradient
    monkeypatch.setattr(linear_logprob, "TOKENS_PER_TILE", 8)
    monkeypatch.setattr(linear_logprob, "VOCAB_PER_TILE", 16)
    monkeypatch.setattr(linear_logprob, "KEEP_LOGITS_BYTES", 3 * 8 * 16 * 4)
    for with_entropy in (True, False):
        lp, ent = linear_logprobs(hidden, weight, targets, 0.8, with_entropy=with_entropy, backend="torch")
        assert list(lp.grad_fn.kept) == [(0, 0), (0, 16), (0, 32)]
        ref_lp, ref_ent = _full_logits(hidden, weight, targets, 0.8)
        out, ref = (lp + ent, ref_lp + ref_ent) if with_entropy else (lp, ref_lp)
        for a, b in zip(torch.autograd.grad(out.sum(), (hidden, weight)), torch.autograd.grad(ref.sum(), (hidden, weight))):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    monkeypatch.undo()
    budgets = []                                                  # no backward coming: nothing kept
    forward = linear_logprob._torch_forward
    monkeypatch.setattr(linear_logprob, "_torch_forward", lambda *a: budgets.append(a[-1]) or forward(*a))
    with torch.no_grad():
        linear_logprobs(hidden, weight, targets, backend="torch")
    linear_logprobs(hidden.detach(), weight.detach(), targets, backend="torch")
    linear_logprobs(hidden, weight, targets, backend="torch")
    assert budgets == [0, 0, linear_logprob.KEEP_LOGITS_BYTES]
    monkeypatch.undo()
    # a retained graph runs the backward twice on the kept logits: same gradient both times
    lp, _ = linear_logprobs(hidden, weight, targets, 0.8, backend="torch")
    first = torch.autograd.grad(lp.sum(), hidden, retain_graph=True)[0]
    torch.testing.assert_close(torch.autograd.grad(lp.sum(), hidden)[0], first)


def test_triton_matches_torch_reference_exactly_enough():
    hidden, weight, targets = _inputs(40, 64, 300, seed=3)
    a = linear_logprobs(hidden, weight, targets, 0.6, True, backend="triton")
    b = linear_logprobs(hidden, weight, targets, 0.6, True, backend="torch")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=2e-5, rtol=2e-5)


def test_large_logits_stay_finite():
    """Online log-sum-exp: logits in the thousands do not overflow exp."""
    hidden, weight, targets = _inputs(8, 16, 40)
    hidden = (hidden.detach() * 2000).requires_grad_()
    for backend in BACKENDS:
        lp, ent = linear_logprobs(hidden, weight, targets, with_entropy=True, backend=backend)
        ref_lp, _ = _full_logits(hidden, weight, targets, 1.0)
        assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
        torch.testing.assert_close(lp, ref_lp, atol=1e-2, rtol=1e-4)


def test_bad_arguments_are_named():
    hidden, weight, targets = _inputs(4, 8, 10)
    with pytest.raises(ValueError, match="temperature"):
        linear_logprobs(hidden, weight, targets, temperature=0)
    with pytest.raises(ValueError, match=r"\(N, H\)"):
        linear_logprobs(hidden, weight[:, :4], targets)
