"""Compose and validate the Hydra config, turning every user mistake into one clear line.

The config tree (configs/ at the repo top, shipped inside the package as rlft/configs) mirrors
src/rlft/: stage/ <-> stages/, data/ <-> data.py and tasks/, model/ <-> models.py. Users add their
own folder the Hydra way: `rlft train --config-dir DIR experiment=mine`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import re
import types
import typing
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import (ConfigCompositionException, InstantiationException, MissingConfigException,
                          OverrideParseException)
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from rlft.errors import UserError

CONFIG_NAME = "train"


def config_dir() -> Path:
    """The shipped config folder (a symlink to the top-level configs/ in a source checkout)."""
    return Path(__file__).resolve().parent / "configs"


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("rlft.bf16"):
        # bf16 only where the hardware has it: TRL configs default to bf16=True, which silently
        # autocasts on CPU. Resolved lazily, so composing a config never imports torch.
        OmegaConf.register_new_resolver("rlft.bf16", _bf16_available)
    if not OmegaConf.has_resolver("rlft.frozen_dtype"):
        # models that only run forward (a reference, an evaluated policy) may be bf16 where the GPU
        # computes in it; trained weights never are (validate: _check_master_weights)
        OmegaConf.register_new_resolver("rlft.frozen_dtype", lambda: "bfloat16" if _bf16_available() else "float32")
    if not OmegaConf.has_resolver("rlft.use_cpu"):
        # several ranks and no accelerator: only use_cpu joins them (gloo); without it accelerate
        # makes every rank a lone single-process run that trains the same rows and writes as rank 0
        OmegaConf.register_new_resolver("rlft.use_cpu", _ranks_without_accelerator)


def _bf16_available() -> bool:
    import torch  # only when a config resolves ${rlft.bf16:}: composing imports no torch (~1.5 s)

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def _ranks_without_accelerator() -> bool:
    import torch  # only when a config resolves ${rlft.use_cpu:}: composing imports no torch (~1.5 s)

    return world_size() > 1 and not torch.accelerator.is_available()


def world_size() -> int:
    """How many processes train together: WORLD_SIZE, which `accelerate launch` and torchrun set on
    every rank (all ranks of all nodes), before any process group exists; 1 in a plain run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def compose(overrides: list[str], extra_config_dir: str | None = None):
    """The resolved-on-access DictConfig for `rlft train <overrides>`."""
    _register_resolvers()
    overrides = list(overrides)
    if extra_config_dir:
        if not Path(extra_config_dir).is_dir():
            raise UserError(f"--config-dir: {extra_config_dir!r} is not a directory")
        overrides.append(f"hydra.searchpath=[file://{Path(extra_config_dir).resolve()}]")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="rlft"):
        try:
            return hydra_compose(CONFIG_NAME, overrides=overrides)
        except MissingConfigException as e:
            group, _, name = (e.missing_cfg_file or "").rpartition("/")
            if e.options is not None and group:
                raise UserError(f"unknown {group} {name!r}; choose one of: {', '.join(e.options)}") from None
            raise UserError(_first_line(e)) from None
        except OverrideParseException as e:
            raise UserError(f"cannot parse override: {_first_line(e)}") from None
        except ConfigCompositionException as e:
            first = _first_line(e)
            if first.startswith("Could not override '"):
                key = first.split("'")[1]
                raise UserError(_unknown_key_message(key, overrides)) from None
            raise UserError(first) from None


def _first_line(e: BaseException) -> str:
    """The first non-empty line of an exception or, failing that, of its cause."""
    for err in (e, e.__cause__):
        lines = [line for line in str(err or "").splitlines() if line.strip()]
        if lines:
            return lines[0]
    return type(e).__name__


def _unknown_key_message(key: str, overrides: list[str]) -> str:
    """"unknown config key 'max_step' (did you mean 'max_steps'?)" for a misspelled override.
    Candidates are the node's keys plus, for a `_target_` node, its callable's arguments."""
    parent, _, leaf = key.rpartition(".")
    known: list[str] = []
    try:
        base = hydra_compose(CONFIG_NAME, overrides=[o for o in overrides if not o.lstrip("+~").startswith(key + "=")])
        node = OmegaConf.select(base, parent) if parent else base
        known = [str(k) for k in node.keys()]
        if "_target_" in node:
            known += list(_signature_params(node._target_) or [])
    except Exception:  # a suggestion is a nicety: never let it hide the real error
        pass
    if leaf in known:  # a real argument of the target the preset does not list: only the + is missing
        return f"config key '{key}' is not in the preset; set it with +{key}=..."
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f" (did you mean '{(parent + '.' if parent else '') + close[0]}'?)" if close else ""
    return f"unknown config key '{key}'{hint}; to add a new key write +{key}=..."


