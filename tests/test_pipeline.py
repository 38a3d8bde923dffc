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

    # A DONE step whose overrides changed is never reused as if it ran them: refused before any step
    # runs, naming the step and the key; with overwrite=true only that step runs again.
    code, out, err = run_cli(*args, "bon:n=2")
    assert code == 2 and out == ""
    assert ("rlft: error: pipeline step 'bon': runs/mini_math/bon is DONE with another config "
            "than the pipeline gives it now: n (4 -> 2); pass bon:overwrite=true to rerun") in err, err
    code, out, err = run_cli(*args, "bon:n=2", "bon:overwrite=true")
    assert code == 0, err
    assert "sft: done, skipped" in out and "bon: running" in out and "rloo: done, skipped" in out
    assert "best_of_2_accuracy" in (tmp_path / "runs" / "mini_math" / "bon" / "results.json").read_text()

    # A step that runs again makes the DONE steps built on it stale: they rerun after it.
    done_before = (tmp_path / "runs" / "mini_math" / "rloo" / "DONE").stat().st_mtime_ns
    code, out, err = run_cli(*args, "bon:n=2", "sft:max_steps=3", "sft:overwrite=true")
    assert code == 0, err
    assert "sft: running" in out and "bon: reruns, its input sft runs again" in out
    assert "rloo: reruns, its input sft runs again" in out and "rloo: running" in out
    assert (tmp_path / "runs" / "mini_math" / "rloo" / "DONE").stat().st_mtime_ns > done_before


def test_pipeline_and_train_refuse_each_others_experiments(run_cli):
    code, _, err = run_cli("pipeline", "experiment=tiny_math_sft")
    assert code == 2 and "needs an experiment with a `pipeline:` list" in err
    code, _, err = run_cli("train", "experiment=tiny_math")
    assert code == 2 and "rlft pipeline experiment=tiny_math" in err


def test_report_names_a_dir_that_is_not_a_run(run_cli, tmp_path):
    code, _, err = run_cli("report", str(tmp_path))
    assert code == 2 and "is not an rlft run dir" in err


# ------------------------------------------------------------------ the make recipes are pipelines

def rehearsal_vars() -> dict[str, str]:
    """make rehearsal's pass-through variables (the Makefile's REHEARSE_ARGS), and the knobs it leaves unset."""
    import shlex
    import subprocess

    from conftest import REPO

    db = subprocess.run(["make", "-pq"], cwd=REPO, capture_output=True, text=True).stdout
    line = next(line for line in db.splitlines() if line.startswith("REHEARSE_ARGS := "))
    found = dict(arg.split("=", 1) for arg in shlex.split(line.split(":= ", 1)[1]))
    return found | {"ACCELERATE": "accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m",
                    "JUDGE_URL": "http://judge:8000/v1"}


VARS = rehearsal_vars()
IF_POLICIES = ["paper_if_sft", "paper_if_sft_lora", "paper_if_dpo", "paper_if_dpo_lora"] + [
    f"paper_if_rloo_{rm}{lora}" for rm in ("deberta", "distilbert", "siamese_distilbert") for lora in ("", "_lora")]
IF_RM = ["paper_if_rm_deberta", "paper_if_rm_distilbert", "paper_if_rm_siamese_distilbert"]


