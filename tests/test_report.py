"""rlft report's tables: every metric at any depth, and the headline numbers in the paper's layout."""

import json

import pytest
from conftest import error_line

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


def test_best_of_n_is_read_by_its_k_and_a_nested_pick_is_not_the_headline():
    """A best-of-n record carries its n (k), so the report never reads it out of the metric's name;
    the verifier's pick nested in a reward model's best-of-N is a row, not the run's headline."""
    sampled = {"pass@1_accuracy": {**m(0.2), "k": 1}, "picked_accuracy": {**m(0.7), "k": 8},
               "verifier": {"best_of_8_accuracy": {**m(0.9), "k": 8}}}
    table = report.rows([_run("bon_rm", "bon", {"sampled": sampled})])
    assert ("verifier.best_of_8_accuracy", 8) in {(r["metric"], r["k"]) for r in table}
    assert report.summary(table).splitlines()[2] == "| bon_rm | 0.200 [0.100, 0.300] | 0.700 [0.600, 0.800] (N=8) |"


def test_held_out_answers_that_were_sampled_are_not_headed_greedy():
    """paper_math_* samples its held-out answers as the authors did (T 0.2): its own column."""
    sampled = {"do_sample": True, "temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1, "seed": 0}
    runs = [_run("authors", "sft", {"heldout": {"accuracy": m(0.5), "decoding": sampled}}),
            _run("greedy", "sft", {"heldout": {"accuracy": m(0.4), "decoding": "greedy"}})]
    lines = report.summary(report.rows(runs)).splitlines()
    assert lines[0] == "| run | greedy accuracy | held-out accuracy, sampled |"
    assert lines[2:] == ["| authors |  | 0.500 [0.400, 0.600] |", "| greedy | 0.400 [0.300, 0.500] |  |"]


def test_a_label_names_the_row_and_a_note_heads_the_report(tmp_path):
    import json

    import yaml

    for name, label in (("sft", None), ("rloo", "rloo (extension; not in the paper)")):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump({"run_name": name, "label": label, "stage": {"name": "bon"}}))
        (d / "results.json").write_text(json.dumps({"greedy": {"accuracy": m(0.4)}}))
        (d / "DONE").write_text("")
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


# --------------------------------------------------------------------------- runs that cannot be reported

def _run_dir(path, name, done=True, results=None):
    """A run dir as rlft leaves it: config.yaml, results.json, metrics.jsonl, and DONE when finished."""
    import json

    import yaml

    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"run_name": name, "stage": {"name": "bon"}}))
    (path / "results.json").write_text(results if results is not None else
                                       json.dumps({"greedy": {"accuracy": m(0.4)}}))
    (path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    if done:
        (path / "DONE").write_text("")
    return str(path)


@pytest.mark.parametrize("results,says", [
    ({"greedy": {"accuracy": {"value": None, "ci95": [0.1, 0.2], "n": 4}}}, "greedy.accuracy.value is null, expected a number"),
    ({"greedy": {"accuracy": {"value": 0.4, "ci95": [0.1, 0.6], "n": 4}}, "sampled": None},
     "sampled is null, expected an object of metrics"),
], ids=["null value", "null section"])
def test_nulls_in_results_json_are_one_line_naming_the_key(results, says, tmp_path, run_cli):

    run = _run_dir(tmp_path / "nulls", "nulls", results=json.dumps(results))
    code, out, err = run_cli("report", run, "--out", str(tmp_path / "out"))
    assert code == 2 and not out
    assert error_line(err) == f"rlft: error: report: '{run}/results.json': {says}"


def test_a_corrupt_results_json_is_one_line_naming_the_file(tmp_path, run_cli):

    run = _run_dir(tmp_path / "cut", "cut", results='{"greedy": {"accuracy": {"value": 0.4, "ci')  # truncated
    code, out, err = run_cli("report", run, "--out", str(tmp_path / "out"))
    assert code == 2 and not out
    line = error_line(err)
    assert f"{run}/results.json" in line and "cannot be read as JSON" in line
    assert not (tmp_path / "out").exists()  # nothing written


def test_an_unfinished_run_is_one_line_not_an_empty_table(tmp_path, run_cli):

    run = _run_dir(tmp_path / "running", "running", done=False)
    code, out, err = run_cli("report", run, "--out", str(tmp_path / "out"))
    assert code == 2 and not out
    line = error_line(err)
    assert repr(run) in line and "not finished (no DONE)" in line
    assert not (tmp_path / "out").exists()


def test_finished_runs_are_reported_and_unfinished_ones_named(tmp_path, run_cli):
    done = _run_dir(tmp_path / "sft_bon", "sft_bon")
    running = _run_dir(tmp_path / "rloo_bon", "rloo_bon", done=False)
    code, out, err = run_cli("report", done, running, "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert err.strip() == f"rlft report: {running}: not finished (no DONE), left out of the report"
    assert "| sft_bon | 0.400 [0.300, 0.500] |" in out and "| rloo_bon |" not in out
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.startswith(f"Not finished (no DONE), left out: {running}\n") and "| rloo_bon |" not in md
    assert "rloo_bon" not in (tmp_path / "out" / "results.csv").read_text()


def test_runs_that_share_a_name_are_kept_apart_by_their_path(tmp_path, run_cli):
    """Two pipelines' sft_bon (different runs_dir) are two rows, named by the path that tells them
    apart, in either argument order; a run whose name is its own keeps it."""
    import json

    a = _run_dir(tmp_path / "a" / "sft_bon", "sft_bon", results=json.dumps({"greedy": {"accuracy": m(0.4)}}))
    b = _run_dir(tmp_path / "b" / "sft_bon", "sft_bon", results=json.dumps({"greedy": {"accuracy": m(0.7)}}))
    rloo = _run_dir(tmp_path / "a" / "rloo_bon", "rloo_bon")
    for order in ((a, b, rloo), (b, rloo, a)):
        code, out, err = run_cli("report", *order, "--out", str(tmp_path / "out"))
        assert code == 0, err
        assert "| sft_bon (a/sft_bon) | 0.400 [0.300, 0.500] |" in out
        assert "| sft_bon (b/sft_bon) | 0.700 [0.600, 0.800] |" in out
        assert "| rloo_bon | 0.400 [0.300, 0.500] |" in out
