"""ifcheck: instruction following that a rule can judge, for the offline tiny pipeline.

    from rlft.tasks import ifcheck
    rows = ifcheck.preference_rows(100, seed=0)   # prompt, chosen, rejected, scores, constraints
    ifcheck.judge(response, rows[0]["constraints"])  # fraction of constraints satisfied, 0..1

Each prompt asks for a short text on a topic under one or two constraints a rule can check
(all capitals, all lowercase, include or avoid a word, at most N words, exactly N bullet points,
end with a phrase, a JSON object with a given key). The chosen response satisfies every
constraint; the rejected one breaks exactly one. Scores for a regression reward model follow
UltraFeedback's 1..10 scale: 1 + 9 x (fraction satisfied). The judge parses JSON with json.loads
and never evaluates model output.
"""

from __future__ import annotations

import json
import random
import re

from rlft import stats
from rlft.tasks import Task, Verdict

TOPICS = [
    "the ocean", "bicycles", "coffee", "the moon", "rain", "libraries", "trees", "music", "bread",
    "mountains", "cats", "trains", "gardens", "winter", "bees", "rivers", "clocks", "maps", "tea",
    "birds", "bridges", "markets", "snow", "candles", "boats", "forests", "deserts", "islands",
    "apples", "stars", "rivers at night", "old roads", "small towns", "the wind", "honey", "paper",
]
ADJECTIVES = ["quiet", "bright", "old", "simple", "useful", "calm", "strong", "gentle", "busy", "warm"]
VERBS = ["help", "change", "shape", "fill", "guide", "surprise", "teach", "connect", "comfort", "follow"]
NOUNS = ["people", "cities", "children", "travellers", "friends", "farmers", "artists", "families"]
KEYWORDS = ["green", "light", "river", "stone", "song", "window", "silver", "garden", "morning", "bridge"]
ENDINGS = ["That is all.", "Thank you.", "Any questions?", "The end."]
KINDS = ["caps", "lower", "include", "avoid", "max_words", "bullets", "ends_with", "json"]
_CONFLICTS = {frozenset(p) for p in [("caps", "lower"), ("bullets", "json"), ("ends_with", "json"),
                                      ("include", "avoid"), ("max_words", "bullets"), ("lower", "json")]}
_WORD = re.compile(r"[A-Za-z']+")


def instruction(c: dict) -> str:
    """The sentence that asks for constraint `c` in a prompt."""
    k, v = c["kind"], c.get("value")
    return {
        "caps": "Write your whole answer in capital letters.",
        "lower": "Write your whole answer in lowercase letters.",
        "include": f"Use the word '{v}'.",
        "avoid": f"Do not use the word '{v}'.",
        "max_words": f"Answer in at most {v} words.",
        "bullets": f"Answer with exactly {v} bullet points starting with '- '.",
        "ends_with": f"End your answer with '{v}'",
        "json": f"Answer with a JSON object that has the key '{v}'.",
    }[k]


def check(response: str, c: dict) -> bool:
    """Whether `response` satisfies constraint `c`."""
    if not isinstance(response, str):
        return False
    k, v = c["kind"], c.get("value")
    text = response.strip()
    words = [w.lower() for w in _WORD.findall(text)]
    if k == "caps":
        return any(ch.isalpha() for ch in text) and text == text.upper()
    if k == "lower":
        return any(ch.isalpha() for ch in text) and text == text.lower()
    if k == "include":
        return v.lower() in words
    if k == "avoid":
        return v.lower() not in words
    if k == "max_words":
        return 0 < len(words) <= v
    if k == "bullets":
        lines = [line for line in text.splitlines() if line.strip()]
        return len(lines) == v and all(line.startswith("- ") for line in lines)
    if k == "ends_with":
        return text.lower().endswith(v.lower())
    if k == "json":
        if len(text) > 10_000:
            return False
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return False
        return isinstance(obj, dict) and v.lower() in {str(key).lower() for key in obj}
    raise ValueError(f"unknown ifcheck constraint kind {k!r}")


def judge(response: str, constraints: list[dict]) -> float:
    """The rule judge: the fraction of constraints `response` satisfies (0..1)."""
    return sum(check(response, c) for c in constraints) / len(constraints)


def make_prompt(topic: str, constraints: list[dict]) -> str:
    return f"Write about {topic}. " + " ".join(instruction(c) for c in constraints)


def constraints_of(row: dict) -> list[dict]:
    """A row's constraints: the JSON string rows store, or the list itself."""
    cs = row["constraints"]
    return json.loads(cs) if isinstance(cs, str) else cs


class IfCheck(Task):
    """ifcheck as an rlft task (rlft.tasks): rows {prompt, constraints}; a response's score is the
    fraction of constraints met, correct when all are. Held-out metrics: `satisfied` (the mean
    fraction, normal 95% interval) and `all_satisfied` (Wilson 95% interval)."""

    name = "ifcheck"
    columns = ("constraints",)
    shown = ("prompt",)
    instructions = True

    def user_text(self, row: dict) -> str:
        return row["prompt"]

    def verdict(self, response: str, row: dict) -> Verdict:
        followed = tuple(check(response, c) for c in constraints_of(row))
        return Verdict(sum(followed) / len(followed), all(followed), followed)

    def summarize(self, verdicts: list[Verdict]) -> dict:
        n = len(verdicts)
        scores = [v.score for v in verdicts]
        full = sum(v.correct for v in verdicts)
        return {
            "satisfied": stats.mean(scores),
            "all_satisfied": stats.proportion(full, n),
        }

    def describe(self) -> dict:
        return {"judge": "ifcheck rules"}


