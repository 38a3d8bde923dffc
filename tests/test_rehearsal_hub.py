"""The rehearsal hub (src/rlft/rehearsal): the paper's hub ids load through HF_ENDPOINT, and the
judge speaks Nemotron's protocol with the faults rlft's client must get through.

The hub is built once for the module (2-layer Qwen at the real width and vocabulary). The hub-id
checks run in a subprocess (rlft.rehearsal.check): huggingface_hub and datasets read HF_ENDPOINT
and the offline switches at import time, and this session has imported them with
HF_HUB_OFFLINE=1 (conftest), so a fresh process with the rehearsal env is the user's path.
"""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from rlft.rehearsal import hub
from rlft.rehearsal.__main__ import hub_env
from rlft.rehearsal.server import JUDGE_429_EVERY, JUDGE_500_AT, judge_reward, serve


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal-hub")
    hub.build_hub(root, qwen_layers=2, log=lambda *_: None)
    return root


@pytest.fixture(scope="module")
def probe(hub_root, tmp_path_factory):
    """What a fresh process sees loading every repo by hub id (fresh HF_HOME, offline switches 0)."""
    with serve(hub_root) as server:
        env = os.environ | hub_env(hub_root, server.url) | {"HF_HOME": str(tmp_path_factory.mktemp("hf-home"))}
        done = subprocess.run([sys.executable, "-m", "rlft.rehearsal.check"], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout)
        result["_log"] = list(server.hub.log)
    return result


def test_build_is_idempotent(hub_root):
    before = {p: p.stat().st_mtime_ns for p in (hub_root / "manifests").rglob("*.json")}
    logged = []
    again = hub.build_hub(hub_root, qwen_layers=2, log=logged.append)
    assert logged == [] and len(again) == 8
    assert {p: p.stat().st_mtime_ns for p in (hub_root / "manifests").rglob("*.json")} == before


def test_requests_go_to_the_local_endpoint(probe):
    assert probe["endpoint"].startswith("http://127.0.0.1:")
    assert probe["hub_offline"] is False and probe["datasets_offline"] is False
    paths = [path for _, path, _ in probe["_log"]]
    assert "/datasets/HuggingFaceH4/ultrafeedback_binarized/resolve/main/README.md" in paths
    assert any(p.startswith("/Qwen/Qwen2.5-0.5B/resolve/") and p.endswith("/model.safetensors") for p in paths)
    assert not [entry for entry in probe["_log"] if entry[2] >= 500]


def test_qwen_has_the_published_shape_and_tokenizer(probe):
    base, instruct = probe[hub.QWEN_BASE], probe[hub.QWEN_INSTRUCT]
    for r in (base, instruct):
        assert (r["model_type"], r["hidden_size"], r["heads"], r["kv_heads"], r["intermediate_size"]) == (
            "qwen2", 896, 14, 2, 4864)
        assert (r["vocab_size"], r["tied"], r["rope_theta"], r["layers"]) == (151936, True, 1e6, 2)
        assert r["tokenizer"] == "Qwen2Tokenizer" and r["len_tokenizer"] == 151665  # 151,643 BPE + 22 added
        assert r["ids"] == {"Hello": [9707], " world": [1879], "Hello world": [9707, 1879]}
        assert r["special_ids"] == [151643, 151644, 151645] and r["pad_token"] == "<|endoftext|>"
    assert base["chat"] == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert instruct["chat"].startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert (base["eos_token_id"], base["eos_token"]) == (151643, "<|endoftext|>")
    assert (instruct["eos_token_id"], instruct["eos_token"]) == (151645, "<|im_end|>")


def test_qwen_loads_and_runs_a_forward(probe):
    r = probe[hub.QWEN_BASE]
    assert r["model_class"] == "Qwen2ForCausalLM" and r["dtype"] == "torch.bfloat16"
    assert r["logits_shape"] == [1, 2, 151936] and r["finite"]
    per_layer = 14_912_384  # attention (with q/k/v biases) + MLP + 2 norms at the real width
    assert 151936 * 896 + 24 * per_layer + 896 == 494_032_768  # Qwen2.5-0.5B's published count
    assert r["params"] == 151936 * 896 + 2 * per_layer + 896
    assert r["generation_eos"] == 151643