def _signature_params(target: str) -> dict | None:
    """The parameters of a `_target_` callable, or None if it takes **kwargs or has no signature."""
    module_name, _, attr = target.rpartition(".")
    obj = getattr(importlib.import_module(module_name), attr)
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return dict(params)


def validate(cfg, processes: bool = True) -> None:
    """Bind every `_target_` node's arguments to its callable's signature, building nothing: a
    misspelled TRL knob or builder argument is reported by its full key before any work; and check
    the values rlft reads itself. Binding imports each target's module (trl, transformers: seconds),
    so the value checks come first, except a seed or max_steps that is no integer at all: binding
    names the TRL knob it fills (stage.trainer.max_steps: expected int), and only then rlft's check.
    `processes=False` leaves out the checks of this process's GPUs and world size (`rlft pipeline`
    checks each step before a launcher starts its processes)."""
    _check_run_knobs(cfg, integers_only=True)
    _check_sizes(cfg)
    if processes:
        _check_processes(cfg)
    _check_master_weights(cfg)
    _check_sampling(cfg)
    _check_secrets(cfg)

    def walk(node, path: str):
        if isinstance(node, DictConfig):
            target = node.get("_target_") if "_target_" in node else None
            if target is not None:
                _check_target(target, node, path)
            for key in node.keys():
                if isinstance(key, str) and key.startswith("_") and key.endswith("_"):
                    continue
                child = node._get_node(key)
                if child is not None and not child._is_interpolation():
                    walk(node[key], f"{path}.{key}" if path else str(key))
        elif isinstance(node, ListConfig):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(cfg, "")
    _check_run_knobs(cfg)
    _check_rloo_objective(cfg)


def _check_rloo_objective(cfg) -> None:
    """rlft's RLOO objective (mean | pass_at_k, its k or k schedule), checked before any model loads."""
    algorithm = cfg.get("stage", {}).get("algorithm")
    if not algorithm or not {"objective", "pass_k", "pass_k_schedule"} & set(algorithm.keys()):
        return
    from rlft.rloo.objective import pass_k_schedule_from  # pure Python: no trl before a config error

    schedule = algorithm.get("pass_k_schedule")
    pass_k_schedule_from(algorithm.get("objective", "mean"), algorithm.get("pass_k"),
                         OmegaConf.to_container(schedule) if schedule is not None else None,
                         cfg.stage.trainer.get("num_generations", 2))


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_PREFIXES = ("sk-", "sk_", "hf_", "nvapi-", "ghp_", "gsk_", "xai-", "AKIA")
_URL_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#@]*)@")


def _looks_like_a_key(value: str) -> bool:
    """Not a variable name (sk-..., nvapi-...), a known key prefix, or a long run of mixed-case
    letters and digits with no word break (random, as keys are; names are words)."""
    return (not _ENV_NAME.fullmatch(value) or value.startswith(_KEY_PREFIXES)
            or (len(value) >= 20 and "_" not in value
                and all(re.search(c, value) for c in ("[a-z]", "[A-Z]", "[0-9]"))))


def _check_secrets(cfg) -> None:
    """No key may reach config.yaml, env.json or a console line: a key given where the name of the
    environment variable holding it belongs (judge.scorer.api_key_env=sk-...) or a URL with
    credentials in it (https://user:key@host/v1) is refused before the run dir is touched, and the
    line names the key but never shows the value. Checked over every value of the config, resolved
    (a base_url may come from ${oc.env:...})."""

    def walk(node, path: str):
        for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
            where = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
            where = where.lstrip(".")
            try:
                value = node[key]
            except OmegaConfBaseException:  # ??? or a broken interpolation: other checks name it
                continue
            if isinstance(value, (DictConfig, ListConfig)):
                walk(value, where)
            elif isinstance(value, str):
                if str(key).endswith("_env") and _looks_like_a_key(value):
                    raise UserError(f"{where}: expects the name of an environment variable holding the API key "
                                    "(e.g. OPENAI_API_KEY), and the value given looks like a key itself (not shown, "
                                    f"not stored); export it, e.g. OPENAI_API_KEY=..., and set {where}=OPENAI_API_KEY")
                found = _URL_USERINFO.search(value)
                if found:
                    shown = value[:found.start(1)] + "***@" + value[found.end():].split("/", 1)[0]
                    raise UserError(f"{where}: the URL holds credentials ({shown}/...; not shown, not stored); "
                                    "give the URL without user:password@ and the key through the environment "
                                    "variable judge.scorer.api_key_env names")

    walk(cfg, "")


