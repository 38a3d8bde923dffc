"""Countdown: TinyZero scoring semantics, the exact solver, problem and data generation."""

import random
import time

import pytest

from rlft.tasks import countdown
from rlft.tasks.countdown import extract_answer, score

N = [3, 7, 12]  # target 16 unless a case says otherwise

# (response, nums, target, expected score, what the case checks)
CASES = [
    ("<answer>12+7-3</answer>", N, 16, 1.0, "correct"),
    ("<answer> 12 + 7 - 3 </answer>", N, 16, 1.0, "spaces inside"),
    ("<answer>12\t+\t7 - 3</answer>", N, 16, 1.0, "tabs"),
    ("<answer>\n12+7-3\n</answer>", N, 16, 1.0, "answer on its own lines"),
    ("<answer>(12+7)-3</answer>", N, 16, 1.0, "parentheses"),
    ("<answer>(12)+(7)-(3)</answer>", N, 16, 1.0, "parenthesised atoms"),
    ("<answer>7+12-3</answer>", N, 16, 1.0, "another order"),
    ("<answer>12+7-3</answer>", [12, 3, 7], 16, 1.0, "nums given in another order"),
    ("<think>12+7=19, 19-3=16</think>\n<answer>12+7-3</answer>", N, 16, 1.0, "think then answer"),
    ("Sure!<answer>12+7-3</answer> Hope that helps.", N, 16, 1.0, "text around"),
    ("<answer>12+7+3</answer>", N, 16, 0.1, "wrong value"),
    ("<answer>12*7-3</answer>", N, 16, 0.1, "wrong value, right numbers"),
    ("<answer>16</answer>", N, 16, 0.1, "only the target"),
    ("<answer>12+7</answer>", N, 16, 0.1, "a number missing"),
    ("<answer>12+7-3+3-3</answer>", N, 16, 0.1, "extra numbers"),
    ("<answer>12+12-3</answer>", N, 16, 0.1, "a number reused, one missing"),
    ("<answer>12+7-4</answer>", N, 16, 0.1, "a number not given"),
    ("<answer>3+3+10</answer>", [3, 3, 10], 16, 1.0, "duplicate given numbers, each used"),
    ("<answer>3+13</answer>", [3, 3, 10], 16, 0.1, "duplicate given number used once"),
    ("12+7-3", N, 16, 0.0, "no tag"),
    ("", N, 16, 0.0, "empty response"),
    ("<answer>12+7-3", N, 16, 0.0, "unclosed tag"),
    ("12+7-3</answer>", N, 16, 0.0, "closing tag only"),
    ("<ANSWER>12+7-3</ANSWER>", N, 16, 0.0, "tags are case-sensitive"),
    ("<answer>12+7+3</answer> then <answer>12+7-3</answer>", N, 16, 1.0, "the last tag counts"),
    ("<answer>12+7-3</answer> then <answer>12+7+3</answer>", N, 16, 0.1, "right answer not in last tag"),
    ("<answer>12+7-3</answer> <answer>", N, 16, 1.0, "trailing unclosed tag ignored"),
    ("<answer>12+7-3</answer></answer>", N, 16, 1.0, "stray closing tag"),
    ("<answer>bad<answer>12+7-3</answer>", N, 16, 0.1, "nested opening tag is text"),
    ("<answer></answer>", N, 16, 0.1, "empty answer"),
    ("<answer>   </answer>", N, 16, 0.1, "blank answer"),
    ("<answer>5/(3-3)</answer>", [3, 3, 5], 5, 0.1, "division by zero"),
    ("<answer>5*3/(3-3)</answer>", [3, 3, 5], 5, 0.1, "division by zero later"),
    ("<answer>6*4/3</answer>", [3, 4, 6], 8, 1.0, "exact division"),
    ("<answer>6/(1-3/4)</answer>", [1, 3, 4, 6], 24, 1.0, "fractional intermediate"),
    ("<answer>3/2*1</answer>", [1, 2, 3], 1.5, 1.0, "non-integer target"),
    ("<answer>12+7-3</answer>", N, 16.000001, 1.0, "within 1e-5"),
    ("<answer>12+7-3</answer>", N, 16.0001, 0.1, "outside 1e-5"),
    ("<answer>-3-7+12</answer>", N, 2, 1.0, "unary minus"),
    ("<answer>-(3-7)+12</answer>", N, 16, 1.0, "unary minus on a group"),
    ("<answer>--12+7-3</answer>", N, 16, 1.0, "double unary minus (Python's eval agrees)"),
    ("<answer>+12+7-3</answer>", N, 16, 1.0, "unary plus"),
    ("<answer>3-12+7</answer>", N, -2, 1.0, "negative target"),
    ("<answer>5+3+0</answer>", [0, 3, 5], 8, 1.0, "zero is a number"),
    ("<answer>5+3+00</answer>", [0, 3, 5], 8, 1.0, "00 is zero for eval too"),
    ("<answer>012+7-3</answer>", N, 16, 0.1, "leading zero: a syntax error for eval"),
    ("<answer>12+07-3</answer>", N, 16, 0.1, "leading zero inside"),
    ("<answer>12+7-3.0</answer>", N, 16, 0.1, "decimal adds a number"),
    ("<answer>12+7-3.</answer>", N, 16, 0.1, "decimal point (eval would accept; we do not)"),
    ("<answer>1.5*2</answer>", [1, 2, 5], 3, 0.1, "decimal literal"),
    ("<answer>99999999999999999999*0+16</answer>", N, 16, 0.1, "huge number not given"),
    ("<answer>1000000000000000000000000000000*1*1</answer>", [10**30, 1, 1], 10**30, 1.0, "huge given number"),
    ("<answer>١٢+7-3</answer>", N, 16, 0.1, "Arabic-Indic digits"),
    ("<answer>１２+７-３</answer>", N, 16, 0.1, "fullwidth digits"),
    ("<answer>2**3</answer>", [2, 3], 8, 0.1, "power (eval would give 8; not an allowed operator)"),
    ("<answer>12//1+7-3</answer>", [1, 3, 7, 12], 16, 0.1, "floor division is not allowed"),
    ("<answer>12x7-3</answer>", N, 16, 0.1, "x for times"),
    ("<answer>12÷3+7</answer>", N, 16, 0.1, "division sign"),
    ("<answer>abs(12)+7-3</answer>", N, 16, 0.1, "function call"),
    ("<answer>__import__('os').system('12+7-3')</answer>", N, 16, 0.1, "code injection"),
    ("<answer>a+7-3</answer>", N, 16, 0.1, "a name"),
    ("<answer>12+7-3 # 16</answer>", N, 16, 0.1, "comment"),
    ("<answer>12+7-3=16</answer>", N, 16, 0.1, "equation with equals sign"),
    ("<answer>12+7-3;</answer>", N, 16, 0.1, "statement separator"),
    ("<answer>(12+7)-3)</answer>", N, 16, 0.1, "extra closing parenthesis"),
    ("<answer>((12+7)-3</answer>", N, 16, 0.1, "missing closing parenthesis"),
    ("<answer>()12+7-3</answer>", N, 16, 0.1, "empty parentheses"),
    ("<answer>12 7 - 3</answer>", N, 16, 0.1, "missing operator"),
    ("<answer>12+7-3-</answer>", N, 16, 0.1, "trailing operator"),
    ("<answer>*12+7-3</answer>", N, 16, 0.1, "leading binary operator"),
    ("<answer>" + "(" * 60 + "12+7-3" + ")" * 60 + "</answer>", N, 16, 1.0, "deep but allowed nesting"),
    ("<answer>" + "(" * 100 + "12+7-3" + ")" * 100 + "</answer>", N, 16, 0.1, "nesting past the bound"),
    ("<answer>" + "-" * 100 + "12+7-3</answer>", N, 16, 0.1, "unary chain past the bound"),
    ("<answer>12" + " " * 300 + "+7-3</answer>", N, 16, 0.1, "answer longer than the bound"),
    ("<answer>12+7-3</answer>" * 10_000, N, 16, 1.0, "long response, many tags"),
    (None, N, 16, 0.0, "not a string"),
]


