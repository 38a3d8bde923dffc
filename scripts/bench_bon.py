"""Batched best-of-N sampling vs one sample at a time, same model, prompts and token budget.

    python scripts/bench_bon.py [--model-dir runs/tiny_math_sft/model] [--n 16] [--prompts 16]

Without --model-dir it uses the tiny preset's base model (built locally). Prints samples/s for
both paths and their ratio; the target at N=16 is >= 0.5*N = 8x.
"""

import argparse
import time

import torch

from rlft import evaluate, generation, models
from rlft.config import build, compose
from rlft.tasks import countdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    torch.manual_seed(0)
    path = args.model_dir or build(compose(["model=tiny"]).model.build)
    tokenizer, model = models.load_tokenizer(path), models.load_frozen_lm(path)  # on the accelerator, as stage=bon
    problems = countdown.generate_problems(args.prompts, seed=0, num_counts=(3,), min_num=1, max_num=20)
    prompts = evaluate.chat_prompts(tokenizer, [countdown.make_prompt(p["nums"], p["target"], "compact") for p in problems])
    # min_new_tokens = max_new_tokens: both paths generate exactly the same number of tokens
    kw = dict(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0)
    model.generation_config.min_new_tokens = args.max_new_tokens

    start = time.perf_counter()
    batched = generation.generate(model, tokenizer, prompts, batch_size=args.prompts, num_return_sequences=args.n,
                                desc="batched", **kw)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    single = [s for p in prompts for _ in range(args.n)
              for s in generation.generate(model, tokenizer, [p], batch_size=1, desc="one at a time", **kw)]
    t_single = time.perf_counter() - start
    assert len(batched) == len(single) == args.n * args.prompts
    total = len(batched)
    ratio = t_single / t_batched
    print(f"best-of-{args.n} on {args.prompts} prompts, {args.max_new_tokens} new tokens each ({total} samples), "
          f"threads={torch.get_num_threads()}")
    print(f"  batched (num_return_sequences): {total / t_batched:8.1f} samples/s")
    print(f"  one sample at a time:           {total / t_single:8.1f} samples/s")
    print(f"  ratio {ratio:.1f}x; target >= {0.5 * args.n:.0f}x (0.5*N) -> {'met' if ratio >= 0.5 * args.n else 'NOT met'}")


if __name__ == "__main__":
    main()