SEED_MAX = 2**32 - 1  # numpy's seed range, which transformers.set_seed feeds


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_run_knobs(cfg, integers_only: bool = False) -> None:
    """`seed` and `max_steps`, checked before any work: numpy rejects a seed outside 0..2**32-1 with a
    traceback deep in set_seed, and max_steps=0 is no step count at all (transformers' trainer takes
    it as a budget of 0 steps, still runs one optimizer step before checking it, and the run is
    DONE). Any negative max_steps means "train num_train_epochs" to transformers; only -1, the
    default, is accepted as that spelling, so a typo like max_steps=-10 does not train whole epochs.
    A key the user set apart from the top-level one (stage.trainer.seed=...) is named as itself."""
    trainer = cfg.stage.get("trainer") if isinstance(cfg.stage, DictConfig) else None

    def values(key: str):
        yield key, cfg.get(key)
        if isinstance(trainer, DictConfig) and key in trainer:
            node = trainer._get_node(key)
            if not (node._is_interpolation() and str(node._value()).strip() == "${" + key + "}"):
                yield f"stage.trainer.{key}", trainer[key]

    for name, seed in values("seed"):
        if integers_only and not _is_int(seed):
            continue
        if not _is_int(seed) or not 0 <= seed <= SEED_MAX:
            raise UserError(f"{name}={seed}: a seed is an integer from 0 to {SEED_MAX} (numpy's range); "
                            f"e.g. {name}=0")
    for name, steps in values("max_steps"):
        if integers_only and not _is_int(steps):
            continue
        if not _is_int(steps) or not (steps >= 1 or steps == -1):
            raise UserError(f"{name}={steps}: set a number of optimizer steps >= 1, or -1 to train "
                            "stage.trainer.num_train_epochs (the default)")
    # with max_steps=-1 the trainer runs num_train_epochs; at 0 (or below) that is no step at all, and
    # transformers' trainer still ends the run normally (DONE with the base model's weights)
    steps = trainer.get("max_steps", -1) if isinstance(trainer, DictConfig) else None
    epochs = trainer.get("num_train_epochs") if isinstance(trainer, DictConfig) else None
    if steps == -1 and isinstance(epochs, (int, float)) and not isinstance(epochs, bool) and not epochs > 0:
        raise UserError(f"stage.trainer.num_train_epochs={epochs}: with max_steps=-1 a run trains num_train_epochs; "
                        "set it > 0 (a fraction trains part of an epoch), or max_steps >= 1")


def _check_sizes(cfg) -> None:
    """Counts that must be at least 1, named by key before any work (at 0 torch's sampler or the
    data builders fail deep inside with a traceback): a training stage's batch size and
    accumulation, each data node's `n` (rows it generates or draws); and a `report_to` that names
    wandb when the package is not installed (transformers would fail after loading the model)."""
    trainer = cfg.stage.get("trainer") if isinstance(cfg.stage, DictConfig) else None
    if _trains(cfg) and isinstance(trainer, DictConfig):
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            value = trainer.get(key)
            if _is_int(value) and value < 1:
                raise UserError(f"stage.trainer.{key}={value}: must be an integer >= 1")
    data = cfg.get("data")
    for name in (data.keys() if isinstance(data, DictConfig) else []):
        node = data._get_node(name)
        if node is None or node._is_interpolation() or not isinstance(data[name], DictConfig):
            continue
        n = data[name].get("n") if "n" in data[name] else None
        if _is_int(n) and n < 1:
            raise UserError(f"data.{name}.n={n}: the number of rows data={data.get('name')} makes for it must be >= 1")
    report_to = cfg.get("report_to")
    if isinstance(report_to, (ListConfig, list)) and "wandb" in report_to \
            and importlib.util.find_spec("wandb") is None:
        raise UserError("report_to: wandb is not installed; pip install -e '.[wandb]' (and log in), or leave it out: "
                        "report_to=[tensorboard]")


