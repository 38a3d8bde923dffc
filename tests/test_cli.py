"""The CLI: instant help, and user mistakes end with one line naming the culprit and exit 2."""

import subprocess
import sys
from pathlib import Path

from conftest import error_line

RLFT = str(Path(sys.executable).parent / "rlft")


def test_help_is_instant_and_imports_no_torch():
    code = (
        "import sys, rlft.cli\n"
        "for argv in (['--help'], ['train', '--help']):\n"
        "    try: rlft.cli.main(argv)\n"
        "    except SystemExit as e: assert e.code == 0\n"
        "assert 'torch' not in sys.modules and 'trl' not in sys.modules and 'hydra' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "stage=sft" in out.stdout


def test_console_script_unknown_stage_is_one_line_exit_2(tmp_path):
    out = subprocess.run([RLFT, "train", "stage=nope"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "'nope'" in lines[0] and "sft" in lines[0]


def test_misspelled_key_exit_2(run_cli):
    code, _, err = run_cli("train", "max_step=4")
    assert code == 2 and "max_step" in error_line(err) and "max_steps" in err


def test_bad_trl_knob_exit_2_before_any_work(run_cli, tmp_path):
    code, _, err = run_cli("train", "+stage.trainer.learnin_rate=1", f"run_dir={tmp_path / 'r'}")
    assert code == 2 and "stage.trainer.learnin_rate" in error_line(err) and "learning_rate" in err
    assert not (tmp_path / "r").exists()


def test_missing_data_file_exit_2_and_no_done(run_cli, tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    code, _, err = run_cli("train", "data=smoltalk", f"data.sft_dataset.path={missing}", f"run_dir={tmp_path / 'r'}")
    assert code == 2 and str(missing) in error_line(err)
    assert not (tmp_path / "r" / "DONE").exists()


def test_unreachable_model_exit_2(run_cli, tmp_path):
    code, _, err = run_cli("train", "model=qwen2_5_0_5b", f"run_dir={tmp_path / 'r'}")
    assert code == 2 and "Qwen/Qwen2.5-0.5B" in error_line(err) and "offline" in err


def test_cfg_prints_the_composed_config(run_cli):
    code, out, _ = run_cli("train", "--cfg", "stage=sft", "seed=5")
    assert code == 0 and "seed: 5" in out and "_target_: trl.SFTConfig" in out


def test_run_dir_that_is_not_ours_is_never_touched(run_cli, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "config.yaml.bak").write_text("keep me")
    (precious / "notes.txt").write_text("keep me")
    code, _, err = run_cli("train", f"run_dir={precious}", "overwrite=true", "max_steps=1")
    assert code == 2 and "not an rlft run dir" in error_line(err)
    assert sorted(p.name for p in precious.iterdir()) == ["config.yaml.bak", "notes.txt"]


def test_the_vllm_extra_is_pinned_so_it_keeps_the_pinned_torch():
    """`pip install -e .[vllm]` unpinned takes the newest vllm, which pins a newer torch and would
    replace the one rlft pins (vllm 0.32.0 is the last built on torch 2.13.0; issue 21 item 12)."""
    import tomllib

    from conftest import REPO

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch_pin = next(r for r in project["dependencies"] if r.startswith("torch"))
    assert torch_pin == "torch==2.13.0"  # if this moves, re-pin vllm to the release built on it
    assert project["optional-dependencies"]["vllm"] == ["vllm==0.32.0"]


def test_training_prints_one_line_per_log_step_under_a_bar_named_after_the_stage(run_cli, tmp_path, tiny_base):
    """The log records' dicts go to metrics.jsonl; the console gets step/total, the numbers that
    exist, tokens/s (from the second log on) and an ETA, then one closing line."""
    code, out, err = run_cli("train", "stage=sft", "data=countdown_tiny", f"init_from={tiny_base}", "max_steps=3",
                             "data.sft_dataset.n=32", "data.evaluate=null", "stage.trainer.logging_steps=1",
                             "report_to=[]", f"run_dir={tmp_path / 'run'}")
    assert code == 0, err
    lines = [line.split("rlft sft  ", 1)[1] for line in out.splitlines() if "rlft sft  " in line]
    assert [line.split("  ")[0] for line in lines[:3]] == ["step 1/3", "step 2/3", "step 3/3"] and len(lines) == 4
    assert lines[0].startswith("step 1/3  loss ") and " grad " in lines[0] and " lr " in lines[0] and "ETA " in lines[0]
    assert " tok/s  ETA " in lines[2] and lines[3].startswith("done: 3 steps in ") and "train_loss " in lines[3]
    assert "{'loss'" not in out + err and "rlft sft:" in err  # the bar, named after the stage