@pytest.mark.parametrize("response,nums,target,expected,why", CASES, ids=[c[4] for c in CASES])
def test_tinyzero_semantics(response, nums, target, expected, why):
    assert score(response, nums, target) == expected
    assert countdown.is_correct(response, nums, target) == (expected == 1.0)


def test_case_table_is_broad():
    assert len(CASES) >= 60
    assert {c[3] for c in CASES} == {0.0, 0.1, 1.0}


def test_extract_answer():
    assert extract_answer("x <answer> 1+2 </answer> y") == "1+2"
    assert extract_answer("<answer>a</answer><answer>b</answer>") == "b"
    assert extract_answer("no tags") is None


def test_solver_round_trip_on_1000_generated_problems():
    problems = countdown.generate_problems(1000, seed=7)
    for p in problems:
        expr = countdown.solve(p["nums"], p["target"])
        assert expr is not None, p
        assert score(f"<answer>{expr}</answer>", p["nums"], p["target"]) == 1.0, (p, expr)


def test_solver_says_none_when_unsolvable():
    assert countdown.solve([1, 1, 1], 100) is None
    assert countdown.solve([2, 2], 5) is None
    assert 100 not in countdown.reachable_targets([1, 1, 1])


def test_solver_finds_fraction_only_solutions():
    expr = countdown.solve([1, 3, 4, 6], 24)  # only 6/(1-3/4)
    assert score(f"<answer>{expr}</answer>", [1, 3, 4, 6], 24) == 1.0