def _check_sampling(cfg) -> None:
    """stage=bon draws its N samples per prompt at the top-level `temperature`, and so does
    stage=winrate's best-of-N pick (select=reward). At 0 every sample would be the one greedy answer,
    so best-of-N would be greedy accuracy N times over (greedy accuracy is reported already) and
    transformers refuses to sample at 0 anyway; a negative temperature is not a temperature.
    Likewise stage=winrate's sampled `decoding` (decoding.do_sample=true) needs decoding.temperature > 0."""
    evaluate = cfg.get("data", {}).get("evaluate")
    _check_decoding("data.evaluate.decoding", evaluate.get("decoding") if evaluate is not None else None)
    stage = cfg.stage.get("name")
    if stage == "sample":  # k samples per prompt, the pairs or the correct ones kept: greedy gives k copies
        t = cfg.get("temperature")
        if isinstance(t, (int, float)) and not isinstance(t, bool) and t <= 0:
            raise UserError(f"temperature={t} with k={cfg.get('k')}: stage=sample draws k samples per prompt at "
                            "`temperature`; at <= 0 they would be one greedy answer k times; set temperature > 0")
        return
    if stage not in ("bon", "winrate"):
        return
    n, temperature, num_prompts = cfg.get("n"), cfg.get("temperature"), cfg.get("num_prompts")
    if not (_is_int(n) and n >= 1) or not (num_prompts is None or _is_int(num_prompts) and num_prompts >= 1):
        raise UserError(f"n must be an integer >= 1 and num_prompts an integer >= 1 (or null); got n={n}, "
                        f"num_prompts={num_prompts}")
    samples_n = stage == "bon" or cfg.get("select") == "reward"
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):  # used or not: a typo
        raise UserError(f"temperature: expected a number, got {temperature!r}")
    if samples_n and temperature <= 0:
        why = (f"all n={n} samples per prompt would be the same greedy answer, so best-of-{n} would mean nothing"
               if n > 1 else "samples need a temperature > 0")
        raise UserError(f"temperature={temperature} with n={n}: stage={stage} samples n answers per prompt at "
                        f"`temperature`; {why} (greedy accuracy is reported already); set temperature > 0 "
                        "(the paper's 1.0)")
    _check_decoding("decoding", cfg.get("decoding"))


def _check_decoding(key: str, decoding) -> None:
    """A `decoding` node ({do_sample, temperature, top_p, repetition_penalty}; null: greedy)."""
    if decoding is None:
        return
    from rlft.evaluate import GREEDY

    if not isinstance(decoding, DictConfig) or set(decoding) - set(GREEDY):
        unknown = sorted(set(decoding) - set(GREEDY)) if isinstance(decoding, DictConfig) else [repr(decoding)]
        raise UserError(f"{key}: unknown {', '.join(unknown)}; expected null (greedy) or keys "
                        f"{', '.join(GREEDY)}")
    if decoding.get("do_sample") is True:
        t = decoding.get("temperature")
        if isinstance(t, (int, float)) and not isinstance(t, bool) and t <= 0:
            raise UserError(f"{key}.temperature={t} with {key}.do_sample=true: sampling needs a temperature "
                            f"> 0; for greedy answers set {key}.do_sample=false")


def trained_group(cfg) -> str | None:
    """The config group whose weights the stage trains (its yaml's `trains:`: model, reward_model),
    None for the stages that only evaluate."""
    return cfg.get("stage", {}).get("trains")


def _trains(cfg) -> bool:
    """Whether this run hands a model to a Trainer (stage=rm stage.train=false only evaluates)."""
    return trained_group(cfg) is not None and cfg.stage.get("train", True) is not False


def refuse_data_parallel(what: str, how: str) -> None:
    """Refuse a training run in ONE process while several GPUs are visible (no launcher: world size 1).

    transformers' Trainer then wraps the model in nn.DataParallel over every visible GPU, so each
    step trains n_gpu x the per-device batch at the paper's learning rate, and TRL's RLOOTrainer
    stops on DataParallel. The two ways out are the user's to pick, so rlft names both rather than
    choosing: one process per GPU under a launcher (all GPUs, the same effective batch: see
    `per_process_accumulation`) or one GPU (CUDA_VISIBLE_DEVICES=0). rlft does not pin to one GPU
    itself: CUDA_VISIBLE_DEVICES only acts if set before CUDA is first touched, and by the time a
    config is validated torch has counted the devices (the count is cached, and the Trainer reads
    n_gpu from it), so an in-process pin cannot be made reliable; and a box rented for n GPUs that
    silently trains on one wastes n - 1 of them. Stages that train nothing (bon, winrate, sample)
    are not refused: they run on this process's device (cuda:0) and no batch multiplies. `how`
    names the launch for the command at hand; {n} in it becomes the GPU count."""
    import torch  # validate imports torch already (the bf16 resolver); counting GPUs initialises no context

    gpus = torch.cuda.device_count()
    if world_size() == 1 and gpus > 1:
        raise UserError(f"{what}: {gpus} GPUs are visible to one process and no launcher started it, so the Trainer "
                        f"would wrap the model in nn.DataParallel ({gpus}x the batch; TRL's RLOOTrainer refuses it); "
                        f"run one process per GPU, {how.format(n=gpus)}, or train on one GPU with CUDA_VISIBLE_DEVICES=0")


