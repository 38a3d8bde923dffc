"""Countdown verifier throughput on a realistic mix of model outputs, on one core.

    python scripts/bench_verifier.py            (make bench)

The mix imitates what RLOO and best-of-N score: worked solutions with a <think> trace, right and
wrong; answers using the wrong numbers; truncated responses without an answer; malformed
expressions; long rambling outputs. Prints responses/s overall and per kind; target >= 50,000/s.
"""

import argparse
import os
import random
import time

from rlft.tasks import countdown


def realistic_mix(n_problems: int, seed: int) -> list[tuple[str, str, list[int], int]]:
    rng = random.Random(seed)
    rows = []
    for p in countdown.generate_problems(n_problems, seed=seed):
        nums, target = p["nums"], p["target"]
        good = countdown.worked_solution(nums, target)
        expr = countdown.solve(nums, target)
        ramble = " ".join(rng.choice(["Let", "me", "try", str(rng.randint(0, 99)), "+", "maybe", "no,"]) for _ in range(150))
        rows += [
            ("correct", good, nums, target),
            ("wrong value", good.replace(expr, "+".join(map(str, nums))), nums, target),
            ("wrong numbers", f"<think>{ramble[:200]}</think>\n<answer>{nums[0]} * {nums[-1]}</answer>", nums, target),
            ("no answer", f"<think>{ramble}", nums, target),
            ("malformed", f"<answer>({nums[0]} + {nums[1]}) ** 2 = {target}</answer>", nums, target),
            ("long correct", f"<think>{ramble}</think>\n<answer> {expr} </answer>", nums, target),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    rows = realistic_mix(args.problems, seed=0)
    score = countdown.score
    per_kind: dict[str, list[float]] = {}
    start = time.perf_counter()
    for _ in range(args.repeats):
        for kind, response, nums, target in rows:
            t = time.perf_counter()
            score(response, nums, target)
            per_kind.setdefault(kind, []).append(time.perf_counter() - t)
    total = time.perf_counter() - start
    rate = len(rows) * args.repeats / total
    print(f"verifier: {rate:,.0f} responses/s on one core ({len(rows) * args.repeats:,} scored, "
          f"{len(rows)} distinct); target 50,000/s -> {rate / 50_000:.1f}x target")
    for kind, times in per_kind.items():
        print(f"  {kind:14s} {len(times) / sum(times):>12,.0f}/s   worst {max(times) * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
