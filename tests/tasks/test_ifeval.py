"""ifeval: IFEval's checkers on known responses, generated rows, IFBench's held-out rows, metrics,
hostile responses. In-process and offline; the first check loads if-verifiable (~2 s)."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlft.tasks import ifeval
from rlft.tasks.ifeval import check


def row(instruction_id, prompt="Write something.", **kwargs):
    return {"key": 0, "prompt": prompt, "instruction_id_list": [instruction_id], "kwargs": [kwargs]}


@pytest.mark.parametrize("instruction_id,kwargs,response,expected", [
    ("change_case:english_lowercase", {}, "the cat sat on the mat and looked at the door.", True),
    ("change_case:english_lowercase", {}, "The cat sat on the mat and looked at the door.", False),
    ("change_case:english_capital", {}, "THE CAT SAT ON THE MAT AND LOOKED AT THE DOOR.", True),
    ("change_case:english_capital", {}, "THE CAT SAT ON THE MAT and looked at the door.", False),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "one two three four", True),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "one two three four five", False),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"}, "one, two; three!", True),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "One. Two.", True),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "One. Two.", False),
    ("punctuation:no_comma", {}, "No commas here at all.", True),
    ("punctuation:no_comma", {}, "Well, there is one.", False),
    ("keywords:existence", {"keywords": ["river"]}, "A long RIVER runs here.", True),
    ("keywords:existence", {"keywords": ["river", "stone"]}, "A long river runs here.", False),
    ("keywords:forbidden_words", {"forbidden_words": ["river"]}, "A long stream runs here.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["river"]}, "A long River runs here.", False),
    ("keywords:frequency", {"keyword": "song", "frequency": 2, "relation": "at least"}, "song and song", True),
    ("detectable_format:json_format", {}, '{"note": "hello"}', True),
    ("detectable_format:json_format", {}, '```json\n{"note": "hello"}\n```', True),
    ("detectable_format:json_format", {}, "{note: hello}", False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Here it is. Any other questions?", True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Bye.", False),
    ("detectable_format:title", {}, "<<A day out>>\nWe went out.", True),
    ("detectable_format:title", {}, "A day out\nWe went out.", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\nP.S. See you.", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two\n- three", False),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].", True),
    ("startend:quotation", {}, '"All of it quoted."', True),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Describe a cat."}, "Describe a cat. A cat is soft.", True),
])
def test_known_verdicts(instruction_id, kwargs, response, expected):
    assert check(response, row(instruction_id, **kwargs)) == [expected]


def _registry(r):
    family = "ifeval" if r["instruction_id_list"][0] in ifeval._load("ifeval").INSTRUCTION_DICT else "ifbench"
    return ifeval._load(family).INSTRUCTION_DICT


def _ifeval_strict(response, r):
    """IFEval's evaluation_lib.test_instruction_following_strict, on the raw response."""
    out = []
    for i, kw in zip(r["instruction_id_list"], r["kwargs"]):
        checker = _registry(r)[i](i)
        random.seed(0)
        checker.build_description(**{k: v for k, v in kw.items() if v is not None})
        try:
            out.append(bool(response.strip() and checker.check_following(response)))
        except Exception:  # noqa: BLE001 - as rlft counts a raising checker
            out.append(False)
    return out


def _if_verifiable(response, r):
    """if-verifiable's own evaluation (it strips the response first, so only for stripped ones)."""
    from if_verifiable.common import evaluate_instructions

    results, _ = evaluate_instructions(response, r["instruction_id_list"], r["kwargs"], r["prompt"], _registry(r))
    return [x.strict_pass for x in results], [x.loose_pass for x in results]


RESPONSES = [
    "the cat sat on the mat. any other questions?", "HELLO FRIEND. THAT IS ALL.", '{"a": 1}',
    "* one\n* two\n- three", "Section 1 green\nSECTION 2 light\n***\nwater", "<<Title>>\n\n*hi* there [x]\nP.S. bye",
    '"Quoted, with a comma."', "first ****** second", "Write a short poem about autumn leaves. Leaves fall.",
]


