"""stage=sample: rejection-sampled SFT rows and on-policy pairs, judged by the data's task."""

import json

from rlft import data
from rlft.tasks.ifcheck import IfCheck

ARGS = ["stage=sample", "data=ifcheck", "k=4", "num_prompts=64", "stage.max_new_tokens=12"]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _user(row):
    return row["chosen"][-2]["content"]


def test_keep_correct_writes_only_samples_the_task_accepts_and_sft_reads_them(tmp_path, run_cli, tiny_base):
    run_dir = tmp_path / "sft_samples"
    code, _, err = run_cli("train", *ARGS, "keep=correct", f"init_from={tiny_base}", f"run_dir={run_dir}")
    assert code == 0, err
    rows, task = _rows(run_dir / "sft.jsonl"), IfCheck()
    assert rows
    for row in rows:  # every kept answer follows every constraint of its own prompt, which the row carries
        assert task.verdict(row["messages"][-1]["content"], row).correct
    samples = json.loads((run_dir / "results.json").read_text())["samples"]
    assert (samples["prompts"], samples["k"], samples["kept"]) == (64, 4, len(rows))
    assert samples["prompts_with_a_correct_sample"] + samples["prompts_without"] == 64
    assert samples["correct"]["n"] == 256
    assert len(data.first_turn_sft_dataset(str(run_dir / "sft.jsonl"))) == len(rows)


def test_keep_pairs_puts_the_better_sample_first_drops_ties_and_dpo_reads_them(tmp_path, run_cli, tiny_base):
    run_dir = tmp_path / "pairs"
    code, _, err = run_cli("train", *ARGS, "keep=pairs", "stage.heldout_pairs=2", f"init_from={tiny_base}",
                           f"run_dir={run_dir}")
    assert code == 0, err
    train, held = _rows(run_dir / "pairs.jsonl"), _rows(run_dir / "pairs_heldout.jsonl")
    assert len(held) == 2 and not {_user(r) for r in held} & {_user(r) for r in train}  # prompts the RM never sees
    rows, task = train + held, IfCheck()
    for row in rows:
        chosen, rejected = (task.verdict(row[side][-1]["content"], row).score for side in ("chosen", "rejected"))
        assert chosen > rejected and row["score_chosen"] == 1 + 9 * chosen and row["score_rejected"] == 1 + 9 * rejected
    samples = json.loads((run_dir / "results.json").read_text())["samples"]
    assert samples["pairs"] == len(rows) and samples["pairs"] + samples["prompts_dropped_as_ties"] == 64
    pairs = data.ultrafeedback_preference_dataset(str(run_dir / "pairs.jsonl"))
    assert len(pairs) == len(train) and pairs[0]["score_chosen"] > pairs[0]["score_rejected"]


def test_sample_refuses_data_without_a_task_and_greedy_sampling(tmp_path, run_cli, tiny_base):
    code, _, err = run_cli("train", "stage=sample", "data=ifcheck", "data.task=null", f"init_from={tiny_base}",
                           f"run_dir={tmp_path / 'a'}")
    assert code == 2 and "data=ifcheck lacks a task" in err
    code, _, err = run_cli("train", "stage=sample", "data=ifcheck", "temperature=0", f"init_from={tiny_base}",
                           f"run_dir={tmp_path / 'b'}")
    assert code == 2 and "temperature=0 with k=8" in err and not (tmp_path / "b").exists()
