"""Countdown: make a target from given numbers with + - * / (each number used exactly once).

    from rlft.tasks import countdown
    rows = countdown.generate_problems(200, seed=1)              # [{"nums": [..], "target": t}]
    countdown.solve([3, 7, 12], 16)                              # "12+7-3" (exact, exhaustive)
    countdown.score("<answer>12+7-3</answer>", [3, 7, 12], 16)   # 1.0
    countdown.score("<answer>12+7-3</answer>\\nok", [3, 7, 12], 16, rule="tinyzero")  # 0.0: not on the last line

Scoring follows TinyZero's `countdown.compute_score` (the paper's verifier):
  0.0  no <answer>...</answer> in the response
  0.1  the last answer is malformed, does not use exactly the given numbers (as a multiset),
       divides by zero, or evaluates to something else
  1.0  it evaluates to the target (|value - target| < 1e-5)
Which answer counts is the `rule` (SCORERS; configs: data.scorer):
  "rlft"      the last <answer>...</answer> anywhere in the response (the default; it may span lines)
  "tinyzero"  the authors' rule: the last answer on the response's LAST LINE only, after the
              authors' evaluation's `.split("<|im_end|>")[0].strip()`, i.e. in
              `response.split("<|im_end|>")[0].strip().split("\\n")[-1]`, so a response that ends
              in a newline is scored on its last non-empty line. rlft scores the completion alone,
              which is what TinyZero's split after "Assistant:" leaves of prompt + completion.
Model output is hostile input, so unlike TinyZero this never runs it as Python: a small parser over
exact rationals accepts ASCII integers, + - * /, unary +/-, parentheses and whitespace, with the
answer length and nesting depth bounded. Deliberate differences from Python's eval, each scoring
0.1 where TinyZero could give 1.0: `**` (power), decimals and non-ASCII digits are malformed.
"""

from __future__ import annotations

import random
import re
from fractions import Fraction
from itertools import combinations
from math import gcd
from typing import Literal, get_args

from tqdm.auto import tqdm

from rlft import stats
from rlft.tasks import Task, Verdict

NO_ANSWER, FORMAT_SCORE, CORRECT = 0.0, 0.1, 1.0
Scorer = Literal["rlft", "tinyzero"]  # which answer counts: the last anywhere, or the last on the last line
SCORERS: tuple[str, ...] = get_args(Scorer)
MAX_ANSWER_CHARS = 256  # longest answer parsed; longer is malformed (bounds the work per call)
MAX_DEPTH = 64  # deepest nesting of parentheses / unary signs accepted

# The paper's prompt (TinyZero), and a compact one a tiny model learns quickly.
TINYZERO_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer.\nUser: Using the numbers {nums}, create an equation that equals {target}. You can use "
    "basic arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in "
    "<think> </think> tags. And return the final answer in <answer> </answer> tags, for example "
    "<answer> (1 + 2) / 3 </answer>.\nAssistant: Let me solve this step by step."
)
COMPACT_PROMPT = "Numbers: {nums}. Target: {target}."
TEMPLATES = {"tinyzero": TINYZERO_PROMPT, "compact": COMPACT_PROMPT}