def test_reward_backbones_load_with_one_output(probe):
    deberta, distil = probe[hub.DEBERTA_RM], probe[hub.DISTILBERT]
    assert deberta["model_class"] == "DebertaV2ForSequenceClassification" and deberta["logits_shape"] == [1, 1]
    assert (deberta["hidden_size"], deberta["heads"], deberta["vocab_size"]) == (1024, 16, 128100)
    assert deberta["tokens"] == ["[CLS]", "▁Hello", "▁world", "[SEP]", "▁How", "▁are", "▁you", "?", "[SEP]"]
    assert deberta["ids"][0] == 1 and deberta["ids"][3] == 2  # deberta-v3's [CLS] and [SEP]
    assert distil["model_class"] == "DistilBertForSequenceClassification" and distil["logits_shape"] == [1, 1]
    assert distil["vocab_size"] == 30522
    # bert-base-uncased's real ids: [CLS] hello world [SEP] how are you ? [SEP]
    assert distil["ids"] == [101, 7592, 2088, 102, 2129, 2024, 2017, 1029, 102]


CHAT = "List({'content': Value('string'), 'role': Value('string')})"


def test_datasets_have_the_hub_schemas_and_splits(probe):
    smol = probe[hub.SMOLTALK]
    assert set(smol) == {"train", "test"}
    assert smol["train"]["features"] == {"messages": CHAT, "source": "Value('string')"}
    uf = probe[hub.ULTRAFEEDBACK]
    assert set(uf) == {"train_prefs", "test_prefs", "train_gen", "test_gen", "train_sft", "test_sft"}
    assert uf["test_gen"]["rows"] == 400
    assert uf["train_prefs"]["features"] == {
        "prompt": "Value('string')", "prompt_id": "Value('string')", "chosen": CHAT, "rejected": CHAT,
        "messages": CHAT, "score_chosen": "Value('float64')", "score_rejected": "Value('float64')"}
    warm = probe[hub.WARMSTART]
    assert warm["train"]["features"] == {"query": "Value('string')", "completion": "Value('string')"}
    # paper_math_sft's data.sft_dataset.split=train+test (the authors') reads both splits
    assert (warm["train"]["rows"], warm["test"]["rows"], warm["train+test"]["rows"]) == (1000, 100, 1100)
    assert probe[hub.COUNTDOWN_TASKS]["train"] == {
        "rows": 3000, "features": {"target": "Value('int64')", "nums": "List(Value('int64'))"}}


def _split_file(root, repo_id, split):
    return str(hub.repo_dir(root, "dataset", repo_id) / "data" / f"{split}-00000-of-00001.parquet")


def test_rlft_loaders_accept_the_rows_and_drop_the_malformed(hub_root):
    from rlft import data
    from rlft.tasks import countdown

    sft = data.first_turn_sft_dataset(_split_file(hub_root, hub.SMOLTALK, "train"), system_prompt="S")
    assert sum(sft.dropped.values()) == 20 and set(sft.dropped) == {
        "no user->assistant start", "empty turn"}  # assistant-first and no-answer rows; empty answers
    assert any(r["messages"][0]["content"].startswith("You're an AI assistant for text re-writing") for r in sft)
    pairs = data.ultrafeedback_preference_dataset(_split_file(hub_root, hub.ULTRAFEEDBACK, "train_prefs"))
    assert len(pairs) == 1000 and all(r["score_chosen"] > r["score_rejected"] for r in pairs)
    heldout = data.countdown_hub_problems(_split_file(hub_root, hub.COUNTDOWN_TASKS, "train"), n=200, seed=1000003)
    warm = data.query_completion_sft_dataset(_split_file(hub_root, hub.WARMSTART, "train"), heldout=heldout)
    assert warm.dropped == {"held-out problem": 8} and len(warm) == 992
    row = warm[0]["messages"]
    stated = countdown.parse_problem(row[0]["content"])
    assert countdown.score(row[1]["content"], stated["nums"], stated["target"], rule="tinyzero") == 1.0