def test_generate_problems_defaults_match_paper_shape_and_are_deterministic():
    a = countdown.generate_problems(300, seed=3)
    assert a == countdown.generate_problems(300, seed=3)
    assert a != countdown.generate_problems(300, seed=4)
    assert {len(p["nums"]) for p in a} == {3, 4}
    assert all(0 <= n <= 99 for p in a for n in p["nums"])
    assert all(isinstance(p["target"], int) and 1 <= p["target"] <= 100 for p in a)
    assert len({countdown.problem_key(p) for p in a}) == 300  # distinct


def test_generate_problems_excludes_given_keys():
    heldout = countdown.generate_problems(50, seed=1, num_counts=(3,), min_num=1, max_num=5)
    keys = {countdown.problem_key(p) for p in heldout}
    train = countdown.generate_problems(200, seed=2, num_counts=(3,), min_num=1, max_num=5,
                                        exclude=keys, distinct=False)
    assert not keys & {countdown.problem_key(p) for p in train}


def test_generate_problems_reports_an_impossible_request():
    with pytest.raises(ValueError, match="could not generate"):
        countdown.generate_problems(100, seed=0, num_counts=(3,), min_num=1, max_num=2)


def test_synthetic_rows_are_verified_chats():
    rows = countdown.synthetic_sft_rows(200, seed=5, template="compact", system_prompt="Be exact.")
    for row in rows:
        system, user, assistant = row["messages"]
        assert system == {"role": "system", "content": "Be exact."}
        assert user["content"] == countdown.make_prompt(row["nums"], row["target"], "compact")
        assert assistant["content"].startswith("<think>")
        assert score(assistant["content"], row["nums"], row["target"]) == 1.0


def test_worked_solution_prefers_plain_steps():
    assert countdown.worked_solution([3, 7, 12], 16) == "<think>7-3=4, 12+4=16</think>\n<answer>12+7-3</answer>"
    assert countdown.worked_solution([3, 7, 12], 16, think=False) == "<answer>12+7-3</answer>"


def test_prompts():
    tz = countdown.make_prompt([1, 2, 3], 6, "tinyzero")
    assert "Using the numbers [1, 2, 3], create an equation that equals 6." in tz
    assert tz.endswith("Assistant: Let me solve this step by step.")
    assert countdown.make_prompt([1, 2, 3], 6, "compact") == "Numbers: 1 2 3. Target: 6."
    with pytest.raises(ValueError, match="unknown countdown template"):
        countdown.make_prompt([1], 1, "nope")


def _random_text(rng: random.Random) -> str:
    pieces = ["<answer>", "</answer>", "<think>", "(", ")", "+", "-", "*", "/", "**", " ", "\n", "0",
              "7", "12", "3", "99999999999999999999", "١", "é", "\x00", "\ud7ff", "eval(", "1e308", "."]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 80)))


def test_arbitrary_text_never_raises_and_stays_fast():
    rng = random.Random(0)
    worst = 0.0
    for _ in range(20_000):
        text = _random_text(rng)
        nums = [rng.randint(0, 99) for _ in range(rng.randint(0, 5))]
        start = time.perf_counter()
        assert score(text, nums, rng.randint(-5, 100)) in (0.0, 0.1, 1.0)
        worst = max(worst, time.perf_counter() - start)
    assert worst < 5.0  # a hang guard (bounded by design; the per-call figure is `make bench`'s, fuzz_inputs.py)


def test_huge_response_is_linear_time():
    start = time.perf_counter()
    assert score("<answer>" * 200_000 + "12+7-3</answer>", N, 16) == 0.1  # last open tag pairs late
    assert score("</answer><answer>" * 100_000, N, 16) == 0.1
    assert time.perf_counter() - start < 60  # a hang guard: ~0.1 s linear, hours if quadratic in 3 MB


# --------------------------------------------------------------------------- the scoring rule