def makefile_plan(runs: str, if_eval: str) -> dict[str, tuple[bool, list[str]]]:
    """What `make paper-math paper-if tiny-if` ran when they were shell loops over `rlft train` (the
    Makefile's `cell`, `bon` and tiny-if lines, transcribed): run dir -> (launched, overrides). The
    win-rate cells got BON_ARGS then; they are stage=winrate now, with WINRATE_ARGS of their own."""
    v = {k: val.split() for k, val in VARS.items()}
    plan = {}

    def cell(name, *args):  # $(call cell,...): under $(ACCELERATE)
        plan[name] = (True, [f"experiment={name}", f"runs_dir={runs}", "keep_checkpoints=false", *v["PAPER_ARGS"], *args])

    def bon(experiment, run, *args):  # $(call bon,...): one process
        plan[run] = (False, [f"experiment={experiment}", f"run_name={run}", f"runs_dir={runs}", "keep_checkpoints=false",
                             *v["PAPER_ARGS"], *args])

    cell("paper_math_sft", *v["SFT_ARGS"], *v["WARMSTART_ARGS"])
    cell("paper_math_sft_lora", *v["SFT_ARGS"], *v["WARMSTART_ARGS"])
    cell("paper_math_sft_synthetic", *v["SFT_ARGS"], *v["COUNTDOWN_ARGS"])
    bon("paper_math_bon", "paper_math_sft_bon", *v["BON_ARGS"], *v["COUNTDOWN_ARGS"])
    cell("paper_math_rloo", *v["RLOO_ARGS"], *v["COUNTDOWN_ARGS"])
    cell("paper_math_rloo_lora", *v["RLOO_ARGS"], *v["COUNTDOWN_ARGS"])
    bon("paper_math_bon", "paper_math_rloo_bon", *v["BON_ARGS"], *v["COUNTDOWN_ARGS"],
        f"init_from={runs}/paper_math_rloo/model", "label='paper_math_rloo_bon (extension; the paper reports no Countdown RLOO)'")
    cell("paper_if_sft", *v["SFT_ARGS"], *v["SMOLTALK_ARGS"])
    cell("paper_if_sft_lora", *v["SFT_ARGS"], *v["SMOLTALK_ARGS"])
    for e in IF_RM:
        cell(e, *v["RM_ARGS"])
    for e in ("paper_if_dpo", "paper_if_dpo_lora"):
        cell(e, *v["DPO_ARGS"])
    for e in IF_POLICIES[4:]:
        cell(e, *v["RLOO_ARGS"], *v["UF_PROMPT_ARGS"])
    for e in IF_POLICIES:
        bon(if_eval, f"{e}_{if_eval.removeprefix('paper_if_')}", *v["WINRATE_ARGS"], f"init_from={runs}/{e}/model",
            f"judge.base_url={VARS['JUDGE_URL']}")
    tiny = {"tiny_if_sft": ["experiment=tiny_if_sft"]}
    for rm in ("bt", "siamese", "regression"):
        for backbone in ("tiny", "tiny_deberta"):
            tiny[f"tiny_if_rm_{rm}_{backbone}"] = ["experiment=tiny_if_rm", f"rm_loss={rm}", f"reward_model={backbone}"]
    tiny["tiny_if_dpo"] = ["experiment=tiny_if_dpo", f"init_from={runs}/tiny_if_sft/model"]
    tiny["tiny_if_rloo"] = ["experiment=tiny_if_rloo", f"init_from={runs}/tiny_if_sft/model",
                            f"reward.path={runs}/tiny_if_rm_bt_tiny/model"]
    plan.update({name: (False, [*args, f"run_dir={runs}/{name}", "overwrite=true"]) for name, args in tiny.items()})
    return plan


def resolved(overrides: list[str], *drop: str) -> dict:
    from omegaconf import OmegaConf

    from rlft import config

    cfg = OmegaConf.to_container(config.compose(overrides), resolve=True)
    for key in drop:
        cfg.pop(key)
    return cfg


