"""rlft.rloo.RLOOTrainer against stock trl.RLOOTrainer: the copied methods (rlft.rloo.trl_copy) still match
upstream outside the fences, the fused head matches TRL's, and whole runs agree step by step."""

import inspect
import math

import pytest
import torch

from rlft.rloo import trainer as rloo
from rlft.rloo import trl_copy as rloo_trl


def _fenced_diff(ours: str, upstream: str) -> list[str]:
    """Lines where `ours` differs from `upstream` outside `# --- rlft: begin/end` fences."""
    import difflib

    a, b = upstream.splitlines(), ours.splitlines()
    fenced, inside = set(), False
    for j, line in enumerate(b):
        if line.strip().startswith("# --- rlft: begin"):
            inside = True
        if inside:
            fenced.add(j)
        if line.strip().startswith("# --- rlft: end"):
            inside = False
    bad = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        ours_lines = set(range(j1, j2)) or {j1 - 1, j1}  # a pure deletion must sit at a fence
        if not ours_lines & fenced or (j2 > j1 and not ours_lines <= fenced):
            bad.append(f"{tag} upstream {i1}-{i2} / ours {j1}-{j2}: {a[i1:i2][:2]} -> {b[j1:j2][:2]}")
    return bad


@pytest.mark.parametrize("name", rloo_trl.COPIED_FROM_TRL)
def test_copied_methods_equal_upstream_outside_fences(name):
    import trl

    ours = inspect.getsource(getattr(rloo.RLOOTrainer, name))
    upstream = inspect.getsource(getattr(trl.RLOOTrainer, name))
    assert ours != upstream
    assert _fenced_diff(ours, upstream) == []


