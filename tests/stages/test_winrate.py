"""Win-rates against a reference model through the real CLI entry: judges, decoding, the paper's protocols."""

import json

import pytest
from conftest import write_jsonl


@pytest.fixture
def judge_endpoint(monkeypatch):
    """A real OpenAI-compatible reward endpoint on 127.0.0.1: reward = length of the response."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    monkeypatch.setenv("no_proxy", "127.0.0.1")
    seen = []

    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            content = f"reward:{len(body['messages'][-1]['content'])}"
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()
    server.server_close()


@pytest.mark.smoke
def test_winrate_best_of_n_picked_by_a_reward_model(tmp_path, run_cli, tiny_base):
    from rlft.config import build, compose

    rm_dir = build(compose(["reward_model=tiny"]).reward_model.build)
    code, _, err = run_cli("train", "stage=winrate", "model=tiny", "data=ifcheck", f"init_from={tiny_base}",
                           f"reference={tiny_base}", "select=reward", "reward=reward_model", f"reward.path={rm_dir}", "n=3",
                           "num_prompts=3", "data.evaluate.max_new_tokens=8", f"run_dir={tmp_path / 'if'}")
    assert code == 0, err
    held = json.loads((tmp_path / "if" / "results.json").read_text())["heldout"]
    assert held["best_of_3_vs_reference"]["win_rate"]["n"] == 3


def test_winrate_needs_heldout_prompts_and_a_reference(tmp_path, run_cli, tiny_base):
    code, _, err = run_cli("train", "stage=winrate", "data=smoltalk", f"init_from={tiny_base}", f"run_dir={tmp_path}/b")
    assert code == 2 and "data=smoltalk has no heldout" in err
    code, _, err = run_cli("train", "stage=winrate", "data=ifcheck", f"init_from={tiny_base}", f"run_dir={tmp_path}/c")
    assert code == 2 and "set reference=MODEL_DIR" in err
    code, _, err = run_cli("train", "stage=winrate", "data=countdown", f"init_from={tiny_base}",
                           f"reference={tiny_base}", f"run_dir={tmp_path}/d")
    assert code == 2 and "use stage=bon" in err


@pytest.mark.smoke
def test_winrate_with_an_endpoint_judge(tmp_path, run_cli, tiny_base, countdown_sft, judge_endpoint):
    url, seen = judge_endpoint
    run_dir = tmp_path / "winrate"
    code, out, err = run_cli("train", "stage=winrate", "model=tiny", "data=ifcheck", f"init_from={countdown_sft}",
                             f"reference={tiny_base}", "judge=endpoint", f"judge.base_url={url}", "judge.cache=null", "num_prompts=6",
                             "data.evaluate.max_new_tokens=12", f"run_dir={run_dir}")
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())
    held = results["heldout"]
    assert len(seen) == 12 and seen[0]["model"] == "nvidia/llama-3.1-nemotron-70b-reward"
    assert seen[0]["messages"][0]["role"] == "user" and seen[0]["messages"][-1]["role"] == "assistant"
    for sample in held["samples"]:  # the judge's scores are the endpoint's: response lengths
        assert sample["score"] == len(sample["response"]) and sample["reference_score"] == len(sample["reference"])
    vs = held["vs_reference"]
    assert vs["wins"] + vs["ties"] + vs["losses"] == 6 and results["judge"] == "endpoint"
    rate = vs["win_rate"]  # the printed table carries the win-rate the judge's scores give
    assert rate["value"] == (vs["wins"] + vs["ties"] / 2) / 6
    assert (f"| heldout | vs_reference.win_rate | {rate['value']:.3f} | "
            f"[{rate['ci95'][0]:.3f}, {rate['ci95'][1]:.3f}] | 6 |") in out


@pytest.mark.smoke
def test_winrate_with_the_rule_judge_against_itself_is_all_ties(tmp_path, run_cli, tiny_base):
    code, _, err = run_cli("train", "stage=winrate", "model=tiny", "data=ifcheck", f"init_from={tiny_base}",
                           f"reference={tiny_base}", "num_prompts=4", "data.evaluate.max_new_tokens=8",
                           f"run_dir={tmp_path / 'self'}")
    assert code == 0, err
    vs = json.loads((tmp_path / "self" / "results.json").read_text())["heldout"]["vs_reference"]
    assert (vs["ties"], vs["win_rate"]["value"]) == (4, 0.5)


def test_winrate_endpoint_judge_unreachable_is_one_line(tmp_path, run_cli, tiny_base):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run_cli("train", "stage=winrate", "model=tiny", "data=ifcheck", f"init_from={tiny_base}",
                           f"reference={tiny_base}", "judge=endpoint", f"judge.base_url=http://127.0.0.1:{port}/v1",
                           "judge.scorer.max_retries=0", "num_prompts=2", "data.evaluate.max_new_tokens=4",
                           f"run_dir={tmp_path / 'down'}")
    assert code == 2 and f"judge endpoint http://127.0.0.1:{port}/v1 unreachable" in err
    assert not (tmp_path / "down" / "DONE").exists()


# --------------------------------------------------------------------------- the two win-rate protocols


HANDOUT = ("paper_if_winrate", "Qwen/Qwen2.5-0.5B-Instruct",
           {"_target_": "rlft.data.ultrafeedback_heldout_prompts", "path": "HuggingFaceH4/ultrafeedback_binarized",
            "split": "test_gen", "n": 400},
           {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0}, 256)
AUTHORS = ("paper_if_winrate_authors", "Qwen/Qwen2.5-0.5B",
           {"_target_": "rlft.data.smoltalk_heldout_prompts", "path": "HuggingFaceTB/smol-smoltalk", "split": "test",
            "n": 200, "seed": 1000003},
           {"do_sample": True, "temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1}, 512)


@pytest.mark.parametrize("experiment,reference,heldout,decoding,max_new_tokens", [HANDOUT, AUTHORS],
                         ids=["handout", "authors"])
def test_the_two_if_win_rate_protocols_compose_and_validate(experiment, reference, heldout, decoding, max_new_tokens):
    from omegaconf import OmegaConf

    from rlft.config import compose, validate

    cfg = compose([f"experiment={experiment}", "init_from=runs/paper_if_dpo/model", "judge.base_url=http://h:1/v1",
                   "run_name=paper_if_dpo_winrate", "run_dir=runs/paper_if_dpo_winrate"])  # as make paper-if runs it
    validate(cfg)
    c = OmegaConf.to_container(cfg, resolve=True)
    assert (c["stage"]["name"], c["model"]["path"], c["judge"]["name"]) == ("winrate", "Qwen/Qwen2.5-0.5B", "endpoint")
    assert c["judge"]["model"] == "nvidia/llama-3.1-nemotron-70b-reward"
    assert (c["reference"], c["data"]["heldout"], c["decoding"]) == (reference, heldout, decoding)
    assert c["data"]["evaluate"] is None and c["stage"]["max_new_tokens"] == max_new_tokens  # the length winrate uses
    assert c["data"]["system_prompt"] == "You are a helpful assistant."


def test_the_authors_protocol_draws_200_smoltalk_test_prompts_from_a_local_file(tmp_path):
    from rlft.config import build, compose

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
             "source": "smol-magpie-ultra"} for i in range(300)]
    path = write_jsonl(tmp_path / "test.jsonl", rows)
    cfg = compose(["experiment=paper_if_winrate_authors", f"data.heldout.path={path}"])
    prompts = build(cfg.data.heldout)
    assert len(prompts) == 200 and prompts == build(cfg.data.heldout, seed=1000003)  # the same on every run
    assert [p["prompt"] for p in prompts[:5]] != ["q0", "q1", "q2", "q3", "q4"]
    assert build(cfg.data.heldout, n=50) == prompts[:50]  # num_prompts=50: a subset of the 200
    # data=smoltalk itself still has no held-out set: SFT evaluates nothing, stage=winrate asks for one
    assert compose(["data=smoltalk"]).data.heldout is None


@pytest.fixture
def generate_calls(monkeypatch):
    """Every model.generate call's keyword arguments (the real generate still runs)."""
    import transformers

    calls, real = [], transformers.GenerationMixin.generate

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(transformers.GenerationMixin, "generate", spy)
    return calls


