"""The paper's Countdown evaluation: held-out problems drawn from Countdown-Tasks-3to4 (a local file
in its schema here), TinyZero's last-line scoring rule and 512 new tokens in every paper_math
config, and the rule named wherever Countdown scores are reported."""

import json

import pytest

from rlft import config, data
from rlft.errors import UserError
from rlft.tasks import countdown
from conftest import write_jsonl

PAPER_MATH = [name for name in config.group_options("experiment") if name.startswith("paper_math_")]


def tasks_rows(n: int, seed: int = 3) -> list[dict]:
    """Rows in Jiayi-Pan/Countdown-Tasks-3to4's schema: target (int), nums (list of int)."""
    return [{"target": p["target"], "nums": p["nums"]} for p in countdown.generate_problems(n, seed, min_num=1)]


@pytest.fixture
def tasks_file(tmp_path):
    return write_jsonl(tmp_path / "countdown_tasks.jsonl", tasks_rows(60))


# --------------------------------------------------------------------------- the loader

def test_draw_is_seeded_deterministic_and_not_the_first_rows(tasks_file):
    rows = tasks_rows(60)
    drawn = data.countdown_hub_problems(str(tasks_file), n=10, seed=7)
    assert drawn == data.countdown_hub_problems(str(tasks_file), n=10, seed=7)
    assert drawn != data.countdown_hub_problems(str(tasks_file), n=10, seed=8)
    assert len(drawn) == 10 and all(set(p) == {"nums", "target"} for p in drawn)
    index = [rows.index(p) for p in drawn]
    assert len(set(index)) == 10  # without replacement
    assert index == [20, 9, 25, 41, 3, 4, 52, 34, 6, 23]  # pinned: the held-out set must never drift
    assert drawn[:4] == data.countdown_hub_problems(str(tasks_file), n=4, seed=7)  # num_prompts=4: a prefix
    assert len(data.countdown_hub_problems(str(tasks_file), n=60, seed=7)) == 60  # every row, once


def test_parquet_in_the_hub_schema_loads_alike(tasks_file, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(tasks_rows(60)), path)
    assert data.countdown_hub_problems(str(path), n=10, seed=7) == data.countdown_hub_problems(
        str(tasks_file), n=10, seed=7)


@pytest.mark.parametrize("bad,message", [
    ({"nums": [1, 2, 3]}, "row 4: missing required field 'target'"),
    ({"target": 6}, "row 4: missing required field 'nums'"),
    ({"target": "6", "nums": [1, 2, 3]}, "row 4: 'target' must be an integer, got '6'"),
    ({"target": 6.5, "nums": [1, 2, 3]}, "row 4: 'target' must be an integer"),
    ({"target": True, "nums": [1, 2, 3]}, "row 4: 'target' must be an integer"),
    ({"target": 6, "nums": "1 2 3"}, "row 4: 'nums' must be a non-empty list of integers"),
    ({"target": 6, "nums": []}, "row 4: 'nums' must be a non-empty list of integers"),
    ({"target": 6, "nums": [1, "2", 3]}, "row 4: 'nums' must be a non-empty list of integers"),
])
def test_bad_rows_are_named_whatever_the_draw(tmp_path, bad, message):
    rows = tasks_rows(10)
    rows[4] = bad
    path = write_jsonl(tmp_path / "tasks.jsonl", rows)
    with pytest.raises(UserError, match=message) as err:
        data.countdown_hub_problems(str(path), n=1, seed=0)
    assert "tasks.jsonl" in str(err.value) and "\n" not in str(err.value)


def test_more_problems_than_rows_is_refused(tasks_file):
    with pytest.raises(UserError, match="cannot draw n=61 held-out problems from 60 rows"):
        data.countdown_hub_problems(str(tasks_file), n=61, seed=0)


# --------------------------------------------------------------------------- the paper_math configs

def compose(*overrides: str):
    cfg = config.compose([*overrides, "run_dir=/tmp/x"])
    config.validate(cfg)
    return cfg


