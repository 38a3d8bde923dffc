"""Every shipped config composes and validates exactly as `rlft train` does, offline."""

import pytest
import yaml
from conftest import REPO

from rlft import config
from rlft.errors import UserError

GROUPS = ["stage", "model", "data", "peft", "rm", "reward_model", "reward", "judge", "experiment"]
MANDATORY = {"reward=rm": ["reward.path=/tmp/rm"], "reward=countdown_rm": ["reward.path=/tmp/rm"],  # `???` keys
             "judge=rm": ["judge.path=/tmp/rm"]}


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


PAPER = [name for name in config.group_options("experiment") if name.startswith("paper_")]


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_train_float32_master_weights(name):
    """Every weight a paper recipe trains in full is float32 (bf16 comes from autocast); only models
    that run forward alone (reference, evaluation) may be bf16, and only where the GPU has it."""
    cfg = config.compose([f"experiment={name}"])
    config.validate(cfg)
    trained = config.TRAINED.get(cfg.stage.name)
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


def test_paper_recipes_find_earlier_runs_under_runs_dir():
    """`make RUNS=elsewhere`: every run dir a recipe writes or reads (init_from, reward.path) moves."""
    import subprocess

    for name in PAPER:
        cfg = config.compose([f"experiment={name}", "runs_dir=/elsewhere"])
        local = [cfg.run_dir, cfg.init_from, cfg.reward.get("path")]
        for path in (p for p in local if p and "paper_" in p):
            assert path.startswith("/elsewhere/paper_"), (name, path)
    dry = subprocess.run(["make", "-n", "paper-math", "paper-if", "RUNS=/elsewhere", "BIN=.venv/bin"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "runs_dir=/elsewhere" in dry and "/elsewhere/paper_if_report" in dry
    assert " runs/" not in dry and "=runs/" not in dry
