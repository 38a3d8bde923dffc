"""Every shipped config composes and validates exactly as `rlft train` does, offline."""

import json

import pytest
import yaml
from conftest import REPO

from rlft import config
from rlft.errors import UserError

GROUPS = ["stage", "model", "data", "peft", "rm_loss", "reward_model", "reward", "judge", "experiment"]
MANDATORY = {"reward=reward_model": ["reward.path=/tmp/rm"],  # `???` keys
             "reward=countdown_and_reward_model": ["reward.path=/tmp/rm"], "judge=reward_model": ["judge.path=/tmp/rm"]}


def test_every_config_group_is_composed_here():
    """accelerate/ holds launcher files, not Hydra groups (tested below); every other folder is a group."""
    folders = {d.name for d in config.config_dir().iterdir() if d.is_dir()} - {"accelerate"}
    assert folders == set(GROUPS)


def all_overrides():
    for group in GROUPS:
        for name in config.group_options(group):
            yield f"{group}={name}"


@pytest.mark.parametrize("override", list(all_overrides()))
def test_every_config_composes_resolves_and_validates(override):
    from omegaconf import OmegaConf

    cfg = config.compose([override, *MANDATORY.get(override, []), "run_dir=/tmp/x"])
    config.validate(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["stage"]["name"] in config.group_options("stage")


@pytest.mark.parametrize("path", sorted((config.config_dir() / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    ClusterConfig.from_yaml_file(str(path))


def test_every_config_file_opens_with_its_command():
    for path in sorted(config.config_dir().rglob("*.yaml")):
        first = next(line for line in path.read_text().splitlines() if not line.startswith("# @package"))
        assert first.startswith("#"), path
        if path.parent.name != "accelerate":
            assert "rlft" in first or "make" in first, f"{path}: first comment should give the command"


def test_trl_knobs_pass_through_and_convenience_keys_land():
    from hydra.utils import instantiate

    cfg = config.compose(["stage=sft", "max_steps=7", "seed=3", "run_dir=/tmp/r", "stage.trainer.learning_rate=0.1",
                          "+stage.trainer.max_grad_norm=0.5"])
    args = instantiate(cfg.stage.trainer)
    assert type(args).__name__ == "SFTConfig"
    assert (args.max_steps, args.seed, args.learning_rate, args.max_grad_norm) == (7, 3, 0.1, 0.5)
    assert args.output_dir == "/tmp/r/checkpoints"
    assert args.bf16 is False  # CPU: never silently autocast


def test_unknown_stage_names_it_and_lists_stages():
    with pytest.raises(UserError) as e:
        config.compose(["stage=nope"])
    msg = str(e.value)
    assert "'nope'" in msg and "sft" in msg and "\n" not in msg


def test_misspelled_key_is_named_with_a_suggestion():
    with pytest.raises(UserError, match=r"unknown config key 'max_step' \(did you mean 'max_steps'\?\)"):
        config.compose(["max_step=4"])
    with pytest.raises(UserError, match=r"stage.trainer.learnin_rate.*did you mean 'stage.trainer.learning_rate'"):
        config.compose(["stage.trainer.learnin_rate=1"])


def test_added_trl_key_that_does_not_exist_fails_validation_by_full_key():
    cfg = config.compose(["+stage.trainer.learnin_rate=1"])
    with pytest.raises(UserError, match=r"stage\.trainer\.learnin_rate: not an argument of trl.SFTConfig"):
        config.validate(cfg)


def test_user_config_dir_is_searched(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\nrun_name: mine\nseed: 11\n")
    cfg = config.compose(["experiment=mine"], extra_config_dir=str(tmp_path))
    assert (cfg.run_name, cfg.run_dir, cfg.seed) == ("mine", "runs/mine", 11)


def test_config_dir_is_inside_the_package_and_is_the_top_level_one():
    import rlft

    assert config.config_dir().parent.resolve() == __import__("pathlib").Path(rlft.__file__).parent.resolve()
    assert (config.config_dir() / "train.yaml").is_file()
    yaml.safe_load((config.config_dir() / "train.yaml").read_text())


PAPER = [name for name in config.group_options("experiment")  # the cells (paper_math and paper_if are their pipelines)
         if name.startswith("paper_") and not config.compose([f"experiment={name}"]).get("pipeline")]


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_train_float32_master_weights(name):
    """Every weight a paper recipe trains in full is float32 (bf16 comes from autocast); only models
    that run forward alone (reference, evaluation) may be bf16, and only where the GPU has it."""
    cfg = config.compose([f"experiment={name}"])
    config.validate(cfg)
    trained = config.trained_group(cfg)
    if trained:
        assert cfg[trained].dtype == "float32", (name, trained)
    assert cfg.model.frozen_dtype == "float32"  # no GPU here: bf16 only where torch.cuda.is_bf16_supported()


@pytest.mark.parametrize("overrides,key", [(["stage=sft", "model.dtype=bfloat16"], "model.dtype"),
                                           (["stage=dpo", "model.dtype=float16"], "model.dtype"),
                                           (["stage=rm", "reward_model.dtype=bfloat16"], "reward_model.dtype")])
def test_half_precision_weights_under_the_optimizer_are_refused(overrides, key):
    with pytest.raises(UserError, match=rf"^{key}=\w+: stage=\w+ would have the optimizer update"):
        config.validate(config.compose(overrides))
    config.validate(config.compose([*overrides, "peft=lora"]))  # an adapter is float32 whatever its base
    config.validate(config.compose(["stage=bon", "model.dtype=bfloat16"]))  # nothing trained


@pytest.mark.parametrize("overrides,message", [
    (["seed=-1"], "seed=-1: a seed is an integer from 0 to 4294967295"),
    (["seed=4294967296"], "seed=4294967296: a seed"),  # numpy's range ends at 2**32 - 1
    (["stage=bon", "seed=-3"], "seed=-3: a seed"),  # no trainer: set_seed would still get it
    (["stage=rloo", "stage.trainer.seed=-2"], "stage.trainer.seed=-2: a seed"),  # set apart: named as itself
    (["max_steps=0"], "max_steps=0: set a number of optimizer steps >= 1, or -1"),
    (["stage=dpo", "max_steps=-4"], "max_steps=-4: set a number"),
    (["stage=rm", "stage.trainer.max_steps=0"], "stage.trainer.max_steps=0: set a number"),
    (["stage=bon", "temperature=0"], "temperature=0 with n=16: stage=bon samples n answers per prompt at "
                                     "`temperature`; all n=16 samples per prompt would be the same greedy answer"),
    (["stage=bon", "temperature=-0.5", "n=1"], "temperature=-0.5 with n=1: "),
    (["stage=winrate", "select=reward", "temperature=0"], "temperature=0 with n=16: stage=winrate samples n answers"),
    (["stage=winrate", "decoding.do_sample=true", "decoding.temperature=0"],
     "decoding.temperature=0 with decoding.do_sample=true: sampling needs a temperature > 0"),
    (["experiment=paper_math_sft", "data.evaluate.decoding.temperature=0"],
     "data.evaluate.decoding.temperature=0 with data.evaluate.decoding.do_sample=true: sampling needs"),
    (["data=countdown", "+data.evaluate.decoding.top_k=20"], "data.evaluate.decoding: unknown top_k; expected null"),
])
def test_seed_max_steps_and_sampling_temperature_are_checked_before_any_work(overrides, message):
    with pytest.raises(UserError) as e:
        config.validate(config.compose(overrides))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("overrides", [["max_steps=-1"], ["max_steps=1"], ["seed=0"], ["seed=4294967295"],
                                       ["stage=bon", "temperature=0.7", "n=4"],
                                       ["stage=winrate", "decoding.temperature=0"],  # greedy decoding: unused
                                       ["stage=winrate", "temperature=0"]])  # no best-of-n pick: nothing sampled n times
def test_the_edges_that_mean_something_still_validate(overrides):
    config.validate(config.compose(overrides))


def test_paper_recipes_find_earlier_runs_under_runs_dir():
    """`make RUNS=elsewhere`: every run dir a recipe writes or reads (init_from, reward.path) moves."""
    import subprocess
    import sys

    for name in PAPER:
        cfg = config.compose([f"experiment={name}", "runs_dir=/elsewhere"])
        local = [cfg.run_dir, cfg.init_from, cfg.reward.get("path")]
        for path in (p for p in local if p and "paper_" in p):
            assert path.startswith("/elsewhere/paper_"), (name, path)
    make = subprocess.run(["make", "-n", "paper-math", "paper-if", "RUNS=/elsewhere", "BIN=.venv/bin"],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout
    plans = [subprocess.run([sys.executable, "-m", "rlft", "pipeline", "--dry-run", f"experiment={name}",
                             "runs_dir=/elsewhere"], capture_output=True, text=True, check=True).stdout
             for name in ("paper_math", "paper_if")]  # what make's `rlft pipeline` lines run
    dry = make + "".join(plans)
    assert "runs_dir=/elsewhere" in make and "runs_dir=/elsewhere" in dry and "/elsewhere/paper_if_report" in dry
    assert " runs/" not in dry and "=runs/" not in dry


def test_paper_cells_follow_the_authors_settings():
    """The rows and settings the review of the authors' code found missing or off."""
    def c(name):
        return config.compose([f"experiment={name}"])

    lora = c("paper_if_sft_lora")
    assert (lora.stage.name, lora.peft.name, lora.stage.trainer.num_train_epochs) == ("sft", "lora", 3)
    assert {k: lora.peft.config[k] for k in ("r", "lora_alpha", "lora_dropout")} == {"r": 8, "lora_alpha": 32,
                                                                                      "lora_dropout": 0.05}
    assert sorted(lora.peft.config.target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert c("paper_math_sft_lora").peft.name == "lora"
    for name in ("paper_math_sft", "paper_math_sft_lora"):  # the authors' warm-start set: both splits
        assert c(name).data.sft_dataset.split == "train+test", name
    assert c("paper_math_sft_synthetic").data.sft_dataset._target_ == "rlft.data.countdown_sft_dataset"
    for name in PAPER:  # the authors' chain: IF DPO and RLOO start from (and refer to) the merged LoRA SFT model
        if name.startswith(("paper_if_dpo", "paper_if_rloo")):
            assert c(name).init_from == "runs/paper_if_sft_lora/model", name
    assert c("paper_if_dpo_lora").stage.trainer.num_train_epochs == 3
    for name in ("paper_if_rloo_distilbert_lora", "paper_if_rloo_siamese_distilbert_lora"):
        assert c(name).stage.trainer.num_train_epochs == 2
    deberta = c("paper_if_rm_deberta")
    assert (deberta.stage.name, deberta.stage.train, deberta.reward_model.path) == (
        "rm", False, "OpenAssistant/reward-model-deberta-v3-large")
    assert deberta.data.preference_heldout.split == "test_prefs"


@pytest.mark.slow
def test_the_paper_sft_step_fits_one_24gb_gpu():
    """A step of 16 x 1024 tokens at once (the paper's batch, which the recipe had) holds ~55 GiB of
    tensors; the recipe's 4 x accumulation 4 with activations recomputed ~15 GiB (scripts/memory_plan.py
    traces it at the real shapes, ~35 s a cell: slow tier, with every other cell below)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("memory_plan", REPO / "scripts" / "memory_plan.py")
    plan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plan)
    cfg = config.compose(["experiment=paper_if_sft"])
    assert cfg.stage.trainer.per_device_train_batch_size * cfg.stage.trainer.gradient_accumulation_steps == 16
    peak, what = plan.step_peak_gib(cfg)
    assert peak <= plan.BUDGET_GIB, (peak, what)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PAPER if config.compose([f"experiment={n}"]).stage.name != "bon"])
def test_every_paper_cell_fits_one_24gb_gpu(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location("memory_plan", REPO / "scripts" / "memory_plan.py")
    plan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plan)
    peak, what = plan.step_peak_gib(config.compose([f"experiment={name}"]))
    assert peak <= plan.BUDGET_GIB, (peak, what)


# ---------------------------------------------------------------- the batch on any number of processes

TINY_SFT = ["stage=sft", "model=tiny", "data=countdown_tiny", "data.sft_dataset.n=16", "max_steps=1",
            "stage.trainer.per_device_train_batch_size=1", "stage.trainer.gradient_accumulation_steps=8",
            "stage.trainer.warmup_steps=0", "data.evaluate=null", "report_to=[]"]


@pytest.mark.smoke
@pytest.mark.parametrize("world,per_process", [(1, 8), (2, 4), (3, None)])
def test_accumulation_is_the_single_process_recipes_divided_by_the_world_size(tmp_path, run_cli, monkeypatch,
                                                                              world, per_process):
    """stage.trainer.gradient_accumulation_steps=8 is the single-process recipe's: with 2 processes
    each accumulates 4 (2 x 1 x 4 = the same 8 sequences a step); 3 do not divide 8, refused in one
    line naming both keys and an equal split, before the run dir exists. (The world size is the
    test's; the run itself is one process, which trains what each rank would.)"""

    monkeypatch.setattr(config, "world_size", lambda: world)
    run_dir = tmp_path / "sft"
    code, out, err = run_cli("train", *TINY_SFT, f"run_dir={run_dir}")
    if per_process is None:
        assert code == 2 and not run_dir.exists()
        line = err.strip().splitlines()[-1]
        assert "stage.trainer.gradient_accumulation_steps=8 with 3 processes" in line
        assert "per_device_train_batch_size 1 x accumulation 8 = 8 a step" in line
        assert "8 sequences a step cannot be split evenly over 3 processes" in line
        return
    assert code == 0, err
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["stage"]["trainer"]
    assert saved["gradient_accumulation_steps"] == per_process  # what TRL ran
    assert json.loads((run_dir / "env.json").read_text())["world_size"] == world
    assert ("rlft: 2 processes: stage.trainer.gradient_accumulation_steps 8 -> 4 per process" in out) == (world == 2)
    card = (run_dir / "model" / "README.md").read_text()
    assert f"batch: 1 per device x {per_process} accumulation x 1 process = {per_process} per optimizer step" in card


@pytest.mark.parametrize("world,overrides,expected", [
    (8, ["stage=sft"], "set stage.trainer.per_device_train_batch_size=2 stage.trainer.gradient_accumulation_steps=8 "
                       "(the same 16 a step)"),  # SFT's 16 x 1 on 8 GPUs
    (8, ["stage=rm"], "set stage.trainer.per_device_train_batch_size=2 +stage.trainer.gradient_accumulation_steps=8"),
    (8, ["experiment=paper_math_sft"], "per_device_train_batch_size=2 stage.trainer.gradient_accumulation_steps=8"),
    (4, ["stage=sft", "stage.trainer.per_device_train_batch_size=3", "stage.trainer.gradient_accumulation_steps=2"],
     "6 sequences a step cannot be split evenly over 4 processes"),
])
def test_an_accumulation_the_world_size_does_not_divide_names_an_equal_split(monkeypatch, world, overrides, expected):
    """The line names both keys and a split with the same batch a step (the preset's key spelling:
    stage=rm leaves the accumulation to TRL's default, so it needs +)."""
    monkeypatch.setattr(config, "world_size", lambda: world)
    cfg = config.compose(overrides)
    with pytest.raises(UserError, match="rlft keeps the single-process batch") as e:
        config.per_process_accumulation(cfg)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_the_paper_recipes_batches_split_over_two_and_eight_processes_where_they_divide(monkeypatch):
    """DPO (2 x 8) and RLOO (4 x 8) keep their per-device batch on 2 and 8 processes; an evaluation
    stage and stage=rm stage.train=false train nothing and are never refused."""
    for world in (2, 8):
        monkeypatch.setattr(config, "world_size", lambda: world)
        assert config.per_process_accumulation(config.compose(["experiment=paper_if_dpo"])) == (8 // world, world)
        assert config.per_process_accumulation(config.compose(["experiment=paper_math_rloo"])) == (8 // world, world)
        config.per_process_accumulation(config.compose(["stage=bon"]))
        config.per_process_accumulation(config.compose(["stage=rm", "stage.train=false"]))


@pytest.mark.smoke
def test_one_process_with_several_gpus_visible_is_refused_before_any_work(tmp_path, run_cli, monkeypatch, tiny_base):
    """No launcher (world size 1) and 4 GPUs visible: the Trainer would use nn.DataParallel (4x the
    batch; TRL's RLOOTrainer refuses it). One line names both ways out, for `rlft train` and
    `rlft pipeline`; nothing is written. Under a launcher (world size 4) and for stages that train
    nothing, it passes."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for stage in ("sft", "rloo"):
        run_dir = tmp_path / stage
        code, _, err = run_cli("train", f"stage={stage}", f"run_dir={run_dir}")
        assert code == 2 and not run_dir.exists(), err
        line = err.strip().splitlines()[-1]
        assert f"stage={stage}: 4 GPUs are visible to one process and no launcher started it" in line
        assert "accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes 4 -m rlft train" in line
        assert "CUDA_VISIBLE_DEVICES=0" in line
    code, _, err = run_cli("pipeline", "experiment=tiny_math", f"runs_dir={tmp_path / 'runs'}",
                           f"run_dir={tmp_path / 'pipe'}")
    assert code == 2 and not (tmp_path / "pipe").exists(), err
    assert '--launcher "accelerate launch' in err and "--num_processes 4 -m" in err
    code, out, _ = run_cli("pipeline", "experiment=tiny_math", f"run_dir={tmp_path / 'pipe'}", "--dry-run")
    assert code == 0 and "rlft train" in out  # a dry run prints the plan

    config.validate(config.compose(["stage=bon", f"init_from={tiny_base}"]))  # samples on cuda:0: nothing multiplies
    config.validate(config.compose(["stage=rm", "stage.train=false"]))
    monkeypatch.setattr(config, "world_size", lambda: 4)  # accelerate launch --num_processes 4
    config.validate(config.compose(["stage=dpo", f"init_from={tiny_base}"]))


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "rloo"])
def test_ddp_does_not_search_for_unused_parameters(stage):
    """Every parameter a stage trains gets a gradient each step, so HF's DDP default
    (find_unused_parameters=True: an extra autograd traversal per step) is switched off in the
    TRL config itself (issue 21 item 12); the 2-rank tests in test_multiprocess.py train with it."""
    from transformers import TrainingArguments

    cfg = config.compose([f"stage={stage}", "data=ifcheck" if stage in ("rm", "dpo") else "data=countdown"])
    args = config.build(cfg.stage.trainer, output_dir="/tmp/unused", report_to=[], use_cpu=True, bf16=False)
    assert isinstance(args, TrainingArguments) and args.ddp_find_unused_parameters is False


@pytest.mark.parametrize("cell,says", [
    ("paper_math_sft_lora", "settings inferred"), ("paper_if_rloo_deberta_lora", "settings inferred"),
    ("paper_if_rloo_distilbert", "settings inferred"), ("paper_if_rloo_siamese_distilbert", "settings inferred"),
    ("paper_math_sft_synthetic", "in place of the paper's GPT-4o data"), ("paper_math_rloo", "extension"),
])
def test_paper_cells_that_are_not_the_authors_say_so_in_the_report(cell, says):
    """The report names a run by its label: a cell without the authors' script, or with other data
    than theirs, must not read as the paper's row (issue 21 item 11)."""
    cfg = config.compose([f"experiment={cell}"])
    assert cfg.label.startswith(cell + " (") and says in cfg.label
    if cell.startswith("paper_if_rloo_") and not cell.endswith("_lora"):  # its LoRA twin has the authors' script
        assert config.compose([f"experiment={cell}_lora"]).label is None