KNOBS = ("do_sample", "temperature", "top_p", "repetition_penalty", "max_new_tokens")


def test_winrate_decoding_reaches_generate_for_both_models_and_results_record_the_protocol(tmp_path, run_cli,
                                                                                           tiny_base, generate_calls):
    common = ["stage=winrate", "model=tiny", "data=ifcheck", f"init_from={tiny_base}", f"reference={tiny_base}",
              "num_prompts=3", "data.evaluate.max_new_tokens=6"]
    code, _, err = run_cli("train", *common, "decoding.do_sample=true", "decoding.temperature=0.7", "decoding.top_p=0.9",
                           "decoding.repetition_penalty=1.3", "seed=5", f"run_dir={tmp_path / 's'}")
    assert code == 0, err
    assert [tuple(c[k] for k in KNOBS) for c in generate_calls] == [(True, 0.7, 0.9, 1.3, 6)] * 2  # policy, reference
    held = json.loads((tmp_path / "s" / "results.json").read_text())["heldout"]
    assert held["decoding"] == {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.3,
                                "max_new_tokens": 6, "seed": 5}
    assert held["prompts"] == {"loader": "rlft.tasks.ifcheck.heldout_prompts", "seed": 1000003, "num_prompts": 3}
    assert held["reference"] == tiny_base
    # the same model as its own reference, each sampled from the seed: the same answers, all ties
    assert all(s["response"] == s["reference"] for s in held["samples"]) and held["vs_reference"]["ties"] == 3

    generate_calls.clear()  # the default: greedy, with no repetition penalty a generation_config could add
    code, _, err = run_cli("train", *common, f"run_dir={tmp_path / 'g'}")
    assert code == 0, err
    assert [tuple(c[k] for k in KNOBS) for c in generate_calls] == [(False, None, None, 1.0, 6)] * 2
    held = json.loads((tmp_path / "g" / "results.json").read_text())["heldout"]
    assert held["decoding"] == {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0,
                                "max_new_tokens": 6, "seed": None}


def test_generate_ignores_a_models_generation_config_and_applies_the_penalty(tiny_base):
    from rlft import evaluate, generation, models

    model, tokenizer = models.load_causal_lm(tiny_base, "float32"), models.load_tokenizer(tiny_base, "chatml")
    prompts = evaluate.chat_prompts(tokenizer, ["Write the word cat.", "Count to three.", "Say hi"])
    plain = generation.generate(model, tokenizer, prompts, 12)
    model.generation_config.repetition_penalty = 5.0  # as Qwen2.5-Instruct's generation_config.json adds 1.1
    assert generation.generate(model, tokenizer, prompts, 12) == plain
    assert generation.generate(model, tokenizer, prompts, 12, repetition_penalty=5.0) != plain
