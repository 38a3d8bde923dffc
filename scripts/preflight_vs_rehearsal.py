"""The pre-flight's estimate of each cell against the cell's measured time in a full run.

    make rehearsal && make rehearsal-preflight
    python scripts/preflight_vs_rehearsal.py runs/rehearsal runs/rehearsal/preflight

A cell's measured time is its run dir opened (config.yaml written) to DONE; its estimate is the
pre-flight's `estimate_s` (rlft.preflight). Prints one row a cell and the worst ratio; exits 1 when
a cell's estimate is off by more than --within (default 2x) either way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def measured_s(run_dir: Path) -> float | None:
    done, config = run_dir / "DONE", run_dir / "config.yaml"
    return done.stat().st_mtime - config.stat().st_mtime if done.is_file() and config.is_file() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", type=Path, help="the runs dir of the full run (make rehearsal's RUNS)")
    p.add_argument("preflight", type=Path, help="the pre-flight's dir (holding one dir per recipe)")
    p.add_argument("--within", type=float, default=2.0)
    args = p.parse_args(argv)
    rows, worst = [], 1.0
    for record_file in sorted(args.preflight.glob("*/*/preflight.json")):
        record = json.loads(record_file.read_text())
        took = measured_s(args.runs / record_file.parent.name)
        if took is None:
            continue
        ratio = record["estimate_s"] / took if took else float("inf")
        worst = max(worst, ratio, 1 / ratio if ratio else float("inf"))
        rows.append(f"| {record_file.parent.name} | {took:.1f} s | {record['estimate_s']:.1f} s | {ratio:.2f} |")
    if not rows:
        print(f"no cell of {args.preflight} has a finished run under {args.runs}", file=sys.stderr)
        return 2
    print("| cell | measured | pre-flight estimate | estimate / measured |\n|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{len(rows)} cells; worst ratio {worst:.2f}x (either way); bound {args.within:g}x")
    return 0 if worst <= args.within else 1


if __name__ == "__main__":
    sys.exit(main())
