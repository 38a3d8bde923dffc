"""rlft report's tables: every metric at any depth, and the headline numbers in the paper's layout."""

from rlft import report


def _run(name, stage, results):
    return {"name": name, "stage": stage, "results": results, "metrics": []}


def m(value, n=10):
    return {"value": value, "ci95": [value - 0.1, value + 0.1], "n": n}


def test_nested_metrics_are_rows_and_headlines_pick_one_per_column():
    runs = [
        _run("sft_bon", "bon", {"greedy": {"accuracy": m(0.4), "mean_score": m(0.5)},
                                "sampled": {"pass@1_accuracy": m(0.3), "best_of_4_accuracy": m(0.6),
                                            "best_of_16_accuracy": m(0.9), "samples_per_prompt": 16}}),
        _run("winrate", "bon", {"heldout": {"vs_reference": {"win_rate": m(0.55), "wins": 3},
                                            "best_of_4_vs_reference": {"win_rate": m(0.7)}, "judge_score": m(1.5)}}),
        _run("rm", "rm", {"heldout": {"pairwise_accuracy": m(0.99)}}),
    ]
    table = report.rows(runs)
    names = {(r["run"], r["eval"], r["metric"]) for r in table}
    assert ("winrate", "heldout", "vs_reference.win_rate") in names
    assert ("winrate", "heldout", "best_of_4_vs_reference.win_rate") in names
    assert len(table) == 9
    lines = report.summary(table).splitlines()
    assert lines[0] == ("| run | greedy accuracy | sampled pass@1 | best-of-N | RM pairwise accuracy | "
                        "win-rate vs reference |")
    assert lines[2] == "| sft_bon | 0.400 [0.300, 0.500] | 0.300 [0.200, 0.400] | 0.900 [0.800, 1.000] (N=16) |  |  |"
    assert lines[3].endswith("| 0.550 [0.450, 0.650] |")  # the greedy win-rate, not best-of-4's
    assert lines[4] == "| rm |  |  |  | 0.990 [0.890, 1.090] |  |"