# --------------------------------------------------------------------------- generation

def _sentence(rng: random.Random, topic: str, keyword: str | None = None) -> str:
    adj, verb, noun = rng.choice(ADJECTIVES), rng.choice(VERBS), rng.choice(NOUNS)
    forms = [f"{topic.capitalize()} can {verb} {noun}.", f"I think {topic} are {adj}.",
             f"Many {noun} find {topic} {adj}.", f"{topic.capitalize()} feel {adj} to {noun}."]
    s = rng.choice(forms)
    if keyword:
        s = s[:-1] + f", like a {keyword}."
    return s


def _constraints(rng: random.Random) -> list[dict]:
    while True:
        kinds = rng.sample(KINDS, rng.choice([1, 2]))
        if len(kinds) == 1 or frozenset(kinds) not in _CONFLICTS:
            break
    out = []
    for k in kinds:
        value = {"include": rng.choice(KEYWORDS), "avoid": rng.choice(KEYWORDS), "max_words": rng.choice([8, 10, 12]),
                 "bullets": rng.choice([2, 3]), "ends_with": rng.choice(ENDINGS), "json": rng.choice(["answer", "text"])}.get(k)
        out.append({"kind": k, "value": value})
    return out


def _render(rng: random.Random, topic: str, constraints: list[dict], broken: str | None) -> str:
    """A response satisfying every constraint except the one of kind `broken` (if any)."""
    want = {c["kind"]: c["value"] for c in constraints}

    def ok(kind):
        return kind in want and kind != broken

    include = want["include"] if ok("include") else None
    avoid_word = want.get("avoid")
    n_sent = want["bullets"] if "bullets" in want else rng.choice([2, 3])
    if "bullets" in want and broken == "bullets":
        n_sent += rng.choice([-1, 1])
    sents = [_sentence(rng, topic, include if i == 0 else None) for i in range(n_sent)]
    if broken == "avoid":
        sents[-1] = _sentence(rng, topic, avoid_word)
    if broken == "include" and any(want["include"] in s for s in sents):
        return ""
    if ok("max_words"):
        sents = sents[:1]
        for _ in range(50):  # some topic + keyword pairs never fit: give up, the caller redraws
            if len(_WORD.findall(sents[0])) <= want["max_words"]:
                break
            sents = [_sentence(rng, topic, include)]
        else:
            return ""
    elif broken == "max_words":
        while len(_WORD.findall(" ".join(sents))) <= want["max_words"]:
            sents.append(_sentence(rng, topic))
    if "bullets" in want and broken != "bullets" or (broken == "bullets" and rng.random() < 0.7):
        text = "\n".join(f"- {s}" for s in sents)
    else:
        text = " ".join(sents)
    if ok("ends_with"):
        text = f"{text} {want['ends_with']}"
    if "json" in want:
        text = json.dumps({want["json"]: text}) if ok("json") else text
    if ok("caps"):
        text = text.upper()
    elif broken == "caps":
        text = text.lower()
    if ok("lower"):
        text = text.lower()
    elif broken == "lower":
        text = text.upper()
    return text


def _pair(rng: random.Random) -> tuple[str, list[dict], str, str]:
    while True:
        topic = rng.choice(TOPICS)
        constraints = _constraints(rng)
        chosen = _render(rng, topic, constraints, None)
        broken = rng.choice(constraints)["kind"]
        rejected = _render(rng, topic, constraints, broken)
        others = [c for c in constraints if c["kind"] != broken]
        if (chosen and judge(chosen, constraints) == 1.0 and rejected and not check(rejected, next(c for c in constraints if c["kind"] == broken))
                and all(check(rejected, c) for c in others)):
            return topic, constraints, chosen, rejected


def preference_rows(n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """`n` rows: prompt (user text), chosen, rejected, score_chosen, score_rejected (1..10) and
    constraints (JSON), deterministic in `seed`; prompts in `exclude` are skipped."""
    rng = random.Random(seed)
    exclude = set(exclude or ())
    rows = []
    for _ in range(100 * n + 1000):
        if len(rows) == n:
            break
        topic, constraints, chosen, rejected = _pair(rng)
        prompt = make_prompt(topic, constraints)
        if prompt in exclude:
            continue
        rows.append({
            "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "score_chosen": 1 + 9 * judge(chosen, constraints), "score_rejected": 1 + 9 * judge(rejected, constraints),
            "constraints": json.dumps(constraints),
        })
    if len(rows) < n:
        raise ValueError(f"could not generate {n} ifcheck rows outside the excluded prompts")
    return rows


def heldout_prompts(n: int, seed: int) -> list[dict]:
    """`n` distinct held-out rows {prompt, constraints}; training sets exclude these prompts."""
    rows, seen = [], set()
    for r in preference_rows(4 * n + 100, seed):
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            rows.append({"prompt": r["prompt"], "constraints": r["constraints"]})
        if len(rows) == n:
            return rows
    raise ValueError(f"could not generate {n} distinct held-out ifcheck prompts")
