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


def test_a_label_names_the_row_and_a_note_heads_the_report(tmp_path):
    import json

    import yaml

    for name, label in (("sft", None), ("rloo", "rloo (extension; not in the paper)")):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump({"run_name": name, "label": label, "stage": {"name": "bon"}}))
        (d / "results.json").write_text(json.dumps({"greedy": {"accuracy": m(0.4)}}))
    text = report.report([str(tmp_path / "sft"), str(tmp_path / "rloo")], str(tmp_path / "out"), note="random weights")
    lines = text.splitlines()
    assert lines[0] == "**random weights**"
    assert "| sft | 0.400 [0.300, 0.500] |" in lines and "| rloo (extension; not in the paper) | 0.400 [0.300, 0.500] |" in lines
    assert (tmp_path / "out" / "results.md").read_text() == text + "\n"


def test_the_math_rloo_rows_are_labelled_an_extension():
    from rlft import config

    for name in ("paper_math_rloo", "paper_math_rloo_lora"):
        assert config.compose([f"experiment={name}"]).label == f"{name} (extension; the paper reports no Countdown RLOO)"
    assert config.compose(["experiment=paper_math_sft"]).label is None
