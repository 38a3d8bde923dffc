"""`rlft pipeline` runs an experiment's stages in order and skips finished ones; `rlft report`
turns run dirs into a table, a CSV and PNG plots."""

import csv

import pytest

PIPELINE = """# @package _global_
run_name: mini_math
pipeline:
  - name: sft
    overrides: [experiment=tiny_math_sft, max_steps=2, data.sft_dataset.n=128, data.heldout.n=4,
                stage.trainer.logging_steps=1]
  - name: bon
    overrides: [experiment=tiny_math_bon, "init_from=${run_dir}/sft/model", n=4, num_prompts=4,
                "stage.sweep=[1,2,4]"]
  - name: rloo
    overrides: [experiment=tiny_math_rloo, "init_from=${run_dir}/sft/model", max_steps=1, data.prompt_dataset.n=64,
                data.heldout.n=4, stage.trainer.max_completion_length=8, data.evaluate.max_new_tokens=8]
"""


@pytest.mark.smoke
def test_pipeline_runs_in_order_skips_done_and_reports(tmp_path, run_cli, monkeypatch):
    (tmp_path / "configs" / "experiment").mkdir(parents=True)
    (tmp_path / "configs" / "experiment" / "mini_math.yaml").write_text(PIPELINE)
    monkeypatch.chdir(tmp_path)
    args = ("pipeline", "--config-dir", str(tmp_path / "configs"), "experiment=mini_math")
    code, out, err = run_cli(*args)
    assert code == 0, err
    for step in ("sft", "bon", "rloo"):
        assert (tmp_path / "runs" / "mini_math" / step / "DONE").exists()
    assert "| tiny_math_bon | sampled | best_of_4_accuracy |" in out

    report = tmp_path / "runs" / "mini_math" / "report"
    for png in ("best_of_n.png", "training.png"):
        data = (report / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    table = list(csv.DictReader((report / "results.csv").open()))
    assert {r["run"] for r in table} == {"tiny_math_sft", "tiny_math_bon", "tiny_math_rloo"}

    # A second run skips both; an interrupted one redoes only what is not DONE.
    bon_results = (tmp_path / "runs" / "mini_math" / "bon" / "results.json").read_text()
    (tmp_path / "runs" / "mini_math" / "bon" / "DONE").unlink()
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "sft: done, skipped" in out and "bon: running" in out and "rloo: done, skipped" in out
    assert (tmp_path / "runs" / "mini_math" / "bon" / "results.json").read_text() == bon_results  # seeded


def test_pipeline_and_train_refuse_each_others_experiments(run_cli):
    code, _, err = run_cli("pipeline", "experiment=tiny_math_sft")
    assert code == 2 and "needs an experiment with a `pipeline:` list" in err
    code, _, err = run_cli("train", "experiment=tiny_math")
    assert code == 2 and "rlft pipeline experiment=tiny_math" in err


def test_report_names_a_dir_that_is_not_a_run(run_cli, tmp_path):
    code, _, err = run_cli("report", str(tmp_path))
    assert code == 2 and "is not an rlft run dir" in err
