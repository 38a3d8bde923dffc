"""Best-of-N through the real CLI entry, and its estimators against brute force."""

import itertools
import json
import statistics

import pytest

from rlft.stats import expected_max_at_k, expected_pick_at_k, pass_at_k


@pytest.mark.parametrize("scores", [[0, 0.1, 1, 0.1, 0, 1], [1.0], [0.0] * 5, [0.1, 1, 1, 0, 0.1, 0, 0, 1]])
def test_best_of_k_estimators_equal_brute_force_over_subsets(scores):
    n, c = len(scores), sum(s == 1 for s in scores)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(scores, k))
        assert expected_max_at_k(scores, k) == pytest.approx(statistics.mean(max(s) for s in subsets))
        assert pass_at_k(n, c, k) == pytest.approx(statistics.mean(any(x == 1 for x in s) for s in subsets))


@pytest.mark.parametrize("values,keys", [([0, 0.1, 1, 0.1, 0, 1], [0.3, -1, 2, 0.5, 9, 1]),
                                         ([1, 0, 1, 0], [1, 1, 1, 1]),             # all keys tie
                                         ([0, 1, 0.1, 1, 0], [2, 2, -5, 0, 7])])  # some keys tie
def test_reward_model_pick_estimator_equals_brute_force_over_subsets(values, keys):
    n = len(values)
    for k in range(1, n + 1):
        picks = []
        for subset in itertools.combinations(range(n), k):
            best = max(keys[i] for i in subset)
            tied = [values[i] for i in subset if keys[i] == best]
            picks.append(statistics.mean(tied))  # equal keys: no sample favoured
        assert expected_pick_at_k(values, keys, k) == pytest.approx(statistics.mean(picks))
    # keys equal to the values: the pick is the maximum, the verifier's estimator
    assert expected_pick_at_k(values, values, 2) == pytest.approx(expected_max_at_k(values, 2))


@pytest.mark.smoke
def test_bon_picks_by_a_reward_model(tmp_path, run_cli, countdown_sft):
    from rlft.config import build, compose

    rm_dir = build(compose(["reward_model=tiny"]).reward_model.build)
    common = ["stage=bon", "model=tiny", "data=countdown_tiny", f"init_from={countdown_sft}", "n=4", "num_prompts=16",
              "data.evaluate.max_new_tokens=8", "stage.sweep=[1,2]"]
    code, _, err = run_cli("train", *common, f"run_dir={tmp_path / 'v'}")
    assert code == 0, err
    code, _, err = run_cli("train", *common, "select=reward", "reward=reward_model", f"reward.path={rm_dir}",
                           f"run_dir={tmp_path / 'r'}")
    assert code == 0, err
    by_verifier = json.loads((tmp_path / "v" / "results.json").read_text())["sampled"]
    by_rm = json.loads((tmp_path / "r" / "results.json").read_text())["sampled"]
    assert by_rm["selector"] == "reward=reward_model" and by_verifier["selector"] == "countdown verifier"
    # same seed, same samples: pass@1 does not depend on who picks; a reward model never beats the verifier
    assert by_rm["pass@1_mean_score"] == by_verifier["pass@1_mean_score"]
    assert by_rm["best_of_4_mean_score"]["value"] <= by_verifier["best_of_4_mean_score"]["value"]
    # and the verifier's pick of the reward run's samples is the verifier run's (one sampling, both picks)
    assert by_rm["verifier"] == {k: v for k, v in by_verifier.items() if k.endswith(("_accuracy", "_mean_score"))} | {
        "selector": "countdown verifier"}
    assert "verifier" not in by_verifier


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


def test_bon_needs_heldout_prompts_and_a_verifier(tmp_path, run_cli, tiny_base):
    code, _, err = run_cli("train", "stage=bon", "data=smoltalk", f"init_from={tiny_base}", f"run_dir={tmp_path}/b")
    assert code == 2 and "data=smoltalk has no heldout" in err
    code, _, err = run_cli("train", "stage=bon", "data=ifcheck", "data.task=null", f"init_from={tiny_base}",
                           f"run_dir={tmp_path}/c")
    assert code == 2 and "data=ifcheck has no task" in err and "use stage=winrate" in err


def test_bon_picks_by_any_tasks_verdict(tmp_path, run_cli, tiny_base):
    """Best-of-N is the task's, not Countdown's: on ifcheck every sample is judged by its rules,
    so best-of-n can only gain on pass@1, and the samples shown are the prompts'."""
    run_dir = tmp_path / "if"
    code, _, err = run_cli("train", "stage=bon", "data=ifcheck", f"init_from={tiny_base}", "n=4", "num_prompts=6",
                           "data.evaluate.max_new_tokens=8", "stage.sweep=[1,4]", f"run_dir={run_dir}")
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())
    greedy, sampled = results["greedy"], results["sampled"]
    assert greedy["judge"] == "ifcheck rules" and greedy["all_satisfied"]["n"] == 6 and len(greedy["scores"]) == 6
    assert "prompt" in greedy["samples"][0] and sampled["selector"] == "ifcheck verifier"
    assert sampled["best_of_4_mean_score"]["value"] >= sampled["pass@1_mean_score"]["value"]


def test_an_integer_temperature_from_the_command_line_samples(tmp_path, run_cli, tiny_base):
    """Hydra reads temperature=2 as an int; transformers refuses int temperatures with a traceback."""
    run_dir = tmp_path / "hot"
    code, _, err = run_cli("train", "stage=bon", "data=countdown", f"init_from={tiny_base}", "temperature=2", "n=2",
                           "num_prompts=2", "data.evaluate.max_new_tokens=4", "stage.sweep=[1,2]", f"run_dir={run_dir}")
    assert code == 0, err
    assert json.loads((run_dir / "results.json").read_text())["sampled"]["temperature"] == 2


def test_bon_refuses_greedy_best_of_n_before_loading_anything(tmp_path, run_cli, tiny_base):
    """n samples at temperature 0 would be one greedy answer n times: refused, naming both keys."""
    code, _, err = run_cli("train", "stage=bon", "data=countdown", f"init_from={tiny_base}", "temperature=0", "n=8",
                           f"run_dir={tmp_path / 'cold'}")
    assert code == 2 and "rlft: error: temperature=0 with n=8: " in err and "Traceback" not in err
    assert not (tmp_path / "cold").exists()  # refused before the run dir is made
