"""`make demo` does what the README says: the tiny model learns Countdown, and best-of-16 with
the verifier lifts it the way the paper's does (slow tier)."""

import json

import pytest


@pytest.mark.slow
def test_demo_sft_then_best_of_16(tmp_path, run_cli):
    sft, bon = tmp_path / "sft", tmp_path / "bon"
    code, _, err = run_cli("train", "experiment=tiny_math_sft", f"run_dir={sft}")
    assert code == 0, err
    acc = json.loads((sft / "results.json").read_text())["heldout"]["accuracy"]
    assert acc["n"] == 200
    assert acc["ci95"][0] > 0.2 and acc["value"] >= 0.3, acc  # the spine issue's bar: >= 0.3

    code, _, err = run_cli("train", "experiment=tiny_math_bon", f"init_from={sft / 'model'}", f"run_dir={bon}")
    assert code == 0, err
    sampled = json.loads((bon / "results.json").read_text())["sampled"]
    pass1, best16 = sampled["pass@1_accuracy"]["value"], sampled["best_of_16_accuracy"]["value"]
    assert best16 >= 2 * pass1 and best16 >= 0.8, sampled  # the paper's shape: > 2x, > 0.81