@pytest.mark.parametrize("experiment", PAPER_MATH)
def test_paper_math_configs_use_the_authors_evaluation(experiment):
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose(f"experiment={experiment}"), resolve=True)
    assert cfg["data"]["scorer"] == "tinyzero"
    assert cfg["data"]["task"]["scorer"] == "tinyzero" and cfg["data"]["evaluate"]["task"]["scorer"] == "tinyzero"
    assert cfg["data"]["evaluate"]["max_new_tokens"] == 512
    assert cfg["data"]["heldout"] == {"_target_": "rlft.data.countdown_hub_problems",
                                      "path": "Jiayi-Pan/Countdown-Tasks-3to4", "split": "train", "n": 200,
                                      "seed": 1000003}
    assert cfg["reward"]["funcs"]["countdown"]["task"]["scorer"] == "tinyzero"  # RLOO's reward and select=reward
    training = cfg["data"].get("sft_dataset") if cfg["stage"]["name"] == "sft" else cfg["data"].get("prompt_dataset")
    if training:
        assert training["heldout"] == cfg["data"]["heldout"]  # excluded from training


def test_paper_math_covers_every_row_and_other_presets_keep_rlfts_rule():
    assert {"paper_math_sft", "paper_math_sft_synthetic", "paper_math_rloo", "paper_math_rloo_lora",
            "paper_math_bon"} <= set(PAPER_MATH)
    for override in ("data=countdown", "data=countdown_tiny", "data=countdown_warmstart", "experiment=tiny_math_rloo"):
        cfg = compose(override)
        assert cfg.data.scorer == "rlft" and cfg.data.task.scorer == "rlft"
        assert cfg.reward.funcs.countdown.task.scorer == "rlft"
        assert cfg.data.heldout._target_ == "rlft.tasks.countdown.generate_problems"  # offline by default
    # the hub source is a data/heldout option any Countdown preset can take
    cfg = compose("data=countdown_tiny", "data/heldout=countdown_tasks", "data.heldout.n=50")
    assert (cfg.data.heldout._target_, cfg.data.heldout.n) == ("rlft.data.countdown_hub_problems", 50)


def test_unknown_scorer_is_one_line_before_any_work():
    with pytest.raises(UserError, match="scorer: expected one of 'rlft', 'tinyzero', got 'last'"):
        compose("data.scorer=last")


def test_generated_training_problems_never_pose_a_hub_heldout_problem(tmp_path):
    from rlft.config import build

    # the held-out file holds exactly the problems the prompt set would otherwise draw first
    cfg = compose("experiment=paper_math_rloo", "data.prompt_dataset.n=40")
    first = countdown.generate_problems(40, cfg.seed + 1, **cfg.data.problems)
    path = write_jsonl(tmp_path / "tasks.jsonl", first)
    cfg = compose("experiment=paper_math_rloo", "data.prompt_dataset.n=40", f"data.heldout.path={path}",
                  "data.heldout.n=40")
    prompts = build(cfg.data.prompt_dataset)
    assert len(prompts) == 40
    held = {countdown.problem_key(p) for p in first}
    assert not held & {countdown.problem_key(r) for r in prompts}


def test_warmstart_rows_posing_a_hub_heldout_problem_are_dropped(tmp_path):
    from rlft.config import build

    problems = tasks_rows(30)
    hub = write_jsonl(tmp_path / "tasks.jsonl", problems)
    warm = write_jsonl(tmp_path / "warm.jsonl", [
        {"query": countdown.make_prompt(p["nums"], p["target"]), "completion": "<answer>1</answer>"} for p in problems])
    cfg = compose("experiment=paper_math_sft", f"data.sft_dataset.path={warm}", f"data.heldout.path={hub}",
                  "data.heldout.n=12")
    held = {countdown.problem_key(p) for p in build(cfg.data.heldout)}
    chats = build(cfg.data.sft_dataset)
    assert len(chats) == 18 and chats.dropped == {"held-out problem": 12}
    users = [countdown.parse_problem(m[-2]["content"]) for m in chats["messages"]]
    assert not held & {countdown.problem_key(u) for u in users}


# --------------------------------------------------------------------------- the rule in results