def test_whitespace_flips_only_what_ifeval_flips():
    """A trailing newline or surrounding spaces change a verdict exactly where IFEval's checkers do."""
    rows = ifeval.make_rows(120, seed=5) + ifeval.ifbench_rows()[0][:40]
    for r in rows:
        for base in RESPONSES:
            strict, loose = _if_verifiable(base, r)
            assert check(base, r) == strict and check(base, r, loose=True) == loose, (r["instruction_id_list"], base)
            for resp in (base + "\n", "  " + base + " \n"):
                assert check(resp, r) == _ifeval_strict(resp, r), (r["instruction_id_list"], resp)
    end = row("startend:end_checker", end_phrase="That is all.")
    assert check("Done. That is all.\n", end) == check("Done. That is all.", end) == [True]
    assert check('  {"a": 1}\n', row("detectable_format:json_format")) == [True]
    assert check("all in lowercase, with words enough.\n", row("change_case:english_lowercase")) == [True]


def test_kwargs_as_json_string_or_list_and_none_values_dropped():
    full = {"num_words": 5, "relation": "less than", "keywords": None, "end_phrase": None, "num_bullets": None}
    as_list = {"key": 1, "prompt": "p", "instruction_id_list": ["length_constraints:number_words"], "kwargs": [full]}
    as_json = dict(as_list, kwargs=json.dumps([full]))
    for r in (as_list, as_json):
        assert check("one two three", r) == [True]
        assert check("one two three four five six", r) == [False]
    assert ifeval.score("one two", as_json) == 1.0


