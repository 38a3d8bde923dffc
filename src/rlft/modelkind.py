"""What kind of model a dir holds, checked on every model rlft loads (policy, reference, reward
model, judge), so a dir of the wrong kind stops the run instead of training on random weights.

transformers loads any dir into whatever head it is asked for and starts the weights the
checkpoint lacks from random: a reward-model dir given as the policy gets a random LM head, a
causal-LM dir given as a reward model a random score head, and both runs finish with DONE.
rlft checks twice, through the loaders in rlft.models:

1. `check_dir`, before loading, from the dir's own description: config.json's `architectures`
   (what save_pretrained recorded) or, for a PEFT adapter dir, adapter_config.json's `task_type`
   and then its base model. Hub ids are checked the same way after loading (`check_loaded`),
   from the config the hub served.
2. `check_loaded`, after loading, from transformers' loading report (`output_loading_info=True`):
   weights the checkpoint lacks would start random.

Kinds: a causal LM (*ForCausalLM, *LMHeadModel, *ForConditionalGeneration: Qwen/Qwen2.5-0.5B,
every policy rlft saves, LoRA merged or not), a reward model (*ForSequenceClassification with one
output: every reward model rlft saves, Siamese included, and OpenAssistant's DeBERTa), a base
model (anything else: a backbone such as distilbert-base-uncased = DistilBertForMaskedLM, or a
config without `architectures`).

- A causal LM is expected: a causal LM or a CAUSAL_LM adapter loads; a reward model or a
  SEQ_CLS adapter is refused; anything loaded with a missing weight is refused.
- A reward model is expected: a reward model or a SEQ_CLS adapter loads; a causal LM or a
  CAUSAL_LM adapter is refused; a base model loads with a new score head (that is how stage=rm
  trains the paper's distilbert-base-uncased), but a weight missing from its body is refused,
  and so is the new head where the model only scores (`load_reward_model(..., scoring=True)`).
"""

from __future__ import annotations

import json
from pathlib import Path

from rlft.errors import UserError

CAUSAL_LM = "causal LM"
REWARD_MODEL = "reward model"
BASE = "base model"

_WHAT = {CAUSAL_LM: "a causal LM (a *ForCausalLM dir, e.g. runs/sft/model)",
         REWARD_MODEL: "a reward model (a *ForSequenceClassification dir with one output, e.g. runs/rm/model)"}
_RANDOM = {CAUSAL_LM: "its LM head would start from random weights",
           REWARD_MODEL: "its score head would start from random weights"}
_ADAPTER_TASK = {"CAUSAL_LM": CAUSAL_LM, "SEQ_CLS": REWARD_MODEL}


def kind_of(architectures) -> str:
    """The kind named by a config's `architectures` list (None or empty: a base model)."""
    names = list(architectures or [])
    if any(n.endswith("ForSequenceClassification") for n in names):
        return REWARD_MODEL
    if any(n.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for n in names):
        return CAUSAL_LM
    return BASE


def _refuse(path: str, what: str, expected: str, why: str | None = None) -> UserError:
    return UserError(f"model {path!r} is {what}, expected {_WHAT[expected]}: {why or _RANDOM[expected]}")


def _wrong_kind(config: dict, expected: str) -> tuple[str, str | None] | None:
    """(what a config is, why that fails) when config.json's contents are not what `expected`
    allows; None when they are."""
    archs = config.get("architectures") or []
    kind = kind_of(archs)
    if kind != expected and kind != BASE:
        return f"a {kind} ({', '.join(archs)})", None
    if expected == REWARD_MODEL and kind == REWARD_MODEL:
        labels = config.get("num_labels") or len(config.get("id2label") or {}) or 1
        if labels != 1:
            return f"a classifier with {labels} outputs ({', '.join(archs)})", "a reward is one score per sequence"
    return None


def check_config(path: str, config: dict, expected: str) -> None:
    """Refuse a config (config.json's contents) of the wrong kind for `expected`."""
    wrong = _wrong_kind(config, expected)
    if wrong:
        raise _refuse(path, wrong[0], expected, wrong[1])


def check_dir(path: str, expected: str) -> None:
    """Before loading: refuse a local model dir (or PEFT adapter dir) of the wrong kind. Hub ids
    and dirs holding neither config.json nor adapter_config.json are left to the loader."""
    folder = Path(path)
    if not folder.is_dir():
        return
    config, adapter = _read_json(folder / "config.json"), _read_json(folder / "adapter_config.json")
    if config is not None:
        check_config(path, config, expected)
    elif adapter is not None:
        task = adapter.get("task_type")
        kind = _ADAPTER_TASK.get(task)
        if kind is not None and kind != expected:
            raise _refuse(path, f"a LoRA adapter for a {kind} (task_type {task})", expected)
        base = adapter.get("base_model_name_or_path")
        base_config = _read_json(Path(base) / "config.json") if base and Path(base).is_dir() else None
        wrong = _wrong_kind(base_config, expected) if base_config is not None else None
        if wrong:
            raise _refuse(path, f"a LoRA adapter on {base!r}, {wrong[0]}", expected, wrong[1])


def check_loaded(path: str, model, info: dict, expected: str, new_head_ok: bool = False) -> None:
    """After loading: the kind the loaded config names (hub ids were not checked before), every
    weight the checkpoint lacked (it would start random), and every weight of the checkpoint the
    model has no place for (config.json describes another model than the weights: a Llama config
    over Qwen2 weights drops the q/k/v biases). With `new_head_ok` (a reward model about to be
    trained), a base model may lack its new head and carry an old one (weights outside
    `model.base_model_prefix`: a masked-LM head), never differ in a weight of its body."""
    check_config(path, {"architectures": getattr(model.config, "architectures", None),
                        "num_labels": getattr(model.config, "num_labels", 1)}, expected)
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    prefix = getattr(model, "base_model_prefix", "") or ""
    if new_head_ok and expected == REWARD_MODEL and kind_of(getattr(model.config, "architectures", None)) == BASE \
            and prefix:
        missing = [k for k in missing if k.startswith(prefix + ".")]  # a new score head is the point
        unexpected = [k for k in unexpected if k.startswith(prefix + ".")]  # and the old head goes
    if missing:
        raise UserError(f"model {path!r}: {_count(missing, 'weight')} missing from the checkpoint ({_some(missing)}), "
                        f"expected a complete {expected}: they would start from random weights")
    if unexpected:
        raise UserError(f"model {path!r}: {_count(unexpected, 'weight')} of the checkpoint {'has' if len(unexpected) == 1 else 'have'} "
                        f"no place in {type(model).__name__} ({_some(unexpected)}): its config.json "
                        f"(model_type {getattr(model.config, 'model_type', None)!r}) does not describe these weights, "
                        "and loading would drop them")


def _count(keys: list, what: str) -> str:
    return f"{len(keys)} {what}{'s' * (len(keys) != 1)}"


def _some(keys: list) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"model {str(path.parent)!r}: {path.name} cannot be read ({str(e).splitlines()[0]})") from None
    return data if isinstance(data, dict) else None