def make_prompt(nums: list[int], target: int, template: str = "tinyzero") -> str:
    """The user turn for one problem. `template` is "tinyzero" (the paper's) or "compact"."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown countdown template {template!r}; choose from {sorted(TEMPLATES)}")
    shown = str(list(nums)) if template == "tinyzero" else " ".join(map(str, nums))
    return TEMPLATES[template].format(nums=shown, target=target)


# --------------------------------------------------------------------------- verifier

_OPEN, _CLOSE = "<answer>", "</answer>"
_ALLOWED = re.compile(r"[0-9+\-*/()\s]*")  # \s may be any Unicode space, as in TinyZero's regex
_TOKEN = re.compile(r"[0-9]+|[-+*/()]")


def check_rule(rule: str) -> str:
    """`rule` if it is one of SCORERS, else ValueError (callers check before costly generation)."""
    if rule not in SCORERS:
        raise ValueError(f"unknown countdown scorer {rule!r}; choose from {list(SCORERS)}")
    return rule


def extract_answer(response: str, rule: Scorer = "rlft") -> str | None:
    """The stripped text of the last <answer>...</answer> in `response`, or None.

    Same matches as TinyZero's `re.finditer(r"<answer>(.*?)</answer>")`, except that under
    rule="rlft" an answer may span lines; rule="tinyzero" first cuts the response at <|im_end|>,
    strips it and keeps its last line (the authors' `.split("<|im_end|>")[0].strip()`, then
    TinyZero's `split('\\n')[-1]`). A forward scan pairs each opening tag
    with the next closing tag, which costs time linear in the response whatever it holds.
    """
    check_rule(rule)
    if not isinstance(response, str):
        return None
    if rule == "tinyzero":  # the authors' evaluation: cut at <|im_end|>, strip, then the last line
        response = response.partition("<|im_end|>")[0].strip().rpartition("\n")[2]
    last = None
    pos = 0
    while True:
        start = response.find(_OPEN, pos)
        if start < 0:
            break
        end = response.find(_CLOSE, start + len(_OPEN))
        if end < 0:
            break
        last = (start + len(_OPEN), end)
        pos = end + len(_CLOSE)
    return None if last is None else response[last[0] : last[1]].strip()


class _Malformed(Exception):
    pass


def _evaluate(tokens: list[str]) -> tuple[int, int]:
    """Value of an arithmetic expression as an exact (numerator, denominator>0) pair.

    Grammar: expr := term (("+"|"-") term)*;  term := unary (("*"|"/") unary)*;
             unary := ("+"|"-") unary | INT | "(" expr ")".
    """
    pos = 0
    n_tok = len(tokens)

    def expr(depth: int) -> tuple[int, int]:
        nonlocal pos
        a, b = term(depth)
        while pos < n_tok and tokens[pos] in "+-":
            op = tokens[pos]
            pos += 1
            c, d = term(depth)
            a, b = (a * d + c * b, b * d) if op == "+" else (a * d - c * b, b * d)
        return a, b

    def term(depth: int) -> tuple[int, int]:
        nonlocal pos
        a, b = unary(depth)
        while pos < n_tok and tokens[pos] in "*/":
            op = tokens[pos]
            pos += 1
            c, d = unary(depth)
            if op == "*":
                a, b = a * c, b * d
            elif c == 0:
                raise _Malformed("division by zero")
            else:
                a, b = (a * d, b * c) if c > 0 else (-a * d, -b * c)
        return a, b

    def unary(depth: int) -> tuple[int, int]:
        nonlocal pos
        if depth > MAX_DEPTH or pos >= n_tok:
            raise _Malformed("too deep or truncated")
        tok = tokens[pos]
        pos += 1
        if tok == "-":
            a, b = unary(depth + 1)
            return -a, b
        if tok == "+":
            return unary(depth + 1)
        if tok == "(":
            value = expr(depth + 1)
            if pos >= n_tok or tokens[pos] != ")":
                raise _Malformed("unbalanced parentheses")
            pos += 1
            return value
        if tok[0].isdigit():
            return int(tok), 1
        raise _Malformed(f"unexpected {tok!r}")

    value = expr(0)
    if pos != n_tok:
        raise _Malformed("trailing tokens")
    return value


def _numbers_and_tokens(answer: str) -> tuple[list[int], list[str]] | None:
    """Tokens of a well-formed-looking answer and the integers in it; None if malformed."""
    if len(answer) > MAX_ANSWER_CHARS or not _ALLOWED.fullmatch(answer):
        return None
    tokens = _TOKEN.findall(answer)
    numbers = []
    for tok in tokens:
        if tok[0].isdigit():
            if len(tok) > 1 and tok[0] == "0" and tok.strip("0"):
                return None  # "07" is a syntax error for Python's eval, so for TinyZero too
            numbers.append(int(tok))
    return numbers, tokens


def score(response: str, nums: list[int], target: int | float, rule: Scorer = "rlft") -> float:
    """TinyZero's Countdown score of one response: 0.0, 0.1 or 1.0; `rule` (SCORERS) says which
    answer counts (see module docstring)."""
    answer = extract_answer(response, rule)
    if answer is None:
        return NO_ANSWER
    parsed = _numbers_and_tokens(answer)
    if parsed is None:
        return FORMAT_SCORE
    numbers, tokens = parsed
    if sorted(numbers) != sorted(nums):
        return FORMAT_SCORE
    try:
        num, den = _evaluate(tokens)
    except (_Malformed, RecursionError):
        return FORMAT_SCORE
    # |num/den - target| < 1e-5, decided exactly (TinyZero compares floats with this tolerance).
    target = Fraction(target)
    diff = abs(num * target.denominator - target.numerator * den)
    return CORRECT if diff * 100_000 < den * target.denominator else FORMAT_SCORE


def is_correct(response: str, nums: list[int], target: int | float, rule: Scorer = "rlft") -> bool:
    """True when `response` scores 1.0 under `rule`."""
    return score(response, nums, target, rule) == CORRECT


class Countdown(Task):
    """Countdown as an rlft task (rlft.tasks): rows {nums, target}, the prompt `template`, the
    verifier under the `scorer` rule (SCORERS: which answer counts). Held-out metrics: exact-match accuracy (Wilson 95% interval),
    the mean TinyZero score (0/0.1/1, normal 95% interval: the paper's "accuracy" has the 0.1 format
    credit in it) and the rate of responses with an answer."""

    name = "countdown"
    columns = ("nums", "target")
    shown = ("nums", "target")

    def __init__(self, template: str = "tinyzero", scorer: Scorer = "rlft"):
        if template not in TEMPLATES:
            raise ValueError(f"unknown countdown template {template!r}; choose from {sorted(TEMPLATES)}")
        self.template, self.scorer = template, check_rule(scorer)

    def user_text(self, row: dict) -> str:
        return make_prompt(row["nums"], row["target"], self.template)

    def verdict(self, response: str, row: dict) -> Verdict:
        s = score(response, row["nums"], row["target"], self.scorer)
        return Verdict(s, s == CORRECT)

    def summarize(self, verdicts: list[Verdict]) -> dict:
        n = len(verdicts)
        correct = sum(v.correct for v in verdicts)
        answered = sum(v.score > NO_ANSWER for v in verdicts)
        scores = [v.score for v in verdicts]
        return {
            "accuracy": stats.proportion(correct, n),
            "mean_score": stats.mean(scores),
            "answer_rate": stats.proportion(answered, n),
        }

    def describe(self) -> dict:
        return {"scorer": self.scorer}


# --------------------------------------------------------------------------- solver

# An expression under construction: (value, text, precedence, steps). Precedence 3 = atom.
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _join(left: tuple, op: str, right: tuple) -> tuple[str, int]:
    """Text of `left op right` with only the parentheses the precedence rules need."""
    _, lt, lp, _ = left
    _, rt, rp, _ = right
    p = _PREC[op]
    if lp < p:
        lt = f"({lt})"
    if rp < p or (rp == p and op in "-/"):
        rt = f"({rt})"
    return f"{lt}{op}{rt}", p


def _combinations(a: tuple, b: tuple, nice: bool):
    """Every way to combine two sub-expressions: + * and both orders of - and /. `nice` keeps
    only what a person writes first: no negative or fractional intermediate, larger operand
    first."""
    if nice and a[0] < b[0]:
        a, b = b, a
    va, vb = a[0], b[0]
    yield va + vb, a, "+", b
    yield va * vb, a, "*", b
    yield va - vb, a, "-", b
    if vb != 0 and (not nice or va % vb == 0):
        yield va / vb, a, "/", b
    if nice:
        return
    yield vb - va, b, "-", a
    if va != 0:
        yield vb / va, b, "/", a


def _search(items: list[tuple], target: Fraction, nice: bool):
    """Depth-first over every way to combine all items; the first that equals target, or None."""
    if len(items) == 1:
        return items[0] if items[0][0] == target else None
    for i, j in combinations(range(len(items)), 2):
        rest = [items[k] for k in range(len(items)) if k != i and k != j]
        for value, left, op, right in _combinations(items[i], items[j], nice):
            text, prec = _join(left, op, right)
            step = f"{_plain(left[0])}{op}{_plain(right[0])}={_plain(value)}"
            hit = _search(rest + [(value, text, prec, left[3] + right[3] + (step,))], target, nice)
            if hit is not None:
                return hit
    return None


def _plain(v: Fraction) -> str:
    """A value as it appears in a worked step: integers plainly, fractions as n/d."""
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def solve_steps(nums: list[int], target: int) -> tuple[str, list[str]] | None:
    """Like `solve`, plus the intermediate steps ("12+7=19") in the order they combine.

    Tries the solutions a person would write first (non-negative integer intermediates), then
    every binary expression tree over exact rationals, so None means truly unsolvable.
    """
    leaves = [(Fraction(n), str(n), 3, ()) for n in nums]
    for nice in (True, False):
        hit = _search(leaves, Fraction(target), nice)
        if hit is not None:
            return hit[1], list(hit[3])
    return None


def solve(nums: list[int], target: int) -> str | None:
    """An expression using every number exactly once that equals `target`, or None."""
    solved = solve_steps(nums, target)
    return None if solved is None else solved[0]


def reachable_targets(nums: list[int]) -> set[int]:
    """Every integer some expression over all of `nums` (each once) evaluates to.

    Dynamic programming over subsets of the numbers: the values of a subset are every way to
    combine the values of a split of it into two parts. Rationals are reduced (num, den) pairs
    of ints, several times faster than Fraction here.
    """
    full = (1 << len(nums)) - 1
    values: dict[int, set] = {1 << i: {(x, 1)} for i, x in enumerate(nums)}
    for subset in range(1, full + 1):
        if subset in values:
            continue
        out: set = set()
        part = (subset - 1) & subset
        while part:
            rest = subset ^ part
            if part < rest:  # each unordered split once; both operand orders below
                for a, b in values[part]:
                    for c, d in values[rest]:
                        for num, den in ((a * d + c * b, b * d), (a * c, b * d), (a * d - c * b, b * d),
                                         (c * b - a * d, b * d), (a * d, b * c), (c * b, a * d)):
                            if den == 0:
                                continue
                            if den < 0:
                                num, den = -num, -den
                            g = gcd(num, den)
                            out.add((num // g, den // g))
            part = (part - 1) & subset
        values[subset] = out
    return {num for num, den in values[full] if den == 1}


# --------------------------------------------------------------------------- data

def generate_problems(
    n: int,
    seed: int,
    num_counts: tuple[int, ...] = (3, 4),
    min_num: int = 0,
    max_num: int = 99,
    min_target: int = 1,
    max_target: int = 100,
    exclude: set | None = None,
    distinct: bool = True,
    progress: bool = False,
) -> list[dict]:
    """`n` solvable problems {"nums": [...], "target": t}, deterministic in `seed`.

    Defaults match the paper's held-out set: 3-4 numbers in 0..99, an integer target (here
    1..100). Numbers are drawn uniformly; the target uniformly among the integers in range that
    the numbers can reach, so every problem is solvable. `exclude` holds `problem_key`s to skip
    (e.g. held-out problems, to keep training data disjoint from them); `distinct` also skips
    repeats within the result (turn it off to sample a small problem space with replacement).
    """
    rng = random.Random(seed)
    exclude = set(exclude or ())
    rows: list[dict] = []
    bar = _progress(n, "countdown problems", progress)
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"could not generate {n} distinct solvable problems with these settings")
        nums = [rng.randint(min_num, max_num) for _ in range(rng.choice(num_counts))]
        targets = sorted(t for t in reachable_targets(nums) if min_target <= t <= max_target)
        if not targets:
            continue
        row = {"nums": nums, "target": rng.choice(targets)}
        key = problem_key(row)
        if key in exclude:
            continue
        if distinct:
            exclude.add(key)
        rows.append(row)
        bar.update(1)
    bar.close()
    return rows


def problem_key(row: dict) -> tuple:
    """Identity of a problem regardless of number order."""
    return tuple(sorted(row["nums"])), row["target"]


# "Using the numbers [44, 19, 35], create an equation that equals 98." (TinyZero's wording)
_STATED = re.compile(r"numbers\s*\[([0-9,\s]{1,200})\].{0,200}?\bequals?\s+(-?[0-9]+)", re.DOTALL)


def parse_problem(text: str) -> dict | None:
    """The problem {"nums", "target"} a prompt in TinyZero's wording states, or None: how rows of
    a fixed prompt set (the warm-start data) are matched against held-out problems."""
    match = _STATED.search(text) if isinstance(text, str) else None
    if match is None:
        return None
    nums = [int(x) for x in re.findall(r"[0-9]+", match.group(1))]
    return {"nums": nums, "target": int(match.group(2))} if nums else None


def worked_solution(nums: list[int], target: int, think: bool = True) -> str | None:
    """A verified response for one problem: "<think>steps</think>\\n<answer>expr</answer>"."""
    solved = solve_steps(nums, target)
    if solved is None:
        return None
    expr, steps = solved
    answer = f"<answer>{expr}</answer>"
    response = f"<think>{', '.join(steps)}</think>\n{answer}" if think else answer
    assert score(response, nums, target) == CORRECT  # solver and verifier must agree
    return response


def synthetic_sft_rows(
    n: int,
    seed: int,
    template: str = "tinyzero",
    think: bool = True,
    system_prompt: str | None = None,
    progress: bool = False,
    **problem_kwargs,
) -> list[dict]:
    """`n` chat rows {"messages", "nums", "target"} whose assistant turn is a solver-verified
    worked solution: exact, unlimited data in place of the paper's GPT-4o augmentation."""
    rows = []
    for p in generate_problems(n, seed, progress=progress, **problem_kwargs):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages += [
            {"role": "user", "content": make_prompt(p["nums"], p["target"], template)},
            {"role": "assistant", "content": worked_solution(p["nums"], p["target"], think)},
        ]
        rows.append({"messages": messages, **p})
    return rows


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, disable=not enabled)