@pytest.mark.parametrize("if_eval", ["paper_if_winrate", "paper_if_winrate_authors"])
def test_the_make_recipes_run_what_the_makefile_ran(if_eval, run_cli):
    """`make paper-math paper-if tiny-if` are one `rlft pipeline` line each now; their plans (--dry-run)
    run every cell the old shell loops ran, with the same resolved config, in the same run dir, under
    ACCELERATE where they trained, and report the same runs into the same folder under REPORT_NOTE."""
    import shlex
    import subprocess

    from conftest import REPO

    runs = "runs" if if_eval == "paper_if_winrate" else "/elsewhere"
    make = [f"{k}={val}" for k, val in VARS.items()]
    dry = subprocess.run(["make", "-n", "paper-math", "paper-if", "tiny-if", f"RUNS={runs}", f"IF_EVAL={if_eval}",
                          "BIN=.venv/bin", *make], cwd=REPO, capture_output=True, text=True, check=True).stdout
    lines = [shlex.split(line) for line in dry.splitlines() if " pipeline " in line]
    assert [line[line.index("pipeline") + 1] for line in lines] == [
        "experiment=paper_math", "experiment=paper_if", "experiment=tiny_if"]  # one line a target

    expected = makefile_plan(runs, if_eval)
    reports = {}
    seen = []
    for line in lines:
        code, out, err = run_cli(*line[line.index("pipeline"):], "--dry-run")
        assert code == 0, err
        for command in map(shlex.split, out.splitlines()):
            if command[:2] == ["rlft", "report"]:
                out_dir = command[command.index("--out") + 1]
                reports[out_dir] = command
                continue
            launched = command[0] != "rlft"
            args = command[command.index("train") + 1:]
            run_dir = args[-1].removeprefix("run_dir=")
            name = run_dir.rsplit("/", 1)[1]
            assert run_dir == f"{runs}/{name}"
            was_launched, old = expected[name]
            assert launched == (was_launched and "tiny_if" not in name), name
            if launched:
                assert command[:command.index("rlft")] == shlex.split(VARS["ACCELERATE"])
            # make tiny-if ran every step with overwrite=true and no runs_dir (run_dir= and init_from= said where);
            # the pipeline skips DONE steps instead, and passes runs_dir (every path it sets is compared)
            drop = ("overwrite", "runs_dir") if name.startswith("tiny_if") else ()
            assert resolved(args, *drop) == resolved(old, *drop), name
            seen.append(name)
    assert seen == list(expected)  # every cell, in the Makefile's order

    note = ["--note", VARS["REPORT_NOTE"]]
    suffix = if_eval.removeprefix("paper_if_")
    assert reports == {
        f"{runs}/paper_math_report": ["rlft", "report", *[f"{runs}/{e}" for e in [
            "paper_math_sft", "paper_math_sft_lora", "paper_math_sft_synthetic", "paper_math_sft_bon", "paper_math_rloo",
            "paper_math_rloo_lora", "paper_math_rloo_bon"]], "--out", f"{runs}/paper_math_report", *note],
        f"{runs}/paper_if_report": ["rlft", "report", *[f"{runs}/{e}" for e in IF_RM],
                                    *[f"{runs}/{e}_{suffix}" for e in IF_POLICIES], "--out", f"{runs}/paper_if_report", *note],
        f"{runs}/tiny_if_report": ["rlft", "report", *[f"{runs}/tiny_if_{e}" for e in ("sft", "dpo", "rloo")],
                                   "--out", f"{runs}/tiny_if_report"]}


TAGGED = """# @package _global_
run_name: tagged
run_dir: ${runs_dir}
flavour: plain
pipeline:
  - name: sft_${flavour}
    overrides: [experiment=tiny_math_sft]
    tags: [countdown]
  - name: bon
    overrides: [experiment=tiny_math_bon, "init_from=${run_dir}/sft_${flavour}/model"]
report:
  runs: [bon]
  out: ${run_dir}/tagged_report
  note: from the config
"""


