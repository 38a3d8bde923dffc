"""A task's one home: how its prompts read, how a response is scored, what its held-out metrics are.

    task = build(cfg.data.task)          # the data preset's task node (null: none, e.g. data=smoltalk)
    task.user_text(row)                  # the user turn a row asks (a Countdown problem, a prompt with constraints)
    v = task.verdict(response, row)      # Verdict(score 0..1, correct, followed: one bool per instruction)
    task.summarize([v, ...])             # its held-out metrics, each {"value", "ci95", "n"}

Greedy held-out evaluation and best-of-N (rlft.evaluate), stage=bon's verifier, the RLOO reward
(rlft.reward_functions.task_reward) and stage=winrate's rule judge (rlft.judge.rule_judge) all score
through these methods, so a new task is one class here and one data preset in configs/data/:

    countdown.Countdown   TinyZero's verifier: 0 no answer, 0.1 wrong, 1 correct (data=countdown*)
    ifcheck.IfCheck       rlft's offline constraint rules (data=ifcheck)
    ifeval.IfEval         IFEval's instruction checkers, strict (data=ifeval)

A task reads only the row columns it names in `columns` (the RLOO reward gets them from the prompt
dataset) and never evaluates model output.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """One response judged: `score` in 0..1 (the reward, the best-of-N key), `correct` the task's exact
    success (Countdown: the answer is right; instruction tasks: every instruction followed), and
    `followed`, one bool per instruction where the task has instructions."""

    score: float
    correct: bool
    followed: tuple[bool, ...] = ()


class Task:
    """The contract every task implements (see the module docstring)."""

    name: str = "task"
    columns: tuple[str, ...] = ()   # the row fields verdict() reads
    shown: tuple[str, ...] = ()     # the row fields results.json's samples show beside each response
    instructions = False            # prompts two models' answers are compared on: stage=winrate takes the
                                    # task, stage=rloo also reports its win-rate against its start model

    def user_text(self, row: dict) -> str:
        raise NotImplementedError

    def verdict(self, response: str, row: dict) -> Verdict:
        raise NotImplementedError

    def summarize(self, verdicts: list[Verdict]) -> dict:
        raise NotImplementedError

    def describe(self) -> dict:
        """What results.json records about how this task scored (e.g. Countdown's answer rule)."""
        return {}

    def extra_heldout(self) -> dict[str, tuple[list[dict], int]]:
        """Further held-out sets the evaluation also answers, by name: (rows, rows dropped as uncheckable)."""
        return {}

    def missing_columns(self, row: dict) -> list[str]:
        return [c for c in self.columns if c not in row]