class Policy:
    """Stands in for a model (generation.generate calls generate_texts, as for vLLM): answers every
    prompt correctly, then ends with a newline, so rlft scores 1.0 and TinyZero's last line 0.0."""

    def __init__(self):
        self.max_new_tokens, self.decoding = [], []

    def generate_texts(self, prompts, max_new_tokens, do_sample, temperature, n, top_p=1.0, repetition_penalty=1.0):
        self.max_new_tokens.append(max_new_tokens)
        self.decoding.append((do_sample, temperature, top_p, repetition_penalty))
        out = []
        for prompt in prompts:
            p = countdown.parse_problem(prompt)
            out += [f"<think>easy</think>\n<answer>{countdown.solve(p['nums'], p['target'])}</answer>\nDone."] * n
        return out


class Tokenizer:
    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "\n".join(m["content"] for m in messages)


@pytest.mark.parametrize("scorer,accuracy", [("rlft", 1.0), ("tinyzero", 0.0)])
def test_heldout_and_best_of_n_results_name_their_rule(scorer, accuracy):
    from rlft import evaluate

    problems = countdown.generate_problems(6, seed=1)
    greedy = evaluate.heldout(Policy(), Tokenizer(), problems, countdown.Countdown("tinyzero", scorer))
    assert greedy["scorer"] == scorer and greedy["accuracy"]["value"] == accuracy
    sampled = evaluate.best_of_n(Policy(), Tokenizer(), problems, countdown.Countdown("tinyzero", scorer), None, n=4)
    assert sampled["scorer"] == scorer and sampled["best_of_4_accuracy"]["value"] == accuracy
    assert evaluate.heldout(Policy(), Tokenizer(), problems, countdown.Countdown())["scorer"] == "rlft"


def _paper_math_bon(tmp_path, monkeypatch, *overrides):
    """stage=bon under experiment=paper_math_bon on 5 hub problems, the Policy above as the model."""
    from rlft import models
    from rlft.stages import bon

    policy = Policy()
    monkeypatch.setattr(models, "resolve_model_path", lambda model_cfg, init_from=None: "policy")
    monkeypatch.setattr(models, "load_tokenizer", lambda path, chat_template=None, chat=False: Tokenizer())
    monkeypatch.setattr(models, "load_causal_lm", lambda path, dtype="float32", **kw: policy)
    hub = write_jsonl(tmp_path / "tasks.jsonl", tasks_rows(20))
    results, _ = bon.main(compose("experiment=paper_math_bon", f"data.heldout.path={hub}", "num_prompts=5", "n=2",
                                  *overrides))
    return policy, results


def test_paper_math_bon_scores_by_the_last_line_at_512_tokens(tmp_path, monkeypatch):
    policy, results = _paper_math_bon(tmp_path, monkeypatch)
    json.dumps(results)  # results.json as written
    for part in ("greedy", "sampled"):
        assert results[part]["scorer"] == "tinyzero" and results[part]["max_new_tokens"] == 512
    assert results["greedy"]["accuracy"]["value"] == 0.0 and results["greedy"]["accuracy"]["n"] == 5
    assert results["sampled"]["best_of_2_accuracy"]["value"] == 0.0
    assert policy.max_new_tokens == [512, 512]
    # the held-out answers are sampled as the authors' scripts/evaluation.py samples, and say so
    assert policy.decoding[0] == (True, 0.2, 0.9, 1.1)
    assert results["greedy"]["decoding"] == {"do_sample": True, "temperature": 0.2, "top_p": 0.9,
                                             "repetition_penalty": 1.1, "seed": 0}


def test_paper_math_scores_greedily_one_switch_away(tmp_path, monkeypatch):
    policy, results = _paper_math_bon(tmp_path, monkeypatch, "data.evaluate.decoding=null")
    assert policy.decoding[0] == (False, 1.0, 1.0, 1.0) and results["greedy"]["decoding"] == "greedy"


def test_rloo_reward_follows_the_data_rule():
    from rlft import reward_functions

    for experiment, expected in (("paper_math_rloo", 0.0), ("tiny_math_rloo", 1.0)):
        _, funcs, _ = reward_functions.from_config(compose(f"experiment={experiment}").reward)
        assert funcs[0]([None], ["<answer>12+7-3</answer>\nDone."], nums=[[3, 7, 12]], target=[16]) == [expected]
