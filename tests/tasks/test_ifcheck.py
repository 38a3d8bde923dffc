"""ifcheck: the rule judge, and generated pairs where chosen satisfies and rejected breaks one."""

import json

import pytest

from rlft.tasks import ifcheck
from rlft.tasks.ifcheck import check


@pytest.mark.parametrize("response,constraint,expected", [
    ("HELLO WORLD.", {"kind": "caps"}, True),
    ("Hello world.", {"kind": "caps"}, False),
    ("123 !!", {"kind": "caps"}, False),  # no letters: not an answer in capitals
    ("hello world.", {"kind": "lower"}, True),
    ("hello World.", {"kind": "lower"}, False),
    ("A green leaf.", {"kind": "include", "value": "green"}, True),
    ("Greenery only.", {"kind": "include", "value": "green"}, False),  # whole words
    ("A GREEN leaf.", {"kind": "avoid", "value": "green"}, False),
    ("A red leaf.", {"kind": "avoid", "value": "green"}, True),
    ("one two three", {"kind": "max_words", "value": 3}, True),
    ("one two three four", {"kind": "max_words", "value": 3}, False),
    ("", {"kind": "max_words", "value": 3}, False),
    ("- a\n- b", {"kind": "bullets", "value": 2}, True),
    ("- a\n\n- b\n", {"kind": "bullets", "value": 2}, True),
    ("- a\n- b\n- c", {"kind": "bullets", "value": 2}, False),
    ("- a\nb", {"kind": "bullets", "value": 2}, False),
    ("Done. That is all.", {"kind": "ends_with", "value": "That is all."}, True),
    ("DONE. THAT IS ALL.", {"kind": "ends_with", "value": "That is all."}, True),
    ("That is all. Done.", {"kind": "ends_with", "value": "That is all."}, False),
    ('{"answer": "x"}', {"kind": "json", "value": "answer"}, True),
    ('{"text": "x"}', {"kind": "json", "value": "answer"}, False),
    ('["answer"]', {"kind": "json", "value": "answer"}, False),
    ("{answer: x}", {"kind": "json", "value": "answer"}, False),
    ("[" * 100_000, {"kind": "json", "value": "answer"}, False),  # hostile: bounded, never raises
    (None, {"kind": "caps"}, False),
])
def test_rule_checks(response, constraint, expected):
    assert check(response, constraint) is expected


def test_pairs_chosen_satisfies_rejected_breaks_exactly_one():
    rows = ifcheck.preference_rows(500, seed=3)
    assert rows == ifcheck.preference_rows(500, seed=3)
    kinds = set()
    for row in rows:
        constraints = json.loads(row["constraints"])
        kinds |= {c["kind"] for c in constraints}
        assert ifcheck.judge(row["chosen"], constraints) == 1.0
        assert sum(not check(row["rejected"], c) for c in constraints) == 1
        assert row["score_chosen"] == 10.0 and 1.0 <= row["score_rejected"] < 10.0
        assert row["prompt"] == ifcheck.make_prompt(row["prompt"][len("Write about "):].split(". ")[0], constraints)
    assert kinds == set(ifcheck.KINDS)


def test_heldout_prompts_are_disjoint_from_training():
    heldout = ifcheck.heldout_prompts(100, seed=1)
    assert len({h["prompt"] for h in heldout}) == 100
    train = ifcheck.preference_rows(2000, seed=0, exclude={h["prompt"] for h in heldout})
    assert not {h["prompt"] for h in heldout} & {r["prompt"] for r in train}