def test_fence_check_catches_an_unfenced_edit():
    upstream = "def f():\n    a = 1\n    b = 2\n    return a + b\n"
    fenced = "def f():\n    # --- rlft: begin\n    a = 3\n    # --- rlft: end\n    b = 2\n    return a + b\n"
    assert _fenced_diff(fenced, upstream) == []
    assert _fenced_diff(fenced.replace("b = 2", "b = 5"), upstream)
    assert _fenced_diff(upstream.replace("    b = 2\n", ""), upstream)  # an unfenced deletion


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_head_matches_trls(tiny_base, temperature):
    from trl.trainer.utils import add_fused_lm_head as trl_add_fused_lm_head

    from rlft import models

    ids = torch.randint(0, 500, (3, 11), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = -100
    labels[2, 8:] = -100
    out = {}
    for who in ("trl", "rlft"):
        model = models.load_causal_lm(tiny_base)
        trl_add_fused_lm_head(model, temperature=temperature, outputs=("log_probs", "entropy"))
        if who == "rlft":
            assert rloo.add_fused_lm_head(model, temperature, with_entropy=True)
        o = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
        (o.log_probs.sum() + 0.1 * o.entropy.sum()).backward()
        out[who] = (o.log_probs.detach(), o.entropy.detach(), o.label_mask,
                    {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        # generation still runs the model's own forward
        assert model(input_ids=ids).logits.shape == (3, 11, model.config.vocab_size)
    (lp_a, ent_a, m_a, g_a), (lp_b, ent_b, m_b, g_b) = out["trl"], out["rlft"]
    assert torch.equal(m_a, m_b) and (lp_b[~m_b] == 0).all()
    torch.testing.assert_close(lp_b, lp_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_b, ent_a, atol=1e-5, rtol=1e-5)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        torch.testing.assert_close(g_b[name], g_a[name], atol=1e-5, rtol=1e-4)


def _grouped_batch(k=3, groups=4, prompt=9, completion=7):
    """k rows per prompt, left-padded prompts of several lengths, right-padded completions."""
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 500, (groups, prompt), generator=g).repeat_interleave(k, 0)
    prompt_mask = torch.ones_like(prompts)
    for i in range(groups):
        prompt_mask[i * k:(i + 1) * k, :i] = 0
    completions = torch.randint(0, 500, (groups * k, completion), generator=g)
    completion_mask = torch.ones_like(completions)
    for i in range(groups * k):
        completion_mask[i, completion - i % 4:] = 0
    ids, mask = torch.cat([prompts, completions], 1), torch.cat([prompt_mask, completion_mask], 1)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :prompt] = -100
    return ids, mask, labels


def test_repeated_prompts_run_once_with_the_same_log_probs_entropies_and_gradients(tiny_base, monkeypatch):
    from rlft import models

    ids, mask, labels = _grouped_batch()
    used, original = [], rloo._shared_prompt_hidden
    prompt_rows, out = [], {}
    for who in ("plain", "shared"):
        model = models.load_causal_lm(tiny_base)
        assert rloo.add_fused_lm_head(model, 0.7, with_entropy=True)
        model.base_model.register_forward_pre_hook(lambda m, a, k: prompt_rows.append(k["input_ids"].shape),
                                                   with_kwargs=True)
        monkeypatch.setattr(rloo, "_shared_prompt_hidden",  # plain: every row run whole, as before
                            (lambda *a, **k: None) if who == "plain" else
                            (lambda *a, **k: used.append(original(*a, **k)) or used[-1]))
        o = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        (o.log_probs.sum() + 0.1 * o.entropy.sum()).backward()
        out[who] = (o.log_probs.detach(), o.entropy.detach(), o.label_mask,
                    {n: p.grad.clone() for n, p in model.named_parameters()})
    assert used and used[-1] is not None
    assert prompt_rows == [(12, 16), (4, 9), (12, 7)]  # whole rows; then 4 prompts once, 12 completions
    (lp_a, ent_a, m_a, g_a), (lp_b, ent_b, m_b, g_b) = out["plain"], out["shared"]
    assert torch.equal(m_a, m_b) and lp_b.shape == lp_a.shape == (12, 15)
    torch.testing.assert_close(lp_b, lp_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_b, ent_a, atol=1e-5, rtol=1e-5)
    for name in g_a:
        torch.testing.assert_close(g_b[name], g_a[name], atol=1e-5, rtol=1e-4, msg=name)


def test_shared_prompts_only_where_they_apply(tiny_base):
    from rlft import models

    model = models.load_causal_lm(tiny_base)
    ids, mask, labels = _grouped_batch()
    assert rloo._shared_prompt_hidden(model, input_ids=ids, attention_mask=mask, labels=labels) is not None
    distinct = ids.clone()
    distinct[:, 8] = torch.arange(12)  # every prompt differs
    assert rloo._shared_prompt_hidden(model, input_ids=distinct, attention_mask=mask, labels=labels) is None
    assert rloo._shared_prompt_hidden(model, input_ids=ids, attention_mask=mask, labels=labels,
                                      pixel_values=torch.zeros(1)) is None
    model.gradient_checkpointing_enable()
    model.train()
    assert rloo._shared_prompt_hidden(model, input_ids=ids, attention_mask=mask, labels=labels) is None


def _reward(prompts, completions, **kwargs):
    """Varied, deterministic in the text: distinct characters of the completion."""
    return [len(set(c[0]["content"])) / 10 for c in completions]


class _Gradients:
    """Each optimizer step's gradients, flattened: what the update is made of."""

    def __init__(self):
        self.steps = []

    def __getattr__(self, event):  # the TrainerCallback interface: every other event does nothing
        return lambda *args, **kwargs: None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append(torch.cat([p.grad.detach().flatten() for p in model.parameters() if p.grad is not None]))


def _run(cls, tiny_base, tmp_path, beta, reward_funcs=(_reward,), steps=3, normalize=True, optim="adamw_torch",
         learning_rate=1e-3, max_grad_norm=1.0, **options):
    import datasets
    from trl import RLOOConfig

    from rlft import models

    rows = [{"prompt": [{"role": "user", "content": f"say {i} {i * 7}"}]} for i in range(24)]
    args = RLOOConfig(output_dir=str(tmp_path / cls.__module__), num_generations=4, per_device_train_batch_size=8,
                      gradient_accumulation_steps=1, max_completion_length=10, beta=beta, learning_rate=learning_rate,
                      optim=optim, max_grad_norm=max_grad_norm, max_steps=steps, logging_steps=1, report_to=[], bf16=False, seed=0,
                      save_strategy="no", use_cpu=True, temperature=1.0, normalize_advantages=normalize)
    calls, gradients = [], _Gradients()
    model = models.load_causal_lm(tiny_base)
    trainer = cls(model=model, reward_funcs=list(reward_funcs), args=args, callbacks=[gradients],
                  train_dataset=datasets.Dataset.from_list(rows), processing_class=models.load_tokenizer(tiny_base),
                  **options)
    original = trainer._get_per_token_logps_and_entropies
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: calls.append(1) or original(*a, **k)
    trainer.train()
    trainer.gradients = gradients.steps
    return trainer, len(calls)


def _weights(trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


# Two code paths agree to float32 roundoff, in whatever order this CPU sums: ~1e-7 of a quantity's
# size. The tolerances sit three orders above that and two below the smallest drift the test must
# catch (log-probs 0.1% off: gradients ~1e-3 off). Plain SGD without clipping keeps the weights
# honest: each weight moves by lr x its gradient, so roundoff in a near-zero gradient stays near zero
# (Adam divides by sqrt(v) and turns it into a step of order lr: 2.6e-4 on another CPU after 3 steps
# at lr 1e-3), and a gradient off by a constant factor stays off (clipping to a norm would hide it).
REL = 1e-4


def _differences(stock, ours, start: torch.Tensor) -> list[str]:
    """What differs between two RLOO runs from one seed, each item naming the quantity and by how much."""
    bad = []
    if list(stock._logs["completion"]) != list(ours._logs["completion"]):
        bad.append("completions: other samples drawn")
    a, b = torch.tensor(list(stock._logs["advantages"])), torch.tensor(list(ours._logs["advantages"]))
    if not torch.allclose(b, a, atol=REL, rtol=REL):  # the last step's (TRL keeps one)
        bad.append(f"advantages: max |diff| {(b - a).abs().max():.2e}")
    logs_a = [r for r in stock.state.log_history if "loss" in r]
    logs_b = [r for r in ours.state.log_history if "loss" in r]
    for key in ("loss", "reward", "grad_norm", "entropy") + (("kl",) if stock.beta else ()):
        x, y = [r[key] for r in logs_a], [r[key] for r in logs_b]
        # on-policy, the loss is 0 by construction: what is logged is the roundoff of a sum of ~300
        # terms of order 1 (1.1e-6 against -1.5e-8 with OMP_NUM_THREADS=1 here), so it gets the
        # roundoff of that sum as its absolute tolerance; the gradients below carry the real check
        if y != pytest.approx(x, rel=REL, abs=1e-5 if key == "loss" else 1e-6):
            bad.append(f"{key}: {y} vs stock {x}")
    for step, (g_a, g_b) in enumerate(zip(stock.gradients, ours.gradients, strict=True), 1):
        error = ((g_b - g_a).norm() / g_a.norm()).item()
        if error > REL:
            bad.append(f"gradients at step {step}: |diff| = {error:.2e} of |grad|")
    w_a, w_b = _weights(stock), _weights(ours)
    error = ((w_b - w_a).norm() / (w_a - start).norm()).item()
    if error > REL:
        bad.append(f"weights: |diff| = {error:.2e} of the update; worst element {(w_b - w_a).abs().max():.2e}")
    return bad


def _same_run_as_stock(tiny_base, tmp_path, beta, normalize, **options):
    """Stock trl.RLOOTrainer and rlft's from one seed and start, three steps of plain SGD, unclipped."""
    import trl

    from rlft import models

    start = torch.cat([p.detach().flatten() for p in models.load_causal_lm(tiny_base).parameters()])
    sgd = {"optim": "sgd", "learning_rate": 0.05, "max_grad_norm": 0.0, "normalize": normalize}
    stock, stock_calls = _run(trl.RLOOTrainer, tiny_base, tmp_path / "stock", beta, **sgd)
    ours, our_calls = _run(rloo.RLOOTrainer, tiny_base, tmp_path / "rlft", beta, **sgd, **options)
    assert len(stock.gradients) == len(ours.gradients) == 3
    assert (_weights(stock) - start).norm() > 0.5  # it trained (grad norms ~10, lr 0.05 decaying to 0)
    assert any(abs(x) > 0.1 for x in stock._logs["advantages"])
    return stock, stock_calls, ours, our_calls, _differences(stock, ours, start)


@pytest.mark.parametrize("beta,old_logps,normalize", [(0.0, "sampling", True), (0.03, "sampling", False),
                                                      (0.03, "forward", True)])
def test_same_advantages_losses_gradients_and_weights_as_stock_trl(tiny_base, tmp_path, beta, old_logps, normalize):
    stock, stock_calls, ours, our_calls, differences = _same_run_as_stock(tiny_base, tmp_path, beta, normalize,
                                                                          old_logps=old_logps)
    assert ours.fused_lm_head
    assert differences == [], "\n".join(differences)
    # on-policy the old-log-prob forward is skipped (with beta > 0 the sampler recorded them): the
    # equalities above are the proof
    assert ours.skip_old_logps == (beta == 0.0)
    assert (ours.sampler is not None) == (beta != 0.0 and old_logps == "sampling")
    per_step = 3 if beta else 2  # forwards per step: old, (reference,) loss
    assert stock_calls == 3 * per_step
    assert our_calls == 3 * (per_step - (old_logps == "sampling"))


@pytest.mark.parametrize("drift", ["baseline over k", "log-probs 0.1% off"])
def test_the_comparison_with_stock_trl_catches_drift(tiny_base, tmp_path, monkeypatch, drift):
    """The check above is not vacuous: rlft made slightly wrong fails it, by the quantities named."""
    if drift == "baseline over k":  # the mean of all k rewards, not of the k - 1 others: advantages x (k-1)/k
        real = rloo_trl.rloo_advantages

        def wrong(rewards, k, *args, **kwargs):
            advantages, kl = real(rewards, k, *args, **kwargs)
            return advantages * (k - 1) / k, kl

        monkeypatch.setattr(rloo_trl, "rloo_advantages", wrong)
        expected = ["advantages", "gradients at step 1", "weights"]
    else:
        real = rloo.linear_logprobs

        def wrong(*args, **kwargs):
            logp, entropy = real(*args, **kwargs)
            return logp * 1.001, entropy

        monkeypatch.setattr(rloo, "linear_logprobs", wrong)
        expected = ["kl", "gradients at step 1", "weights"]
    *_, differences = _same_run_as_stock(tiny_base, tmp_path, 0.03, normalize=False)
    for name in expected:
        assert any(d.startswith(name) for d in differences), (name, differences)


def test_lora_policy_records_old_log_probs_while_sampling(tiny_base, tmp_path):
    """Through PeftModel.generate too: per step one reference pass (adapter off) and the loss pass."""
    from peft import LoraConfig

    ours, calls = _run(rloo.RLOOTrainer, tiny_base, tmp_path, 0.03, steps=2,
                       peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    assert ours.old_logps_source == "sampler" and ours._sampling_logps is not None
    assert calls == 2 * 2
    kl = [r["kl"] for r in ours.state.log_history if "kl" in r]
    assert abs(kl[0]) < 1e-5 < abs(kl[-1])  # step 1: adapter B = 0, the policy is the base; then it moves


def test_failing_reward_marks_samples_unscorable_and_the_run_goes_on(tiny_base, tmp_path):
    from rlft.reward_functions import guarded

    state = {"calls": 0}

    def flaky(prompts, completions, **kwargs):
        state["calls"] += 1
        if state["calls"] == 2:
            raise RuntimeError("judge crashed")
        return [math.nan if i % 4 == 0 else len(c[0]["content"]) / 10 for i, c in enumerate(completions)]

    trainer, _ = _run(rloo.RLOOTrainer, tiny_base, tmp_path, 0.0, reward_funcs=(guarded("flaky", flaky),))
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert [r["unscorable/flaky"] for r in logs] == [2.0, 8.0, 2.0]  # NaN every 4th; all 8 when it raised
    assert logs[1]["reward"] is None or math.isnan(logs[1]["reward"])
    assert logs[1]["grad_norm"] == 0.0 and logs[0]["grad_norm"] > 0  # unscorable samples move nothing
    assert trainer.state.global_step == 3


def test_guarded_reward_contract():
    from rlft.reward_functions import guarded

    seen = []
    f = guarded("x", lambda prompts, completions, **k: [1, float("inf"), None, 0.5])
    assert f(["p"] * 4, ["c"] * 4, log_metric=lambda name, v: seen.append((name, v))) == [1.0, None, None, 0.5]
    assert seen == [("unscorable/x", 2)]
    assert guarded("y", lambda prompts, completions, **k: [1.0])(["p"] * 2, ["c"] * 2) == [None, None]
    assert guarded("x", _reward).__name__ == "x"


def test_pass_at_k_objective_anneals_k_and_logs_what_it_climbs(tiny_base, tmp_path, monkeypatch):
    """objective=pass_at_k: each step's advantages come from the kernel with that step's k of the
    schedule (4, 4, then 1), the log shows k and the max@k estimate; k = 1 trains exactly as RLOO."""
    from rlft import models

    seen, real = [], rloo_trl.rloo_advantages
    monkeypatch.setattr(rloo_trl, "rloo_advantages",
                        lambda *a, **kw: seen.append((kw["pass_k"], *real(*a, **kw))) or seen[-1][1:])
    sgd = {"optim": "sgd", "learning_rate": 0.05, "max_grad_norm": 0.0, "normalize": False}
    trainer, _ = _run(rloo.RLOOTrainer, tiny_base, tmp_path / "pk", 0.0, objective="pass_at_k",
                      pass_k_schedule=[[0, 4], [2, 1]], **sgd)
    assert [k for k, *_ in seen] == [4, 4, 1]
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert [r["pass_k"] for r in logs] == [4, 4, 1]
    assert all(r["reward_max_at_k"] >= r["reward"] - 1e-6 for r in logs)  # the best of 4 beats the mean
    for k, adv, _ in seen[:2]:  # k = n: only each prompt's best sample, by its margin over the runner-up
        assert ((adv.view(-1, 4) != 0).sum(1) <= 1).all() and (adv >= 0).all() and adv.max() > 0
    assert (seen[2][1] < 0).any()  # k = 1: RLOO's centred advantages

    mean, _ = _run(rloo.RLOOTrainer, tiny_base, tmp_path / "mean", 0.0, **sgd)
    k1, _ = _run(rloo.RLOOTrainer, tiny_base, tmp_path / "k1", 0.0, objective="pass_at_k", pass_k=1, **sgd)
    start = torch.cat([p.detach().flatten() for p in models.load_causal_lm(tiny_base).parameters()])
    assert ((_weights(k1) - _weights(mean)).norm() / (_weights(mean) - start).norm()).item() < REL
    assert ((_weights(trainer) - _weights(mean)).norm() / (_weights(mean) - start).norm()).item() > 0.01


@pytest.mark.parametrize("options,message", [
    ({"objective": "pass@k"}, "stage.algorithm.objective: 'pass@k' is not one of mean, pass_at_k"),
    ({"objective": "pass_at_k"}, "needs stage.algorithm.pass_k"),
    ({"objective": "pass_at_k", "pass_k": 5}, "stage.algorithm.pass_k: 5 is not an integer in 1..num_generations (4)"),
    ({"objective": "pass_at_k", "pass_k_schedule": [[10, 4], [20, 1]]}, "steps [10, 20] must start at 0"),
    ({"objective": "pass_at_k", "pass_k_schedule": [[0, 4], [5]]}, "pass_k_schedule: None is not an integer"),
    ({"pass_k": 2}, "need stage.algorithm.objective=pass_at_k"),
])
def test_bad_objective_settings_are_named(options, message):
    from rlft.errors import UserError

    with pytest.raises(UserError) as e:
        rloo.pass_k_schedule_from(options.get("objective", "mean"), options.get("pass_k"),
                                  options.get("pass_k_schedule"), 4)
    assert message in str(e.value)