# (response, rlft score, tinyzero score, what the case checks). The authors' evaluation cuts at
# <|im_end|> and strips, then TinyZero reads only the text after the last "\n" (its
# `split('\n')[-1]`); rlft reads the last answer anywhere.
RULE_CASES = [
    ("<think>12+7=19</think>\n<answer>12+7-3</answer>", 1.0, 1.0, "answer on the last line"),
    ("<answer>12+7-3</answer>\nHope that helps.", 1.0, 0.0, "answer not on the last line"),
    ("<answer>12+7-3</answer>\n", 1.0, 1.0, "trailing newline: stripped, as the authors' evaluation does"),
    ("<answer>12+7-3</answer>\n\n", 1.0, 1.0, "trailing blank lines: stripped"),
    ("<answer>12+7-3</answer>\n   ", 1.0, 1.0, "trailing newline then spaces: stripped"),
    ("<answer>12+7-3</answer>\r\n", 1.0, 1.0, "CRLF ending: stripped"),
    ("<answer>12+7-3</answer>\n<|im_end|>\nuser\nmore", 1.0, 1.0, "cut at <|im_end|> first"),
    ("<answer>12+7-3</answer><|im_end|><answer>12+7+3</answer>", 0.1, 1.0, "nothing after <|im_end|> counts"),
    ("<answer>12+7-3</answer>\r", 1.0, 1.0, "a lone CR does not split (TinyZero splits on \\n only)"),
    ("<answer>12+7-3</answer>\u2028", 1.0, 1.0, "nor does a Unicode line separator"),
    ("<answer>12+7-3</answer>   ", 1.0, 1.0, "trailing spaces, no newline"),
    ("<answer>\n12+7-3\n</answer>", 1.0, 0.0, "answer spanning lines"),
    ("<answer>12+7+3</answer>\n<answer>12+7-3</answer>", 1.0, 1.0, "right answer on the last line"),
    ("<answer>12+7-3</answer>\n<answer>12+7+3</answer>", 0.1, 0.1, "wrong answer on the last line"),
    ("x\n<answer>12+7+3</answer> then <answer>12+7-3</answer>", 1.0, 1.0, "several on the last line: the last"),
    ("x\n<answer>12+7-3</answer> then <answer>12+7+3</answer>", 0.1, 0.1, "several on the last line, last wrong"),
    ("<answer>12+7-3</answer>\n<answer>12+7-3", 1.0, 0.0, "unclosed answer on the last line"),
    ("<answer>12+7+3</answer>\ndone", 0.1, 0.0, "format credit only from the last line"),
]


@pytest.mark.parametrize("response,rlft,tinyzero,why", RULE_CASES, ids=[c[3] for c in RULE_CASES])
def test_scoring_rules(response, rlft, tinyzero, why):
    assert score(response, N, 16) == rlft  # the default rule is rlft's, unchanged
    assert score(response, N, 16, rule="rlft") == rlft
    assert score(response, N, 16, rule="tinyzero") == tinyzero
    assert countdown.is_correct(response, N, 16, rule="tinyzero") == (tinyzero == 1.0)
    assert (extract_answer(response, "tinyzero") is None) == (tinyzero == 0.0)


def test_tinyzero_rule_equals_rlft_rule_when_the_answer_is_on_the_last_line():
    # every one-line case of the semantics table, alone and after lines of other text
    one_line = [c for c in CASES if isinstance(c[0], str) and "\n" not in c[0]]
    assert len(one_line) >= 50
    for response, nums, target, expected, why in one_line:
        for text in (response, "<think>a\nb <answer>1</answer>\n</think>\n" + response):
            assert score(text, nums, target, rule="tinyzero") == expected, why


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="'last_line'"):
        score("<answer>12+7-3</answer>", N, 16, rule="last_line")
    assert countdown.SCORERS == ("rlft", "tinyzero")


def test_tinyzero_rule_is_linear_time():
    start = time.perf_counter()
    assert score("<answer>12+7-3</answer>\n" * 200_000 + "<answer>" * 100_000, N, 16, rule="tinyzero") == 0.0
    assert score("\n" * 1_000_000 + "<answer>12+7-3</answer>", N, 16, rule="tinyzero") == 1.0
    assert time.perf_counter() - start < 60  # a hang guard: ~0.1 s linear, hours if quadratic in 1 MB


def test_parse_problem_reads_the_tinyzero_prompt():
    for p in countdown.generate_problems(50, seed=5):
        assert countdown.parse_problem(countdown.make_prompt(p["nums"], p["target"])) == p
    assert countdown.parse_problem("Using the numbers [3, 1], make 4.") is None
    assert countdown.parse_problem(countdown.make_prompt([1, 2], 3, "compact")) is None
    assert countdown.parse_problem(None) is None
