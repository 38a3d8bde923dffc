"""Every tiny experiment (the configs `make demo` and `make tiny-if` run) trains or evaluates for a
step or two through the real CLI entry, with only sizes shrunk; the paper_* experiments compose and
validate in tests/test_config.py (they need a GPU and the hub)."""

import json
import math

import pytest
from conftest import changed_tensors, state_dict

from rlft import config
from rlft.report import rows

pytestmark = pytest.mark.smoke

SMALL = {  # per stage: shrink the data and the step count, nothing else (two steps where the experiment
    # warms the learning rate up from 0: one step would leave the weights as they were)
    "sft": ["max_steps=2", "stage.trainer.logging_steps=1",
            "data.sft_dataset.n=64", "data.heldout.n=4"],
    "rm": ["max_steps=2", "stage.trainer.logging_steps=1",
            "data.preference_dataset.n=64", "data.preference_heldout.n=4"],
    "dpo": ["max_steps=2", "stage.trainer.logging_steps=1",
            "data.preference_dataset.n=32", "data.heldout.n=4", "data.evaluate.max_new_tokens=8"],
    "rloo": ["max_steps=1", "stage.trainer.logging_steps=1",
            "data.prompt_dataset.n=64", "data.heldout.n=4", "data.evaluate.max_new_tokens=8",
            "stage.trainer.max_completion_length=8"],
    "bon": ["num_prompts=4", "n=4", "stage.sweep=[1,4]", "data.evaluate.max_new_tokens=8"],
}
TINY = sorted(name for name in config.group_options("experiment")
              if name.startswith("tiny_") and not config.compose([f"experiment={name}"]).get("pipeline"))


def test_the_tiny_experiments_are_the_ones_the_make_targets_run():
    assert TINY == ["tiny_if_dpo", "tiny_if_rloo", "tiny_if_rm", "tiny_if_sft", "tiny_math_bon", "tiny_math_rloo",
                    "tiny_math_rloo_passk", "tiny_math_sft"]


@pytest.mark.parametrize("name", TINY)
def test_tiny_experiment_runs(name, tmp_path, run_cli, tiny_base, countdown_sft):
    stage = config.compose([f"experiment={name}"]).stage.name
    extra = list(SMALL[stage])
    if stage in ("dpo", "rloo", "bon"):
        extra.append(f"init_from={countdown_sft if 'math' in name else tiny_base}")
    if name == "tiny_if_rloo":
        extra.append(f"reward.path={config.build(config.compose(['reward_model=tiny']).reward_model.build)}")
    run_dir = tmp_path / name
    code, out, err = run_cli("train", f"experiment={name}", f"run_dir={run_dir}", "report_to=[]", *extra)
    assert code == 0, err
    assert (run_dir / "DONE").exists()
    cfg = config.compose([f"experiment={name}", *extra])
    if stage != "bon":  # it trained: finite losses logged, and the saved weights moved from where it started
        losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
        assert losses and all(math.isfinite(x) for x in losses)
        start = cfg.get("init_from") or config.build((cfg.reward_model if stage == "rm" else cfg.model).build)
        assert changed_tensors(state_dict(start), state_dict(run_dir / "model"))
    if stage in ("bon", "rloo", "dpo", "rm") or name.endswith("sft"):  # evaluated on the 4 held-out prompts
        results = json.loads((run_dir / "results.json").read_text())
        table = rows([{"name": name, "stage": stage, "results": results}])
        assert table and all(math.isfinite(r["value"]) for r in table)
        assert {r["n"] for r in table} == {4}, table
