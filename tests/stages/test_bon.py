"""Best-of-N through the real CLI entry, and its estimators against brute force."""

import itertools
import json
import statistics

import pytest

from rlft.metrics import expected_max_at_k, pass_at_k


@pytest.mark.parametrize("scores", [[0, 0.1, 1, 0.1, 0, 1], [1.0], [0.0] * 5, [0.1, 1, 1, 0, 0.1, 0, 0, 1]])
def test_best_of_k_estimators_equal_brute_force_over_subsets(scores):
    n, c = len(scores), sum(s == 1 for s in scores)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(scores, k))
        assert expected_max_at_k(scores, k) == pytest.approx(statistics.mean(max(s) for s in subsets))
        assert pass_at_k(n, c, k) == pytest.approx(statistics.mean(any(x == 1 for x in s) for s in subsets))


@pytest.mark.smoke
def test_bon_cli_contract(tmp_path, run_cli, tiny_base):
    run_dir = tmp_path / "bon"
    code, out, err = run_cli("train", "stage=bon", "model=tiny", "data=countdown", f"init_from={tiny_base}",
                             "n=4", "num_prompts=6", f"run_dir={run_dir}", "data.evaluate.max_new_tokens=8",
                             "stage.sweep=[1,2]")
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())
    sampled = results["sampled"]
    assert (sampled["samples_per_prompt"], sampled["num_prompts"], sampled["temperature"]) == (4, 6, 1.0)
    assert {"pass@1_accuracy", "best_of_2_accuracy", "best_of_4_accuracy", "best_of_4_mean_score"} <= set(sampled)
    for k in (2, 4):  # more samples never hurt the verifier's pick
        assert sampled[f"best_of_{k}_mean_score"]["value"] >= sampled["pass@1_mean_score"]["value"]
    assert results["greedy"]["accuracy"]["n"] == 6 and results["seed"] == 0
    assert (run_dir / "DONE").exists() and not (run_dir / "model").exists()
    assert "| sampled | best_of_4_accuracy |" in out


def test_bon_needs_a_verifier(tmp_path, run_cli, tiny_base):
    code, _, err = run_cli("train", "stage=bon", "data=smoltalk", f"init_from={tiny_base}", f"run_dir={tmp_path}/b")
    assert code == 2 and "held-out problems and a verifier" in err
