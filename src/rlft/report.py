"""`rlft report RUN_DIR... [--out DIR]`: results tables and plots from run dirs.

Reads each run dir's config.yaml, results.json and metrics.jsonl; prints the headline numbers in
the paper's layout (a row per run, a column per metric), then every metric (run, eval, metric,
value, 95% CI, n), and writes them with a CSV twin and PNG plots to --out:
best_of_n.png (best-of-n accuracy against n for every best-of-N run) and training.png (training
loss against step for every trained run). matplotlib renders off-screen; no display needed.
Only finished runs (DONE) are reported; unfinished ones are named (report()).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml

from rlft.errors import UserError


def load_run(run_dir: str) -> dict:
    """A run dir's config, results and metrics; `done` says whether it holds DONE (report() leaves
    unfinished runs out). A file that cannot be read or parsed is named in one line."""
    d = Path(run_dir)
    if not (d / "config.yaml").is_file():
        raise UserError(f"report: {str(d)!r} is not an rlft run dir (no config.yaml)")
    try:
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        stage = cfg["stage"]["name"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError) as e:
        raise UserError(f"report: {str(d / 'config.yaml')!r} is not an rlft config ({_why(e)})") from None
    done = (d / "DONE").exists()
    results, metrics = {}, []
    if done:
        results = _read_json(d / "results.json") if (d / "results.json").is_file() else {}
        if not isinstance(results, dict):
            raise UserError(f"report: {str(d / 'results.json')!r} is not a JSON object of results")
        _check_results(d / "results.json", results)
        if (d / "metrics.jsonl").is_file():
            metrics = _read_jsonl(d / "metrics.jsonl")
    name = cfg.get("label") or cfg.get("run_name", d.name)  # label: e.g. a row the paper does not have
    return {"dir": str(d), "name": name, "stage": stage, "done": done, "results": results, "metrics": metrics}


def _check_results(path: Path, results: dict) -> None:
    """The shapes the tables and plots read: each section an object, each metric's value a number
    (a hand-edited or cut results.json names its first bad key instead of a traceback)."""
    def walk(node: dict, where: str) -> None:
        if "value" in node and (isinstance(node["value"], bool) or not isinstance(node["value"], (int, float))):
            raise UserError(f"report: {str(path)!r}: {where}.value is {json.dumps(node['value'])}, expected a number")
        for key, child in node.items():
            if isinstance(child, dict):
                walk(child, f"{where}.{key}" if where else key)

    for section in ("heldout", "greedy", "sampled", "vs_reference"):
        if section in results and not isinstance(results[section], dict):
            raise UserError(f"report: {str(path)!r}: {section} is {json.dumps(results[section])}, expected an object "
                            "of metrics")
    walk(results, "")


def _qualify(runs: list[dict]) -> list[dict]:
    """Runs that share a name (two pipelines' sft_bon from different runs_dir) keep their own rows:
    each is named after the shortest tail of its dir that tells them apart, whatever the order."""
    by_name: dict[str, list[dict]] = {}
    for run in runs:
        by_name.setdefault(run["name"], []).append(run)
    for name, same in by_name.items():
        if len(same) < 2:
            continue
        parts = [Path(r["dir"]).resolve().parts for r in same]
        for depth in range(1, max(map(len, parts)) + 1):
            tails = ["/".join(p[-depth:]) for p in parts]
            if len(set(tails)) == len(tails):
                break
        for run, tail in zip(same, tails):
            run["name"] = f"{name} ({tail})"
    return runs


def _why(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise UserError(f"report: {str(path)!r} cannot be read as JSON ({_why(e)})") from None


def _read_jsonl(path: Path) -> list[dict]:
    """metrics.jsonl's records; a torn last line (a write cut short) is skipped, a bad line elsewhere named."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"report: {str(path)!r} cannot be read ({_why(e)})") from None
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            if lineno == len(lines):
                continue
            raise UserError(f"report: {path}:{lineno}: not valid JSON ({_why(e)})") from None
        if isinstance(record, dict):
            records.append(record)
    return records


def rows(runs: list[dict]) -> list[dict]:
    """One row per reported metric: every {"value", "ci95", "n"} entry of each results.json, at any
    depth (a nested metric is named by its path: vs_reference.win_rate)."""
    out = []

    def walk(run: dict, section: str, node: dict, path: str) -> None:
        for key, m in node.items():
            if not isinstance(m, dict):
                continue
            name = f"{path}.{key}" if path else key
            if "value" in m:
                lo, hi = m.get("ci95", (None, None))
                out.append({"run": run["name"], "stage": run["stage"], "eval": section, "metric": name,
                            "value": m["value"], "ci95_low": lo, "ci95_high": hi, "n": m.get("n"), "k": _k(key, m)})
            else:
                walk(run, section, m, name)

    for run in runs:
        for section, metrics in run["results"].items():
            if isinstance(metrics, dict):  # a held-out set answered by sampling is not greedy accuracy
                sampled = isinstance(metrics.get("decoding"), dict) and metrics["decoding"].get("do_sample")
                walk(run, f"{section}_sampled" if sampled else section, metrics, "")
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| run | eval | metric | value | 95% CI | n |", "|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['run']} | {r['eval']} | {r['metric']} | {r['value']:.3f} | {_ci(r)} | {r['n']} |")
    return "\n".join(lines)