def test_bad_rows_raise_but_bad_responses_do_not(monkeypatch):
    with pytest.raises(ValueError, match="unknown"):
        check("x", row("keywords:no_such_thing"))
    with pytest.raises(ValueError, match="kwargs"):
        check("x", {"prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]})
    with pytest.raises(ValueError, match="nltk data"):
        check("x", row("change_case:capital_word_frequency", capital_frequency=2, capital_relation="at least"))
    r = {"prompt": "p", "instruction_id_list": ["punctuation:no_comma", "detectable_format:title"], "kwargs": [{}, {}]}
    for bad in (None, 12, b"bytes", ["a"], "", "   \n\t"):
        assert check(bad, r) == [False, False]
        assert ifeval.score(bad, r) == 0.0
    assert check("[" * 50_000, row("detectable_format:json_format")) == [False]  # RecursionError inside

    def boom(self, value):
        raise RuntimeError("checker bug")

    monkeypatch.setattr(ifeval._load("ifeval").INSTRUCTION_DICT["punctuation:no_comma"], "check_following", boom)
    assert check("<<t>> no comma", r) == [False, True]


def test_make_rows_deterministic_distinct_and_heldout_disjoint():
    a, b = ifeval.make_rows(300, seed=0), ifeval.make_rows(300, seed=0)
    assert a == b
    assert a != ifeval.make_rows(300, seed=1)
    assert len({r["prompt"] for r in a}) == len({r["key"] for r in a}) == 300
    heldout = ifeval.heldout_rows(100, seed=1)
    held = {r["prompt"] for r in heldout}
    for seed in (0, 1, 2):
        train = ifeval.train_rows(400, seed=seed, heldout=heldout)
        assert len(train) == 400 and not held & {r["prompt"] for r in train}
    assert ifeval.train_rows(50, seed=3, heldout=held) == ifeval.train_rows(50, seed=3, heldout=heldout)


def test_generated_rows_are_ifeval_rows_described_by_their_checkers():
    conflicts = ifeval._conflicts()
    state = random.getstate()
    rows = ifeval.make_rows(400, seed=7)
    assert random.getstate() == state  # the checkers' global draws do not leak
    seen = set()
    for r in rows:
        assert set(r) == {"key", "prompt", "instruction_id_list", "kwargs"}
        ids = r["instruction_id_list"]
        assert 1 <= len(ids) <= 2 and len(r["kwargs"]) == len(ids) and set(ids) <= set(ifeval.GENERATED)
        if len(ids) == 2:
            assert ids[1] not in conflicts[ids[0]] and ids[0] not in conflicts[ids[1]]
        assert r["prompt"].startswith(tuple(ifeval.TASKS))
        json.dumps(r)  # plain JSON, like input_data.jsonl
        text = r["prompt"]
        for i, kw in zip(ids, r["kwargs"]):
            random.seed(len(seen))  # whatever the global state, the row's kwargs fix the description
            _, description = ifeval._build(i, kw, r["prompt"])
            assert description in text
            text = text.replace(description, "", 1)
            seen.add(i)
        assert text.strip() in ifeval.TASKS  # the task and the descriptions, nothing else
    assert seen == set(ifeval.GENERATED)


def test_generated_rows_can_be_satisfied():
    """Handmade responses follow generated single instructions: the checkers and kwargs agree."""
    answers = {
        "change_case:english_lowercase": "my cat is lost and i miss her very much.",
        "punctuation:no_comma": "My cat is lost and I miss her.",
        "detectable_format:json_format": '{"note": "my cat is lost"}',
        "detectable_format:title": "<<Lost cat>>\nMy cat is lost.",
        "startend:quotation": '"My cat is lost."',
    }
    rows = [r for r in ifeval.make_rows(300, seed=11) if len(r["instruction_id_list"]) == 1]
    hit = set()
    for r in rows:
        (i,) = r["instruction_id_list"]
        if i in answers:
            assert check(answers[i], r) == [True], i
            hit.add(i)
        elif i == "combination:repeat_prompt":
            assert check(r["kwargs"][0]["prompt_to_repeat"] + " Here goes.", r) == [True]
        elif i == "startend:end_checker":
            assert check("Here goes. " + r["kwargs"][0]["end_phrase"], r) == [True]
    assert hit == set(answers)


def test_ifbench_rows_offline():
    rows, dropped = ifeval.ifbench_rows()
    assert len(rows) >= 250 and len(rows) + dropped == ifeval.IFBENCH_SIZE == 294
    assert (len(rows), dropped) == (265, 29)  # without nltk_data, as here and in CI
    ids = {i for r in rows for i in r["instruction_id_list"]}
    assert not ids & set(ifeval.NLTK_DATA) and all(ifeval.runs_offline(i) for i in ids)
    for r in rows:
        for resp in ("Hello world. This is a test, of sorts!", "* a\n- b\n\nc d e"):
            verdicts = check(resp, r)
            assert len(verdicts) == len(r["instruction_id_list"]) and all(isinstance(v, bool) for v in verdicts)
    path = ifeval.ifbench_path()
    dropped_rows = [json.loads(line) for line in path.read_text().splitlines()]
    dropped_rows = [r for r in dropped_rows if not all(ifeval.runs_offline(i) for i in r["instruction_id_list"])]
    with pytest.raises(ValueError, match="nltk data"):
        check("x", dropped_rows[0])


def test_summarize_prompt_and_instruction_level():
    followed = [[True, True], [True, False], [False], [True]]
    s = ifeval.summarize(followed)
    assert s["prompt_level_strict"]["value"] == 0.5 and s["prompt_level_strict"]["n"] == 4
    assert s["instruction_level_strict"]["value"] == 4 / 6 and s["instruction_level_strict"]["n"] == 6
    for m in s.values():
        lo, hi = m["ci95"]
        assert 0.0 <= lo < m["value"] < hi <= 1.0
    assert ifeval.summarize([[True]] * 3)["prompt_level_strict"]["ci95"][1] == 1.0
    with pytest.raises(ValueError):
        ifeval.summarize([[True], []])


def test_hostile_responses_are_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f'{{"a": __import__("os").system("touch {marker}")}}',
        f"exec(\"open('{marker}', 'w').write('x')\")",
        f"```json\n{{\"x\": \"{{{{__import__('os').system('touch {marker}')}}}}\"}}\n```",
    ]
    rows = ifeval.make_rows(60, seed=2) + ifeval.ifbench_rows()[0][:60]
    for r in rows:
        for p in payloads:
            assert all(isinstance(v, bool) for v in check(p, r))
    assert check(payloads[1], row("detectable_format:json_format")) == [False]
    assert not marker.exists()


def test_huge_responses_in_bounded_time():
    rows = ifeval.make_rows(40, seed=4) + ifeval.ifbench_rows()[0][:40]
    megabyte = ("word. " * 200_000)[:1_000_000]
    start = time.monotonic()
    for r in rows:
        assert check(megabyte, r) == [False] * len(r["instruction_id_list"])
    assert time.monotonic() - start < 5
    near_cap = ("Dear [name], *see* this. " * 4000)[: ifeval.MAX_RESPONSE_CHARS]
    start = time.monotonic()
    pool = ifeval.make_rows(400, seed=9)
    for i in ifeval.GENERATED:  # every generated instruction's checker on ~100 kB
        check(near_cap, next(x for x in pool if x["instruction_id_list"][0] == i))
    assert time.monotonic() - start < 60


def test_import_is_light_and_nothing_touches_the_network():
    """In a fresh process: importing the module loads no checker library; loading and checking
    both registries opens no socket and calls no nltk download."""
    code = """
import socket, sys
def refuse(*a, **k):
    raise AssertionError("network use: %r" % (a,))
socket.socket.connect = refuse
socket.getaddrinfo = refuse
from rlft.tasks import ifeval
assert "if_verifiable" not in sys.modules and "transformers" not in sys.modules
rows, dropped = ifeval.ifbench_rows()
mine = ifeval.make_rows(50, seed=0)
for r in rows + mine:
    ifeval.check("Hello there. This is a sentence.", r)
import nltk
nltk.download = refuse  # after loading: nothing may call it while checking
for r in rows + mine:
    ifeval.check("Another response, with a comma.", r, loose=True)
print("ok", len(rows), dropped)
"""
    src = str(Path(ifeval.__file__).resolve().parents[2])  # this checkout's rlft, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok 265 29"


# --------------------------------------------------------------------------- the task (rlft.tasks)

def test_the_task_judges_through_the_contract_for_heldout_and_on_policy_rows():
    """IfEval's verdict is check()'s, whether the row is a held-out one (its `prompt` the text) or
    an on-policy one (its `prompt` the chat, the text in `prompt_text`, kwargs as JSON)."""
    from rlft.data import ifeval_prompt_dataset

    task = ifeval.IfEval()
    row = {"key": "k", "prompt": "Write about tea. Your entire response should be in English, and in all lowercase "
           "letters. No capital letters are allowed.", "instruction_id_list": ["change_case:english_lowercase"],
           "kwargs": [{}]}
    v = task.verdict("tea is warm and calm.", row)
    assert (v.score, v.correct, v.followed) == (1.0, True, (True,))
    assert task.verdict("Tea is warm.", row).correct is False
    on_policy = ifeval_prompt_dataset(8, seed=0).to_list()
    heldout_texts = {r["prompt"] for r in ifeval.heldout_rows(200, 1000003)}
    for r in on_policy:
        assert task.user_text(r) == r["prompt_text"] and r["prompt_text"] not in heldout_texts
        plain = {"prompt": r["prompt_text"], "instruction_id_list": r["instruction_id_list"],
                 "kwargs": json.loads(r["kwargs"])}
        assert task.verdict("some answer.", r).followed == tuple(ifeval.check("some answer.", plain))
    summary = task.summarize([task.verdict("tea is warm.", row), task.verdict("Tea.", row)])
    assert summary["prompt_level_strict"]["value"] == 0.5 and summary["instruction_level_strict"]["n"] == 2


def test_heldout_evaluation_reports_ifbench_beside_ifeval_when_asked():
    """data.task.ifbench=true: the same greedy evaluation also answers IFBench's checkable prompts,
    reported as ifbench_* with how many rows were checked and dropped (the 294 all accounted for)."""
    from rlft import evaluate

    class Policy:  # stands in for a model (generation.generate calls generate_texts, as for vLLM)
        def generate_texts(self, prompts, max_new_tokens, do_sample, temperature, n, top_p=1.0, rep=1.0):
            return ["a plain answer."] * (len(prompts) * n)

    class Tokenizer:
        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
            return messages[-1]["content"]

    rows = ifeval.heldout_rows(20, 1000003)
    plain = evaluate.heldout(Policy(), Tokenizer(), rows, ifeval.IfEval())
    assert not any(k.startswith("ifbench") for k in plain)
    out = evaluate.heldout(Policy(), Tokenizer(), rows, ifeval.IfEval(ifbench=True))
    assert out["ifbench_rows_checked"] + out["ifbench_rows_dropped"] == 294
    assert out["ifbench_prompt_level_strict"]["n"] == out["ifbench_rows_checked"] >= 250
    assert out["prompt_level_strict"] == plain["prompt_level_strict"]