def test_pipeline_targets_steps_by_stage_and_tag(tmp_path, run_cli):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "tagged.yaml").write_text(TAGGED)
    base = ("pipeline", "--config-dir", str(tmp_path), "experiment=tagged", f"runs_dir={tmp_path}", "--dry-run")
    code, out, err = run_cli(*base, "seed=3", "flavour=fancy", "bon:n=4", "countdown:data.sft_dataset.n=8",
                             "sft:+stage.trainer.max_grad_norm=0.5", "--launcher", "python -m")
    assert code == 0, err
    sft, bon, rep = out.splitlines()
    # KEY=VALUE to every step, except the pipeline's own keys (flavour); TAG:KEY=VALUE by stage or tag
    assert sft == (f"python -m rlft train --config-dir {tmp_path} experiment=tiny_math_sft runs_dir={tmp_path} seed=3 "
                   "data.sft_dataset.n=8 "
                   f"+stage.trainer.max_grad_norm=0.5 run_dir={tmp_path}/sft_fancy")
    assert bon == (f"rlft train --config-dir {tmp_path} experiment=tiny_math_bon init_from={tmp_path}/sft_fancy/model "
                   f"runs_dir={tmp_path} seed=3 n=4 run_dir={tmp_path}/bon")  # an evaluation: never launched
    assert rep == f"rlft report {tmp_path}/bon --out {tmp_path}/tagged_report --note 'from the config'"
    code, out, _ = run_cli(*base, "--note", "mine")
    assert code == 0 and out.splitlines()[-1].endswith("--note mine")

    (tmp_path / "sft_plain").mkdir()
    (tmp_path / "sft_plain" / "DONE").write_text("")
    (tmp_path / "bon" / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    code, out, _ = run_cli(*base)
    assert out.splitlines()[0].endswith("run_dir=" + str(tmp_path / "sft_plain") + "   # DONE: skipped")
    assert out.splitlines()[1].endswith("resume=true")


@pytest.mark.parametrize("overrides,message", [
    (["dpo:beta=0.2"], "dpo:beta=0.2: no step of pipeline 'tagged' is tagged 'dpo' (its steps' stages and tags: bon, "
                       "countdown, sft)"),
    (["bon:n=abc", "bon:nn=4"], "pipeline step 'bon': unknown config key 'nn' (did you mean 'n'?)"),
    (["report.runs=[sft]"], "report.runs: 'sft' is not a step of pipeline 'tagged' (sft_plain, bon)"),
    # the last step's knobs are checked as `rlft train` checks them, before the first step runs
    (["bon:stage.trainer.learning_rate=fast", "sft:stage.trainer.learning_rate=fast"],
     "pipeline step 'sft_plain': stage.trainer.learning_rate: expected float, got 'fast'"),
    (["bon:temperature=hot"], "pipeline step 'bon': temperature: expected a number, got 'hot'"),
])
def test_pipeline_refuses_a_bad_plan_before_any_step_runs(overrides, message, tmp_path, run_cli):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "tagged.yaml").write_text(TAGGED)
    code, out, err = run_cli("pipeline", "--config-dir", str(tmp_path), "experiment=tagged", f"runs_dir={tmp_path}",
                             *overrides)
    assert code == 2 and f"rlft: error: {message}" in err, err
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["experiment"]


EACH = TAGGED.replace("""  - name: bon
    overrides: [experiment=tiny_math_bon, "init_from=${run_dir}/sft_${flavour}/model"]""", """  - each: [4, 8]
    name: "bon{each}"
    overrides: [experiment=tiny_math_bon, "init_from=${run_dir}/sft_${flavour}/model", "n={each}"]""").replace(
    "runs: [bon]", "runs: [bon4, bon8]")


def test_an_each_step_is_one_step_per_item_and_needs_each_in_its_name(run_cli, tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "each.yaml").write_text(EACH)
    args = ("pipeline", "--config-dir", str(tmp_path), "experiment=each", f"runs_dir={tmp_path}")
    code, out, err = run_cli(*args, "--dry-run")
    assert code == 0, err
    steps = out.splitlines()[1:3]
    assert [line.split(" n=")[1].split()[0] for line in steps] == ["4", "8"] and f"run_dir={tmp_path / 'bon8'}" in steps[1]
    (tmp_path / "experiment" / "each.yaml").write_text(EACH.replace('name: "bon{each}"', "name: bon"))
    code, out, err = run_cli(*args)
    assert code == 2 and "pipeline step 'bon': `each:` needs a list of items and a name holding {each}" in err, err


def test_pipeline_passes_on_a_key_only_its_steps_know(run_cli, tmp_path):
    """data.task.ifbench is in every real_if step (data=ifeval) but not in the root config the
    pipeline itself composes (data=countdown): it goes to the steps, not refused."""
    code, out, err = run_cli("pipeline", "experiment=real_if", "data.task.ifbench=false", f"runs_dir={tmp_path}",
                             "--dry-run")
    assert code == 0, err
    steps = out.splitlines()[:-1]
    assert len(steps) == 10 and all(" data.task.ifbench=false " in line for line in steps)


def test_launched_step_that_fails_stops_the_pipeline_with_its_exit_code(tmp_path, run_cli):
    """--launcher runs a training step as a process of its own (here `python -m`, as accelerate's -m)."""
    import sys

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "tagged.yaml").write_text(TAGGED)
    code, out, err = run_cli("pipeline", "--config-dir", str(tmp_path), "experiment=tagged", f"runs_dir={tmp_path}",
                             f"sft:init_from={tmp_path}/nowhere", "--launcher", f"{sys.executable} -m")
    assert code == 2, err
    assert "sft_plain: running" in out and "bon: running" not in out
    assert f"sft_plain: `{sys.executable} -m rlft train" in err and "exited with 2" in err
    assert not (tmp_path / "bon").exists()
