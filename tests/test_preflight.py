"""`rlft pipeline --preflight DIR` (make paper-preflight): every cell cut short, measured, one table.

The pipeline runs in this process on the tiny Countdown recipe (make demo's), as a user runs it;
the verdict's rules (a model away from the accelerator, memory, disk) are held against records a
GPU box would write.
"""

import json
import math

import pytest

from rlft import preflight
from rlft.errors import UserError
from rlft.pipeline import pipeline

SFT_ROWS = 1000  # tiny_math_sft's generated training set, cut so the test builds it in seconds


@pytest.fixture(scope="module")
def tiny_preflight(tmp_path_factory):
    out = tmp_path_factory.mktemp("preflight") / "tiny_math"
    overrides = ["experiment=tiny_math", f"sft:data.sft_dataset.n={SFT_ROWS}", "rloo:max_steps=3",
                 "bon:data.evaluate.batch_size=8"]
    return out, pipeline(overrides, preflight_dir=str(out))


def test_every_cell_runs_short_and_is_priced_for_its_whole_run(tiny_preflight):
    out, code = tiny_preflight
    assert code == 0
    records = {d.name: json.loads((d / "preflight.json").read_text()) for d in out.iterdir() if d.is_dir()}
    assert set(records) == {"sft", "sft_bon", "rloo", "rloo_bon", "rloo_passk", "rloo_passk_bon"}
    sft = records["sft"]
    # the data loader's rows, counted before the cap; one epoch of 64 a step is what the whole cell trains
    assert sft["rows"]["train"] == [SFT_ROWS, preflight.TRAIN_ROWS]
    assert sft["steps"] == math.ceil(SFT_ROWS / 64) and sft["per_step"] == 64
    assert sft["next_step_s"] > 0 and sft["estimate_s"] > sft["wall_s"]  # 16 steps priced from the 2 run
    assert records["rloo"]["steps"] == 3  # stage.trainer.max_steps, as configured
    bon = records["sft_bon"]
    assert bon["steps"] == 0 and bon["rows"]["eval"] == [500, 8]  # one evaluation batch (more than EVAL_ROWS)
    assert bon["evaluation_s"] > 0 and bon["estimate_s"] > bon["wall_s"]  # 500 problems priced from 8
    assert records["sft"]["rows"]["eval"] == [200, 100]  # countdown_tiny's evaluation batch: 100
    for r in records.values():
        assert r["devices"] and set(r["devices"].values()) == {"cpu"} and r["accelerator"] == "cpu"
    assert not any((out / name / "model").exists() for name in records)  # only the measurements stay


def test_a_cell_that_fails_stops_the_preflight_with_its_line(tmp_path, capsys):
    code = pipeline(["experiment=tiny_math", f"sft:data.sft_dataset.n={SFT_ROWS}", "sft:stage.trainer.max_length=2"],
                    preflight_dir=str(tmp_path / "pf"))
    printed = capsys.readouterr().out
    assert code == 1
    assert "| sft | | | | | | | | | failed: data.sft_dataset: none of" in printed
    assert not (tmp_path / "pf" / "sft_bon").exists()  # nothing after the failed cell runs


def test_a_dir_of_real_runs_is_never_cleared(tmp_path):
    runs = tmp_path / "runs"
    (runs / "sft").mkdir(parents=True)
    (runs / "sft" / "DONE").write_text("")
    with pytest.raises(UserError, match=f"--preflight {runs}: the directory holds files that are not a pre-flight"):
        pipeline(["experiment=tiny_math"], preflight_dir=str(runs))
    assert (runs / "sft" / "DONE").exists()


def _record(**kw):
    r = {"step": "paper_if_rloo_deberta", "cell": "paper_if_rloo_deberta", "accelerator": "cuda:0",
         "devices": {"Qwen2ForCausalLM (trained)": "cuda:0", "reference": "cuda:0"}, "world_size": 1, "per_step": 32,
         "memory": {"peak_bytes": 16 * 2**30, "device_bytes": 80 * 2**30, "kind": "cuda"}, "step_s": 3.0,
         "next_step_s": 1.0, "steps": 1000, "estimate_s": 1100.0, "model_bytes": 2 * 2**30,
         "checkpoint_bytes": 12 * 2**30, "keep_checkpoints": False, "rows": {"train": [61135, 256], "eval": [400, 4]}}
    return {**r, **kw}


def test_verdict_names_a_model_that_idles_the_gpu_and_memory_that_would_not_fit():
    assert preflight.verdict(_record()) == "ok"
    idle = _record(devices={"Qwen2ForCausalLM (trained)": "cuda:0", "DebertaV2ForSequenceClassification": "cpu"})
    assert preflight.verdict(idle) == "idles the CUDA: DebertaV2ForSequenceClassification on cpu"
    full = _record(memory={"peak_bytes": 79 * 2**30, "device_bytes": 80 * 2**30, "kind": "cuda"})
    assert preflight.verdict(full) == "would not fit: peak 79.0 GiB of 80.0 GiB"
    text, ok = preflight.table([_record(), idle], {"paper_if_rloo_deberta": 32}, None, 2**40)
    assert not ok and "idles the CUDA" in text


def test_table_says_the_disk_and_a_batch_that_is_not_the_recipes():
    two = [_record(), _record(step="paper_if_dpo", per_step=16)]
    text, ok = preflight.table(two, {"paper_if_rloo_deberta": 32, "paper_if_dpo": 16}, None, 100 * 2**30)
    assert ok and "disk: 16.0 GiB needed at the peak" in text  # two models, one cell's checkpoints at a time
    text, ok = preflight.table(two, {"paper_if_rloo_deberta": 32, "paper_if_dpo": 16}, None, 10 * 2**30)
    assert not ok and text.endswith("of 10.0 GiB free: WOULD NOT FIT")
    text, ok = preflight.table(two, {"paper_if_rloo_deberta": 32, "paper_if_dpo": 128}, None, 2**40)
    assert not ok and "1 x 16 (128) MISMATCH" in text
    assert "whole recipe: 0.61 h estimated for 2 cells" in text
    assert "| 61135 train, 400 eval | ok |" in text
    judged = _record(step="paper_if_dpo_winrate", per_step=None, steps=0, judge="http://127.0.0.1:8000/v1")
    text, ok = preflight.table([judged], {}, None, 2**40)
    assert ok and "| evaluation |" in text and "ok; judge http://127.0.0.1:8000/v1 answered |" in text