LAUNCH = "accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes {n} -m rlft train ..."


def per_process_accumulation(cfg) -> tuple[int, int]:
    """(per-process gradient accumulation, world size) for a training run, so the batch per optimizer
    step stays the single-process recipe's on any number of processes and nodes.

    `stage.trainer.per_device_train_batch_size` x `stage.trainer.gradient_accumulation_steps` is the
    batch one process trains per optimizer step, and every preset and paper experiment states the
    paper's batch that way. Under a launcher with N processes (`world_size`), HF Trainer and TRL
    would train N x that, at the same learning rate; rlft divides the accumulation by N instead, so
    per_device x (accumulation / N) x N is the configured batch (TRL's RLOO then also samples the
    same number of prompts per generation). The per-device batch (what fits in memory) is left as
    configured. An accumulation N does not divide is refused with one line naming both keys and an
    equal split that works; it never silently changes the batch."""
    trainer = cfg.stage.get("trainer")
    n = world_size()
    if not _trains(cfg) or trainer is None:
        return 1, n
    accumulation = trainer.get("gradient_accumulation_steps", 1)
    per_device = trainer.get("per_device_train_batch_size", 8)
    if not (_is_int(accumulation) and _is_int(per_device)) or n == 1:
        return accumulation, n  # a mistyped knob: binding it to TRL's config names it
    if accumulation % n:
        batch = per_device * accumulation
        split = next((p for p in range(min(per_device, batch), 0, -1) if batch % p == 0 and (batch // p) % n == 0),
                     None)
        plus = "" if "gradient_accumulation_steps" in trainer else "+"  # stage=rm's preset leaves TRL's default 1
        fix = (f"set stage.trainer.per_device_train_batch_size={split} {plus}stage.trainer.gradient_accumulation_steps="
               f"{batch // split} (the same {batch} a step)" if split else
               f"{batch} sequences a step cannot be split evenly over {n} processes; use a process count that divides "
               f"{batch}, or set {plus}stage.trainer.gradient_accumulation_steps to a multiple of {n} (a larger batch)")
        raise UserError(f"stage.trainer.gradient_accumulation_steps={accumulation} with {n} processes: rlft keeps the "
                        f"single-process batch (per_device_train_batch_size {per_device} x accumulation {accumulation} "
                        f"= {batch} a step) by dividing the accumulation by the world size, and {n} does not divide "
                        f"{accumulation}; {fix}")
    return accumulation // n, n


def spread_batch(cfg) -> None:
    """Set stage.trainer.gradient_accumulation_steps to its per-process share (per_process_accumulation)
    before any TRL config is built from it (DeepSpeed's "auto" batch fields are filled from it when
    the TrainingArguments are made), and say so on one line when it changes. config.yaml then
    records what TRL ran; env.json the world size; the model card the whole batch."""
    accumulation, n = per_process_accumulation(cfg)
    if n == 1 or not _trains(cfg) or accumulation == cfg.stage.trainer.get("gradient_accumulation_steps", 1):
        return
    configured = cfg.stage.trainer.gradient_accumulation_steps
    with open_dict(cfg):
        cfg.stage.trainer.gradient_accumulation_steps = accumulation
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"rlft: {n} processes: stage.trainer.gradient_accumulation_steps {configured} -> {accumulation} per "
              f"process, so each optimizer step trains the configured {cfg.stage.trainer.per_device_train_batch_size} "
              f"x {configured} = {cfg.stage.trainer.per_device_train_batch_size * configured} sequences", flush=True)


def _check_processes(cfg) -> None:
    """A training run: no DataParallel (refuse_data_parallel) and an accumulation the world size
    divides (per_process_accumulation), both before the run dir is touched."""
    if not _trains(cfg):
        return
    refuse_data_parallel(f"stage={cfg.stage.name}", f"e.g. `{LAUNCH}` (make paper-*: ACCELERATE=\"accelerate launch "
                         "--config_file configs/accelerate/multi_gpu.yaml -m\")")
    per_process_accumulation(cfg)


def _check_master_weights(cfg) -> None:
    """Weights trained in full are float32: the optimizer updating bf16 weights directly rounds most
    updates away at the paper's learning rates (one step at lr 5e-6 changes ~8% of N(0, 0.02) bf16
    weights, at 5e-7 ~1%). bf16 speed comes from autocast (stage.trainer.bf16). A LoRA adapter is
    kept in float32 by peft whatever its frozen base is, so peft runs may load a half-precision base."""
    group = trained_group(cfg)
    if group is None or cfg.peft.get("config") is not None:
        return
    dtype = cfg[group].get("dtype", "float32")
    if dtype != "float32":
        raise UserError(f"{group}.dtype={dtype}: stage={cfg.stage.name} would have the optimizer update {dtype} "
                        f"weights directly, rounding most updates away; set {group}.dtype=float32 (stage.trainer.bf16 "
                        "autocasts the math) or train an adapter (peft=lora)")


def _check_target(target: str, node, path: str) -> None:
    try:
        params = _signature_params(target)
    except (ImportError, AttributeError) as e:
        raise UserError(f"{path}._target_: cannot import {target!r} ({e})") from None
    if params is None:
        return
    for key in node.keys():
        if isinstance(key, str) and key.startswith("_") and key.endswith("_"):
            continue
        if key not in params:
            close = difflib.get_close_matches(str(key), list(params), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{path}.{key}: not an argument of {target}{hint}")
        _check_type(target, params[key], node, key, path)


_SCALARS = (bool, int, float, str)


def _scalar_types(annotation) -> set | None:
    """The scalar types an annotation admits (int | None -> {int}); None when it admits anything
    else too (lists, dicts, enums, Any), so only plain scalar knobs are type-checked."""
    if annotation in _SCALARS:
        return {annotation}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        out = set()
        for arg in typing.get_args(annotation):
            if arg is type(None):
                continue
            inner = _scalar_types(arg)
            if inner is None:
                return None
            out |= inner
        return out or None
    return None


def _literal_choices(annotation) -> tuple | None:
    """The values a Literal[...] annotation (or an Optional one) admits; None for any other."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        literals = [a for a in args if typing.get_origin(a) is typing.Literal]
        if literals and all(a is type(None) or a in literals for a in args):
            return sum((typing.get_args(a) for a in literals), ()) + ((None,) if type(None) in args else ())
    return None


def _check_type(target: str, param: inspect.Parameter, node, key: str, path: str) -> None:
    """A mistyped knob (max_steps=abc, learning_rate=fast) is named before any work."""
    annotation = param.annotation
    if isinstance(annotation, str):  # postponed annotations (dataclasses of `from __future__` modules)
        module_name, _, attr = target.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
            annotation = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj).get(key)
        except Exception:  # unresolvable hints: leave the check to the callable
            return
    choices = _literal_choices(annotation)
    expected = _scalar_types(annotation)
    if not expected and choices is None:
        return
    try:
        value = node[key]  # resolves ${...}: max_steps=abc reaches stage.trainer.max_steps this way
    except OmegaConfBaseException:
        return
    if choices is not None:
        if value not in choices:
            raise UserError(f"{path}.{key}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return
    ok = (value is None or (isinstance(value, bool) and bool in expected)
          or (isinstance(value, int) and not isinstance(value, bool) and (int in expected or float in expected))
          or (isinstance(value, float) and float in expected) or (isinstance(value, str) and str in expected))
    if not ok and isinstance(value, _SCALARS):
        names = " or ".join(sorted(t.__name__ for t in expected))
        raise UserError(f"{path}.{key}: expected {names}, got {value!r}")


def build(node, **kwargs):
    """hydra.utils.instantiate(node, _convert_="all"), letting a UserError raised inside a
    `_target_` (a bad data file, a missing model) reach the CLI as itself, not wrapped."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        target = str(node.get("_target_", ""))
        if isinstance(e.__cause__, ValueError) and target.endswith(("Config", "Arguments")):
            # TRL/transformers configs check their knobs together in __post_init__ (batch vs k, ...)
            where = f" (in {node._get_full_key(None)})" if hasattr(node, "_get_full_key") else ""
            raise UserError(f"{target}: {str(e.__cause__).splitlines()[0]}{where}") from None
        raise
