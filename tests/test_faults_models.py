"""Faults users meet around model dirs and the build cache: a damaged build
cache, a model dir of the wrong kind, a read-only cache dir, a hub id without a network.

Two cases run the real console script on the tiny model (a damaged cache trains on the rebuilt
tokenizer; a reward-model dir as the SFT policy stops with one line); the rest call rlft.models
in this process. Every cache here is private (tmp_path): the session's shared cache is only read.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import error_line

from rlft import generation, models
from rlft.errors import UserError

RLFT = str(Path(sys.executable).parent / "rlft")
SMALL = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
SMALL_RM = {k: v for k, v in SMALL.items() if k != "num_key_value_heads"}
FAST_SFT = ["max_steps=1", "data=countdown_tiny", "data.sft_dataset.n=16", "data.heldout.n=2",
            "data.evaluate.max_new_tokens=4", "stage.trainer.per_device_train_batch_size=8",
            "stage.trainer.logging_steps=1", "stage.trainer.warmup_steps=0", "report_to=[]"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict:
    """Small builds made once for this module (read only: tests copy them before damaging)."""
    cache = tmp_path_factory.mktemp("pristine-cache")
    return {"lm": Path(models.build_tiny_causal_lm(str(cache), **SMALL)),
            "rm": Path(models.build_tiny_reward_model(str(cache), **SMALL_RM)),
            "rm_deberta": Path(models.build_tiny_reward_model(str(cache), arch="deberta", **SMALL_RM))}


def _copy_cache(build: Path, tmp_path: Path) -> Path:
    """A private cache dir holding a copy of `build` under its own name; returns the copy."""
    dest = tmp_path / "cache" / build.name
    shutil.copytree(build, dest)
    return dest


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def _stderr_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("rlft: ")]


# --------------------------------------------------------------------------- 1. a damaged build cache

def test_a_build_carries_a_manifest_of_every_file(pristine, capsys):
    build = pristine["lm"]
    manifest = json.loads((build / models.MANIFEST).read_text())["files"]
    assert set(manifest) == {p.name for p in build.iterdir()} - {models.MANIFEST}
    assert manifest["model.safetensors"]["size"] == (build / "model.safetensors").stat().st_size
    mtime = (build / "model.safetensors").stat().st_mtime_ns
    assert models.build_tiny_causal_lm(str(build.parent), **SMALL) == str(build)  # verified, not rebuilt
    assert (build / "model.safetensors").stat().st_mtime_ns == mtime
    assert not _stderr_lines(capsys.readouterr().err)


def _delete(path: Path) -> None:
    path.unlink()


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = [  # (id, file, how, what the stderr line says)
    ("tokenizer.json deleted", "tokenizer.json", _delete, "tokenizer.json missing"),
    ("weights truncated", "model.safetensors", _truncate, "model.safetensors is"),
    ("weights changed, same size", "model.safetensors", _flip_a_byte, "model.safetensors content changed"),
    ("manifest deleted", models.MANIFEST, _delete, "no manifest.json"),
]


@pytest.mark.parametrize("name,how,says", [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_a_damaged_build_is_rebuilt_with_one_line(name, how, says, pristine, tmp_path, capsys):
    build = _copy_cache(pristine["lm"], tmp_path)
    how(build / name)
    assert models.build_tiny_causal_lm(str(build.parent), **SMALL) == str(build)
    lines = _stderr_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(build) in lines[0] and says in lines[0] and "rebuilding" in lines[0], lines
    assert _same_files(build, pristine["lm"])  # deterministic: exactly the build that was there
    assert len(models.load_tokenizer(str(build))) == len(models.load_tokenizer(str(pristine["lm"])))
    assert not [p for p in build.parent.iterdir() if p.name.startswith(build.name + ".") and p.is_dir()]


def test_an_interrupted_build_leaves_nothing_in_place(tmp_path):
    def dies_halfway(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        models._cached_build(str(tmp_path), "x", {"a": 1}, dies_halfway)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no build dir, no temporary dir left
    done = Path(models._cached_build(str(tmp_path), "x", {"a": 1}, lambda tmp: (tmp / "config.json").write_text("{}")))
    assert models._verify_build(done) is None


def test_a_model_dir_without_its_tokenizer_is_one_line(pristine, tmp_path):
    """Outside the cache (e.g. runs/sft/model with tokenizer.json gone): refused, not trained on."""
    model_dir = tmp_path / "model"
    shutil.copytree(pristine["lm"], model_dir)
    (model_dir / "tokenizer.json").unlink()
    with pytest.raises(UserError,
                       match=rf"model '{model_dir}': its tokenizer is incomplete \(3 tokens.*tokenizer\.json"):
        models.load_tokenizer(str(model_dir))


def test_a_model_dir_with_truncated_weights_is_one_line(pristine, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(pristine["lm"], model_dir)
    _truncate(model_dir / "model.safetensors")
    with pytest.raises(UserError, match=rf"model '{model_dir}': cannot load \("):
        models.load_causal_lm(str(model_dir))


def test_damaged_cache_rebuilds_and_the_run_trains_on_the_real_tokenizer(tmp_path, tiny_base):
    """From the outside: the preset's cached build loses tokenizer.json. Before, transformers
    loaded a 3-token tokenizer (every text the same ids) and the run finished with DONE."""
    build = _copy_cache(Path(tiny_base), tmp_path)
    (build / "tokenizer.json").unlink()
    run_dir = tmp_path / "run"
    out = subprocess.run([RLFT, "train", "stage=sft", "model=tiny", f"cache_dir={build.parent}",
                          f"run_dir={run_dir}", *FAST_SFT], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = _stderr_lines(out.stderr)
    assert len(lines) == 1 and str(build) in lines[0] and "tokenizer.json missing" in lines[0], lines
    assert _same_files(build, Path(tiny_base))
    trained = json.loads((run_dir / "model" / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(trained) == len(json.loads((Path(tiny_base) / "tokenizer.json").read_text())["model"]["vocab"])
    assert (run_dir / "DONE").exists()


# --------------------------------------------------------------------------- 2. a model dir of the wrong kind

def test_reward_model_dir_as_the_sft_policy_is_one_line_exit_2(pristine, tmp_path, tiny_base):
    """From the outside: before, the reward model's body got a random LM head and SFT ran to DONE."""
    run_dir = tmp_path / "run"
    out = subprocess.run([RLFT, "train", "stage=sft", f"init_from={pristine['rm']}", f"run_dir={run_dir}",
                          *FAST_SFT], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    line = error_line(out.stderr)
    assert f"model '{pristine['rm']}' is a reward model (Qwen2ForSequenceClassification)" in line
    assert "expected a causal LM" in line and "LM head would start from random weights" in line
    assert not (run_dir / "DONE").exists() and not (run_dir / "model").exists()


def test_causal_lm_dir_as_a_reward_model_is_one_line(pristine):
    """stage=rm init_from=, reward=reward_model reward.path=, judge=reward_model judge.path= all load through here."""
    from rlft.reward_models import load_scorer

    for load in (lambda p: models.load_reward_model(p), lambda p: load_scorer(p, "chat")):
        with pytest.raises(UserError, match=rf"model '{pristine['lm']}' is a causal LM \(Qwen2ForCausalLM\), "
                                            r"expected a reward model .*score head would start from random"):
            load(str(pristine["lm"]))


def test_deberta_reward_model_as_the_policy_is_refused_before_loading(pristine):
    with pytest.raises(UserError, match=r"is a reward model \(DebertaV2ForSequenceClassification\), expected a causal"):
        models.load_causal_lm(str(pristine["rm_deberta"]))
    with pytest.raises(UserError, match=r"is a reward model .*expected a causal LM"):
        generation.VLLMPolicy(str(pristine["rm"]), "float32", [0], 0)  # before vllm is even imported


def test_every_dir_rlft_writes_still_loads_as_its_kind(pristine, tmp_path):
    """The builds, a policy saved after LoRA merged in, a reward model saved after LoRA merged in
    (stage=rm: bt, Siamese and regression save the same class), and a causal-LM LoRA adapter dir."""
    from peft import LoraConfig, get_peft_model

    assert type(models.load_causal_lm(str(pristine["lm"]))).__name__ == "Qwen2ForCausalLM"
    for rm in ("rm", "rm_deberta"):
        assert type(models.load_reward_model(str(pristine[rm]))).__name__.endswith("ForSequenceClassification")

    lm = get_peft_model(models.load_causal_lm(str(pristine["lm"])),
                        LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"]))
    lm.save_pretrained(tmp_path / "lm_adapter")
    lm.merge_and_unload().save_pretrained(tmp_path / "lm_merged")
    rm = get_peft_model(models.load_reward_model(str(pristine["rm"])),
                        LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["q_proj"]))
    rm.save_pretrained(tmp_path / "rm_adapter")
    rm.merge_and_unload().save_pretrained(tmp_path / "rm_merged")

    assert models.load_causal_lm(str(tmp_path / "lm_merged")) is not None
    assert models.load_causal_lm(str(tmp_path / "lm_adapter")) is not None
    assert models.load_reward_model(str(tmp_path / "rm_merged")) is not None
    with pytest.raises(UserError, match=r"rm_adapter' is a LoRA adapter for a reward model \(task_type SEQ_CLS\), "
                                        r"expected a causal LM"):
        models.load_causal_lm(str(tmp_path / "rm_adapter"))
    with pytest.raises(UserError, match=r"lm_adapter' is a LoRA adapter for a causal LM \(task_type CAUSAL_LM\), "
                                        r"expected a reward model"):
        models.load_reward_model(str(tmp_path / "lm_adapter"))


def test_a_base_backbone_loads_as_a_reward_model_with_a_new_head(tmp_path):
    """The paper's distilbert-base-uncased is a DistilBertForMaskedLM: stage=rm trains a new score
    head on it, so that must load; a body weight missing from it must not."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=32)
    DistilBertForMaskedLM(config).save_pretrained(tmp_path / "backbone")
    assert type(models.load_reward_model(str(tmp_path / "backbone"))).__name__ == "DistilBertForSequenceClassification"
    with pytest.raises(UserError, match=r"backbone': 4 weights missing from the checkpoint \(classifier.bias, "):
        models.load_reward_model(str(tmp_path / "backbone"), scoring=True)  # a judge or reward: the head is random

    shutil.copytree(tmp_path / "backbone", tmp_path / "holed")
    weights = load_file(str(tmp_path / "holed" / "model.safetensors"))
    hole = next(k for k in weights if "transformer.layer.0.ffn" in k)
    save_file({k: v for k, v in weights.items() if k != hole}, str(tmp_path / "holed" / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(UserError, match=rf"holed': 1 weight missing from the checkpoint \({hole}\)"):
        models.load_reward_model(str(tmp_path / "holed"))


def test_weights_missing_from_a_causal_lm_are_refused(pristine, tmp_path):
    """The backstop after loading: whatever the config says, a weight the checkpoint lacks would
    start random (here a config without `architectures` and a checkpoint without its LM head)."""
    model_dir = tmp_path / "headless"
    shutil.copytree(pristine["rm"], model_dir)  # untied embeddings: the LM head has no other source
    config = json.loads((model_dir / "config.json").read_text())
    config.pop("architectures")
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"headless': 1 weight missing from the checkpoint \(lm_head.weight\), "
                                        r"expected a complete causal LM"):
        models.load_causal_lm(str(model_dir))


def test_a_config_of_another_architecture_over_the_weights_is_refused(pristine, tmp_path):
    """A Llama config.json over Qwen2 weights loads (same names, same shapes) but has no q/k/v
    biases: transformers drops them as unexpected and the model would train without them."""
    model_dir = tmp_path / "llama_over_qwen2"
    shutil.copytree(pristine["lm"], model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"llama_over_qwen2': 3 weights of the checkpoint have no place in "
                                        r"LlamaForCausalLM \(model.layers.0.self_attn.k_proj.bias, "
                                        r"model.layers.0.self_attn.q_proj.bias, model.layers.0.self_attn.v_proj.bias\): "
                                        r"its config.json \(model_type 'llama'\) does not describe these weights"):
        models.load_causal_lm(str(model_dir))


def test_weights_of_other_sizes_than_config_json_are_one_line(pristine, tmp_path):
    model_dir = tmp_path / "resized"
    shutil.copytree(pristine["lm"], model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["intermediate_size"] *= 2
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"resized': its weights' sizes do not match its config.json"):
        models.load_causal_lm(str(model_dir))


def test_a_chat_template_of_its_own_is_required_when_model_chat_template_is_null(pristine, tmp_path):
    model_dir = tmp_path / "no_template"
    shutil.copytree(pristine["lm"], model_dir)
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    assert models.load_tokenizer(str(model_dir), None).chat_template is None  # a reward model's: no chats
    with pytest.raises(UserError, match=r"model.chat_template=null keeps the model's own chat template, and "
                                        r"'.*no_template' has none; use model.chat_template=chatml"):
        models.load_tokenizer(str(model_dir), None, chat=True)
    assert models.load_tokenizer(str(model_dir), "chatml", chat=True).chat_template


def test_init_from_a_lora_adapter_points_at_the_merged_model(tmp_path):
    """A LoRA run writes adapter/ and the merged model/; transformers would load the adapter frozen
    on its base and training would fail deep in autograd."""
    from omegaconf import OmegaConf

    (tmp_path / "run" / "adapter").mkdir(parents=True)
    (tmp_path / "run" / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "run" / "model").mkdir()
    (tmp_path / "run" / "model" / "config.json").write_text("{}")
    with pytest.raises(UserError, match=rf"adapter' is a LoRA adapter; rlft starts from a whole model dir \(its run's "
                                        rf"merged model: init_from={tmp_path}/run/model\)"):
        models.resolve_model_path(OmegaConf.create({}), str(tmp_path / "run" / "adapter"))


def test_a_classifier_with_two_outputs_is_not_a_reward_model(pristine, tmp_path):
    model_dir = tmp_path / "classifier"
    shutil.copytree(pristine["rm"], model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["id2label"] = {"0": "bad", "1": "good"}
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"is a classifier with 2 outputs \(Qwen2ForSequenceClassification\)"):
        models.load_reward_model(str(model_dir))


# --------------------------------------------------------------------------- 3. a read-only cache dir

@pytest.fixture
def read_only(tmp_path):
    """ro(src) bind-mounts `src` read-only on a fresh dir and returns it. chmod is no test here:
    root (these tests run as root) writes through any mode bits. A refused mount fails the test."""
    mounts = []

    def ro(src: Path) -> Path:
        dest = tmp_path / f"ro-{uuid.uuid4().hex[:6]}"
        dest.mkdir()
        done = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(dest)], capture_output=True, text=True)
        assert done.returncode == 0, f"a read-only bind mount is not permitted here: {done.stderr.strip()}"
        mounts.append(dest)
        try:
            (dest / ".probe").write_text("x")
        except OSError:
            return dest
        raise AssertionError(f"mount --bind -o ro left {dest} writable")

    yield ro
    for dest in reversed(mounts):
        subprocess.run(["umount", str(dest)], check=False)


def test_read_only_cache_dir_is_one_line_naming_it(tmp_path, read_only, run_cli):
    (tmp_path / "empty").mkdir()
    cache = read_only(tmp_path / "empty")
    with pytest.raises(UserError, match=rf"cache_dir '{cache}': cannot build tiny-qwen2-\w+ there "
                                        r"\(Read-only file system\); set cache_dir=DIR \(or RLFT_CACHE_DIR\)"):
        models.build_tiny_causal_lm(str(cache), **SMALL)
    # ... and through the CLI (in this process): exit 2, that one line, no traceback
    code, _, err = run_cli("train", "stage=sft", f"cache_dir={cache}", f"run_dir={tmp_path / 'run'}", *FAST_SFT)
    assert code == 2 and f"cache_dir '{cache}'" in error_line(err) and "Read-only file system" in err
    assert not (tmp_path / "run" / "DONE").exists()


def test_read_only_cache_with_an_intact_build_is_used_and_a_damaged_one_named(pristine, tmp_path, read_only, capsys):
    build = _copy_cache(pristine["lm"], tmp_path)
    cache = read_only(build.parent)
    assert models.build_tiny_causal_lm(str(cache), **SMALL) == str(cache / build.name)  # intact: no write needed
    (build / "tokenizer.json").unlink()  # through the writable source of the mount
    with pytest.raises(UserError, match=rf"cache_dir '{cache}': {build.name} is damaged \(tokenizer.json missing\) "
                                        r"and cannot be rebuilt \(Read-only file system\)"):
        models.build_tiny_causal_lm(str(cache), **SMALL)


# --------------------------------------------------------------------------- 4. a hub id without a network

def test_hub_error_without_offline_mode_says_how_to_skip_the_wait(monkeypatch):
    """The real error path (HF_HUB_OFFLINE=1 stays set in the environment, so nothing is
    requested and nothing waits); only rlft's own reading of it is told offline mode is off."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    monkeypatch.setattr(models, "_hub_offline", lambda: False)
    with pytest.raises(UserError, match=r"model 'no/such-model' not found: .*HF_HUB_OFFLINE=1 skips the hub's retries"):
        models.load_causal_lm("no/such-model")
    monkeypatch.setattr(models, "_hub_offline", lambda: True)
    with pytest.raises(UserError) as offline:
        models.load_causal_lm("no/such-model")
    assert "the hub is offline (HF_HUB_OFFLINE=1)" in str(offline.value) and "skips" not in str(offline.value)