def _ci(r: dict) -> str:
    return f"[{r['ci95_low']:.3f}, {r['ci95_high']:.3f}]" if r["ci95_low"] is not None else ""


def _k(key: str, record: dict) -> int | None:
    """The n of a best-of-n record (1 for pass@1): its `k`. Records written before rlft recorded k
    (best_of_16_accuracy) give it by their name."""
    if isinstance(record.get("k"), int):
        return record["k"]
    parts = key.split("_")
    return 1 if key.startswith("pass@1_") else int(parts[2]) if key.startswith("best_of_") and parts[2].isdigit() else None


def _best_of_k(r: dict) -> int | None:
    """A table row's n when it is a best-of-n accuracy (n > 1) of its section's own pick (not one
    nested beside it: a reward model's best-of-N also holds the verifier's pick), else None."""
    own = "." not in r["metric"]
    return r["k"] if own and (r.get("k") or 0) > 1 and r["metric"].endswith("_accuracy") else None


_GREEDY = ("greedy", "heldout")  # the evals that hold a model's greedy answers to the held-out prompts

# The paper's layout: one row per model, one column per headline number (exact match where both
# exact match and TinyZero's score exist). Each test picks a table row by its eval, metric and k.
HEADLINE = [
    ("greedy accuracy", lambda r: r["metric"] == "accuracy" and r["eval"] in _GREEDY),
    ("held-out accuracy, sampled", lambda r: r["metric"] == "accuracy" and r["eval"] in ("greedy_sampled", "heldout_sampled")),
    ("sampled pass@1", lambda r: r["metric"] == "pass@1_accuracy"),
    ("best-of-N", lambda r: _best_of_k(r) is not None),
    ("RM pairwise accuracy", lambda r: r["metric"] == "pairwise_accuracy"),
    ("constraints satisfied", lambda r: r["eval"] == "heldout" and r["metric"] == "satisfied"),
    ("IFEval prompt-level strict", lambda r: r["eval"] in _GREEDY and r["metric"] == "prompt_level_strict"),
    ("IFEval instruction-level strict", lambda r: r["eval"] in _GREEDY and r["metric"] == "instruction_level_strict"),
    ("IFBench prompt-level strict (OOD)", lambda r: r["eval"] in _GREEDY and r["metric"] == "ifbench_prompt_level_strict"),
    ("win-rate vs reference", lambda r: r["metric"].endswith("win_rate") and not r["metric"].startswith("best_of")),
]


def summary(table: list[dict]) -> str:
    """The headline numbers as the paper lays them out: rows = runs, columns = metrics (95% CI);
    best-of-N is the largest N a run reports."""
    cells: dict[str, dict[str, str]] = {}
    for r in table:
        for column, wanted in HEADLINE:
            if not wanted(r):
                continue
            row = cells.setdefault(r["run"], {})
            text = f"{r['value']:.3f} {_ci(r)}"
            if column == "best-of-N":  # keep the largest N, and say which
                k = _best_of_k(r)
                if row.get("best_k", 0) > k:
                    continue
                row["best_k"], text = k, f"{text} (N={k})"
            row[column] = text
    columns = [c for c, _ in HEADLINE if any(c in row for row in cells.values())]
    if not columns:
        return ""
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for run, row in cells.items():
        lines.append(f"| {run} | " + " | ".join(row.get(c, "") for c in columns) + " |")
    return "\n".join(lines)