def _post(url, body):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_judge_answers_reward_and_injects_500_and_429(hub_root):
    body = {"model": "nvidia/llama-3.1-nemotron-70b-reward",
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    with serve(hub_root) as server:
        replies = [_post(server.url, body) for _ in range(2 * JUDGE_429_EVERY)]
    codes = [status for status, _, _ in replies]
    assert codes[JUDGE_500_AT - 1] == 500 and codes.count(500) == 1
    assert [i + 1 for i, c in enumerate(codes) if c == 429] == [JUDGE_429_EVERY, 2 * JUDGE_429_EVERY]
    assert replies[JUDGE_429_EVERY - 1][1]["Retry-After"] == "0.1"
    status, _, ok = replies[0]
    assert status == 200 and ok["choices"][0]["message"] == {
        "role": "assistant", "content": f"reward:{judge_reward('Hi', 'Hello!')}"}
    assert all(r[2] == ok | {"id": r[2]["id"]} for r in replies if r[0] == 200)  # deterministic


def test_rlft_judge_client_gets_through(hub_root):
    from rlft.judge import endpoint_scores

    prompts = [[{"role": "system", "content": "S"}, {"role": "user", "content": f"q{i}"}] for i in range(20)]
    responses = [f"answer {i}" for i in range(20)]
    with serve(hub_root) as server:
        scores = endpoint_scores(prompts, responses, server.url + "/v1", "nvidia/llama-3.1-nemotron-70b-reward",
                                 concurrency=4, backoff=0.01)
        codes = [status for _, path, status in server.hub.log if path == "/v1/chat/completions"]
    assert scores == [judge_reward(f"q{i}", f"answer {i}") for i in range(20)]
    assert codes.count(500) == 1 and codes.count(429) >= 2 and codes.count(200) == 20


def test_serve_and_env_commands(hub_root, tmp_path):
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, "-m", "rlft.rehearsal", "serve", "--root", str(hub_root),
                             "--port-file", str(port_file)], stdout=subprocess.PIPE, text=True)
    try:
        env = subprocess.run([sys.executable, "-m", "rlft.rehearsal", "env", "--root", str(hub_root),
                              "--port-file", str(port_file)], capture_output=True, text=True, timeout=60)
        assert env.returncode == 0, env.stderr
        port = port_file.read_text().strip()
        assert f"export HF_ENDPOINT=http://127.0.0.1:{port}\n" in env.stdout
        assert f"export RLFT_JUDGE_URL=http://127.0.0.1:{port}/v1\n" in env.stdout
        assert "export HF_HUB_OFFLINE=0\n" in env.stdout and "export HF_DATASETS_OFFLINE=0\n" in env.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models/{hub.QWEN_BASE}", timeout=10) as r:
            info = json.loads(r.read())
        assert info["id"] == hub.QWEN_BASE and {"rfilename": "model.safetensors"} in info["siblings"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0 and not port_file.exists()


# make test's slice of `make rehearsal`: the paper's math recipes through hub ids at the real width and
# vocabulary (2 layers), shrunk only in steps, batch, lengths and counts, as the Makefile shrinks them.
SHRINK = ["max_steps=1", "report_to=[]", "stage.trainer.logging_steps=1", "stage.trainer.gradient_accumulation_steps=1",
          "data.evaluate.max_new_tokens=4", "data.heldout.n=2"]


def _rehearse(hub_root, *args):
    done = subprocess.run([sys.executable, "-m", "rlft.rehearsal", "run", "--root", str(hub_root), "--",
                           str(os.path.join(os.path.dirname(sys.executable), "rlft")), "train", *args],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.smoke
def test_paper_math_sft_then_rloo_step_through_hub_ids(hub_root, tmp_path):
    """experiment=paper_math_sft from Qwen/Qwen2.5-0.5B on the hub's warm-start set, then
    experiment=paper_math_rloo from it (its init_from found under runs_dir), each one optimizer step.
    The trained weights are float32 and nearly all moved by one step at lr 5e-6: with bf16 master
    weights most such updates round away (~8% of weights change)."""
    import torch
    from safetensors.torch import load_file

    runs = tmp_path / "runs"
    _rehearse(hub_root, "experiment=paper_math_sft", f"runs_dir={runs}", *SHRINK, "stage.trainer.max_length=256",
              "stage.trainer.per_device_train_batch_size=1", "stage.trainer.warmup_steps=0",
              "data.sft_dataset.max_rows=8")
    start = load_file(str(hub.repo_dir(hub_root, "model", hub.QWEN_BASE) / "model.safetensors"))
    sft = load_file(str(runs / "paper_math_sft" / "model" / "model.safetensors"))
    assert {t.dtype for t in sft.values()} == {torch.float32} and start.keys() <= sft.keys()
    moved = sum((sft[k] != start[k].float()).sum().item() for k in start) / sum(t.numel() for t in start.values())
    assert moved > 0.9, moved
    card = (runs / "paper_math_sft" / "model" / "README.md").read_text()
    assert "base model: `Qwen/Qwen2.5-0.5B`" in card
    results = json.loads((runs / "paper_math_sft" / "results.json").read_text())["heldout"]
    assert results["scorer"] == "tinyzero" and results["accuracy"]["n"] == 2

    _rehearse(hub_root, "experiment=paper_math_rloo", f"runs_dir={runs}", *SHRINK,
              "stage.trainer.per_device_train_batch_size=4", "stage.trainer.max_completion_length=4",
              "data.prompt_dataset.n=4")
    rloo = runs / "paper_math_rloo"
    assert (rloo / "DONE").is_file()
    steps = [json.loads(line) for line in (rloo / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "reward" in r] == [1]
    card = (rloo / "model" / "README.md").read_text()
    assert f"base model: `{runs}/paper_math_sft/model`" in card and "trainer: rlft.rloo.RLOOTrainer" in card
    assert "old_logps: sampler" in card