def plot_best_of_n(runs: list[dict], path: Path) -> bool:
    curves = []
    for run in runs:
        sampled = run["results"].get("sampled", {})
        points = sorted((_k(key, v), v) for key, v in sampled.items()
                        if key.endswith("_accuracy") and isinstance(v, dict) and _k(key, v) is not None)
        if points:
            curves.append((run["name"], points))
    if not curves:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, points in curves:
        ns = [n for n, _ in points]
        ys = [p["value"] for _, p in points]
        err = [[y - p["ci95"][0] for y, (_, p) in zip(ys, points)], [p["ci95"][1] - y for y, (_, p) in zip(ys, points)]]
        ax.errorbar(ns, ys, yerr=err, marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks([n for n, _ in curves[0][1]], [str(n) for n, _ in curves[0][1]])
    ax.set(xlabel="n (samples chosen from by the verifier)", ylabel="accuracy (exact match)", ylim=(0, 1),
           title="Best-of-n with the verifier (95% CI)")
    return _save(plt, fig, [ax], path)


def plot_training(runs: list[dict], path: Path) -> bool:
    """Loss per step for supervised and preference stages; mean reward per step for RLOO, whose
    logged loss is ~0 by construction (on-policy, the ratio is 1), so it gets its own panel."""
    losses, rewards = [], []
    for run in runs:
        metrics = run["metrics"]
        reward = [(m["step"], m["reward"]) for m in metrics if isinstance(m.get("reward"), (int, float))]
        if reward:
            rewards.append((run["name"], reward))
        elif loss := [(m["step"], m["loss"]) for m in metrics if "loss" in m]:
            losses.append((run["name"], loss))
    panels = [(c, label) for c, label in ((losses, "training loss"), (rewards, "mean reward (RLOO)")) if c]
    if not panels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), dpi=120, squeeze=False)
    for ax, (curves, label) in zip(axes[0], panels):
        for name, pts in curves:
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=name)
        ax.set(xlabel="optimizer step", ylabel=label, title=label[0].upper() + label[1:])
    return _save(plt, fig, axes[0], path)


def _save(plt, fig, axes, path: Path) -> bool:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _pyplot():
    # matplotlib (~0.6 s) only to draw: `rlft train` imports this module for its closing table;
    # and the off-screen backend must be chosen before pyplot is imported
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def report(run_dirs: list[str], out: str, note: str | None = None) -> str:
    """Write results.md, results.csv and the plots into `out`; return the markdown table (under
    `note`, if given: a line that must travel with the numbers, e.g. that the weights are random).

    Only finished runs (DONE) are reported: an unfinished one has no results yet, or a training
    curve cut short. With no finished run at all this is one line naming the unfinished dirs and
    nothing is written (an empty table would pass for a report); with some, the finished ones are
    reported and each unfinished dir is named on stderr and in a line above the tables, so a table
    missing a row says so wherever it goes."""
    loaded = _qualify([load_run(d) for d in run_dirs])
    runs = [r for r in loaded if r["done"]]
    unfinished = [r["dir"] for r in loaded if not r["done"]]
    if not runs:
        raise UserError(f"report: {', '.join(map(repr, unfinished))} {'is' if len(unfinished) == 1 else 'are'} "
                        "not finished (no DONE): nothing to report; finish the run first (resume=true continues one "
                        "that has checkpoints)")
    for d in unfinished:
        print(f"rlft report: {d}: not finished (no DONE), left out of the report", file=sys.stderr)
    table = rows(runs)
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"report --out {out!r} is not writable ({e.strerror})") from None
    headline = summary(table)
    text = (headline + "\n\nAll metrics:\n\n" if headline else "") + markdown(table)
    if unfinished:
        text = f"Not finished (no DONE), left out: {', '.join(unfinished)}\n\n{text}"
    if note:
        text = f"**{note}**\n\n{text}"
    (out_dir / "results.md").write_text(text + "\n")
    with (out_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["run", "stage", "eval", "metric", "value", "ci95_low", "ci95_high", "n"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    plot_best_of_n(runs, out_dir / "best_of_n.png")
    plot_training(runs, out_dir / "training.png")
    return text
