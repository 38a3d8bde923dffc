"""Datasets for the stages, by hub name or local file, with schema checks that name the row.

Each public function here is a `_target_` of a configs/data/ preset and returns a
`datasets.Dataset` in TRL's conversational format ({"messages": [...]}).

Loaders of files and hub splits check and convert rows as Python objects, then build the Dataset
once (`_kept`), rather than through Dataset.map/filter: a user's file may mix types in one field
(text in one row, a list or null in the next) that Arrow cannot hold in one column, so the checks
that name a bad row (file, row, field) and drop and count untrainable ones must run before any
Dataset exists; a hub split goes through the same checks, as rows, so both paths give the same
messages and counts.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Literal

import datasets
import pyarrow.parquet as pq

from rlft.errors import UserError
from rlft.tasks import countdown, ifcheck

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def load_rows(path: str, split: str = "train", max_rows: int | None = None) -> tuple[list[dict], str]:
    """Rows of a local .jsonl/.json/.parquet file or a hub dataset split, and a label for errors.

    A local JSONL file is parsed here, line by line, so a bad line is reported by number.
    """
    p = Path(path).expanduser()
    if p.suffix in LOCAL_SUFFIXES or p.exists():
        if not p.is_file():
            raise UserError(f"data file {str(p)!r} {'is not a file' if p.exists() else 'does not exist'}")
        if p.suffix == ".parquet":
            try:
                rows = pq.read_table(p).to_pylist()
            except Exception as e:  # pyarrow's many error types: all one line for the user
                raise UserError(f"data file {str(p)!r} cannot be read as parquet ({str(e).splitlines()[0]})") from None
        elif p.suffix == ".json":
            rows = _read_json(p)
        else:
            rows = _read_jsonl(p, max_rows)
        if not rows:
            raise UserError(f"data file {str(p)!r} has no rows")
        return rows[:max_rows] if max_rows else rows, str(p)
    try:
        ds = datasets.load_dataset(path, split=split)
    except Exception as e:  # offline, unknown name, unknown split: all one line for the user
        raise UserError(f"dataset {path!r} (split {split!r}) cannot be loaded: {str(e).splitlines()[0]}") from None
    if max_rows:
        ds = ds.select(range(min(max_rows, len(ds))))
    return ds.to_list(), f"{path}[{split}]"


def _read_jsonl(p: Path, max_rows: int | None) -> list[dict]:
    rows = []
    try:
        with p.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise UserError(f"{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
                if max_rows and len(rows) >= max_rows:
                    break
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"data file {str(p)!r} cannot be read ({e})") from None
    return rows


def _read_json(p: Path) -> list[dict]:
    try:
        rows = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"data file {str(p)!r} cannot be read as JSON ({e})") from None
    if not isinstance(rows, list):
        raise UserError(f"data file {str(p)!r}: expected a JSON list of rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"data file {str(p)!r}: row {i}: expected a JSON object, got {json.dumps(row)[:40]}")
    return rows


def _require(row: dict, fields: tuple[str, ...], where: str, i: int) -> None:
    for field in fields:
        if field not in row or row[field] is None:
            raise UserError(f"{where}: row {i}: missing required field {field!r}")


def _with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + messages


def first_turn_sft_dataset(path: str, split: str = "train", system_prompt: str | None = None,
                           max_rows: int | None = None, min_kept_fraction: float = 0.5,
                           system_rows: Literal["keep", "drop"] = "keep"):
    """SmolTalk-style chats ({"messages": [...]}) cut to [system, first user, first assistant].

    A row's own system turn is kept verbatim (smol-smoltalk's rewrite/summarise rows carry their
    instruction there); `system_prompt` goes only to rows without one. system_rows="drop" drops
    rows that open with a system turn instead, as the paper's authors did (experiment=paper_if_sft*):
    every row then trains under `system_prompt`. Rows that cannot be trained
    on are dropped and counted by reason in the dataset's `dropped` (the SFT model card reports
    it); fewer than `min_kept_fraction` of the rows surviving stops the run (wrong schema, most
    likely).
    """
    rows, where = load_rows(path, split, max_rows)
    if not any("messages" in row for row in rows):  # a file of some other schema: say so, not "all dropped"
        raise UserError(f"{where}: row 0: missing required field 'messages'")
    out, dropped = [], Counter()
    for row in rows:
        turns, reason = _first_exchange(row.get("messages"))
        if not reason and system_rows == "drop" and turns[0]["role"] == "system":
            reason = "opens with a system turn (system_rows=drop)"
        if reason:
            dropped[reason] += 1
        else:
            out.append({"messages": turns if turns[0]["role"] == "system" else _with_system(turns, system_prompt)})
    return _kept(out, dropped, len(rows), where, min_kept_fraction)


def _first_exchange(messages) -> tuple[list[dict] | None, str | None]:
    """([optional system, user, assistant], None) from a chat's leading turns, or (None, why not)."""
    if not isinstance(messages, list) or not messages:
        return None, "no messages"
    head = messages[:3] if isinstance(messages[0], dict) and messages[0].get("role") == "system" else messages[:2]
    roles = [m.get("role") if isinstance(m, dict) else None for m in head]
    if roles[-2:] != ["user", "assistant"]:
        return None, "no user->assistant start"
    if not all(isinstance(m.get("content"), str) for m in head):
        return None, "non-text content"
    if not all(m["content"].strip() for m in head):
        return None, "empty turn"
    return [{"role": m["role"], "content": m["content"]} for m in head], None


def _reasons(dropped: Counter) -> str:
    return ", ".join(f"{n} {why}" for why, n in dropped.most_common()) or "none"


def _kept(out: list[dict], dropped: Counter, total: int, where: str, min_kept_fraction: float = 0.0):
    """The rows a loader kept, as a Dataset carrying `dropped` (reason -> rows; the model card reads
    it through dropped_rows), or one line when none, or too few, survive: a file whose rows are all
    empty must not train (TRL would fit the end-of-turn token alone and write DONE)."""
    if not out:
        raise UserError(f"{where}: no usable rows: all {total} rows dropped ({_reasons(dropped)})")
    if len(out) < min_kept_fraction * total:
        raise UserError(f"{where}: only {len(out)} of {total} rows can be trained on "
                        f"(min_kept_fraction={min_kept_fraction}); dropped: {_reasons(dropped)}")
    ds = datasets.Dataset.from_list(out)
    ds.dropped = dict(dropped)  # reason -> rows; read by dropped_rows() for the model card
    return ds


def _blank(text) -> bool:
    """Text a row cannot be trained on: none, or only whitespace."""
    return not str(text if text is not None else "").strip()


def dropped_rows(dataset) -> str:
    """The model card's line for rows a loader dropped: "2 of 10 (1 empty turn, 1 no messages)";
    "0" for loaders that drop none."""
    dropped = getattr(dataset, "dropped", None) or {}
    total = sum(dropped.values())
    return f"{total} of {len(dataset) + total} ({_reasons(Counter(dropped))})" if total else "0"


def query_completion_sft_dataset(path: str, split: str = "train", system_prompt: str | None = None,
                                 max_rows: int | None = None, prompt_field: str = "query",
                                 completion_field: str = "completion", heldout: list[dict] | None = None):
    """Rows {query, completion} (the Countdown warm-start set) as one user -> assistant turn.

    A row whose query states a `heldout` Countdown problem (in TinyZero's wording, read by
    countdown.parse_problem) is dropped and counted, so held-out evaluation stays unseen; so is a
    row whose query or completion is empty (as first_turn_sft_dataset drops an empty turn)."""
    rows, where = load_rows(path, split, max_rows)
    exclude = {countdown.problem_key(p) for p in heldout or []}
    out, dropped = [], Counter()
    for i, row in enumerate(rows):
        _require(row, (prompt_field, completion_field), where, i)
        if _blank(row[prompt_field]) or _blank(row[completion_field]):
            dropped["empty turn"] += 1
            continue
        stated = countdown.parse_problem(str(row[prompt_field])) if exclude else None
        if stated is not None and countdown.problem_key(stated) in exclude:
            dropped["held-out problem"] += 1
            continue
        turn = [
            {"role": "user", "content": str(row[prompt_field])},
            {"role": "assistant", "content": str(row[completion_field])},
        ]
        out.append({"messages": _with_system(turn, system_prompt)})
    return _kept(out, dropped, len(rows), where)


def countdown_sft_dataset(n: int, seed: int, template: str, think: bool, system_prompt: str | None,
                          problems: dict, heldout: list[dict] | None = None, distinct: bool = True):
    """`n` generated Countdown problems with solver-verified worked solutions, none of them in
    `heldout` (the evaluation problems), as chat rows."""
    exclude = {countdown.problem_key(p) for p in heldout or []}
    rows = countdown.synthetic_sft_rows(
        n, seed, template=template, think=think, system_prompt=system_prompt, progress=True,
        exclude=exclude, distinct=distinct, **problems,
    )
    return datasets.Dataset.from_list([{"messages": r["messages"]} for r in rows])


def countdown_prompt_dataset(n: int, seed: int, template: str, system_prompt: str | None, problems: dict,
                             heldout: list[dict] | None = None, distinct: bool = True):
    """`n` generated Countdown problems as on-policy prompts ({prompt, nums, target}: the verifier
    reward reads nums and target), none of them in `heldout`."""
    exclude = {countdown.problem_key(p) for p in heldout or []}
    rows = countdown.generate_problems(n, seed + 1, exclude=exclude, distinct=distinct, **problems)
    return datasets.Dataset.from_list([
        {"prompt": _with_system([{"role": "user", "content": countdown.make_prompt(r["nums"], r["target"], template)}],
                                system_prompt), "nums": r["nums"], "target": r["target"]} for r in rows])


def countdown_hub_problems(path: str, split: str = "train", n: int = 200, seed: int = 0) -> list[dict]:
    """`n` Countdown problems [{"nums", "target"}] drawn by `seed` from rows in
    Jiayi-Pan/Countdown-Tasks-3to4's schema (target: int, nums: list of int), by hub id or local
    .jsonl/.json/.parquet: the authors' evaluation source, as held-out problems.

    Row indices are drawn without replacement from one seeded stream, so the draw is the same on
    every machine and the first k of a draw of n are the draw of k (num_prompts=50 evaluates a
    subset of the 200). Every row is schema-checked, so a bad file fails whatever the seed.
    """
    rows, where = load_rows(path, split)
    problems = [_countdown_problem(row, where, i) for i, row in enumerate(rows)]
    if not 1 <= n <= len(problems):
        raise UserError(f"{where}: cannot draw n={n} held-out problems from {len(problems)} rows")
    rng = random.Random(seed)
    picked: dict[int, None] = {}  # insertion-ordered set of row indices
    while len(picked) < n:
        picked.setdefault(rng.randrange(len(problems)))
    return [problems[i] for i in picked]


def _countdown_problem(row: dict, where: str, i: int) -> dict:
    """One {"nums", "target"} row, checked: integers only (bool is not a number here)."""
    _require(row, ("nums", "target"), where, i)
    nums, target = row["nums"], row["target"]
    if not isinstance(nums, list) or not nums or not all(type(x) is int for x in nums):
        raise UserError(f"{where}: row {i}: 'nums' must be a non-empty list of integers, got {nums!r:.60}")
    if type(target) is not int:
        raise UserError(f"{where}: row {i}: 'target' must be an integer, got {target!r:.60}")
    return {"nums": list(nums), "target": target}


def ifcheck_prompt_dataset(n: int, seed: int, system_prompt: str | None = None, heldout: list[dict] | None = None):
    """Generated ifcheck prompts as on-policy prompts ({prompt, constraints (JSON)}: the rule judge
    reward reads the constraints), none of them held out."""
    rows = ifcheck.preference_rows(n, seed + 1, exclude={p["prompt"] for p in heldout or []})
    return datasets.Dataset.from_list([
        {"prompt": _with_system([{"role": "user", "content": r["prompt"]}], system_prompt),
         "constraints": r["constraints"]} for r in rows])


def ifeval_prompt_dataset(n: int, seed: int, system_prompt: str | None = None, heldout: list[dict] | None = None):
    """Generated IFEval prompts (rlft.tasks.ifeval) as on-policy prompts, none of them held out: the
    conversational prompt plus the columns IFEval's checkers read (instruction_id_list, kwargs as
    JSON, the prompt's own text: a few checkers are built from it)."""
    from rlft.tasks import ifeval  # if-verifiable loads at first check, not here

    rows = ifeval.train_rows(n, seed + 1, heldout=heldout or [])
    return datasets.Dataset.from_list([
        {"prompt": _with_system([{"role": "user", "content": r["prompt"]}], system_prompt),
         "instruction_id_list": r["instruction_id_list"], "kwargs": json.dumps(r["kwargs"]), "prompt_text": r["prompt"]}
        for r in rows])


def _preference_row(prompt: list[dict], chosen: str, rejected: str, score_chosen=None, score_rejected=None) -> dict:
    """TRL's conversational preference format, plus the scores a regression reward model needs."""
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "score_chosen": None if score_chosen is None else float(score_chosen),
            "score_rejected": None if score_rejected is None else float(score_rejected)}


def ultrafeedback_preference_dataset(path: str, split: str = "train_prefs", system_prompt: str | None = None,
                                     max_rows: int | None = None):
    """UltraFeedback binarized rows (chosen / rejected message lists, score_chosen,
    score_rejected) as TRL preference rows: a shared prompt and one assistant turn each. A row with
    an empty prompt, chosen or rejected text, or whose chosen answer is the rejected one, is dropped
    and counted; none left stops the run."""
    rows, where = load_rows(path, split, max_rows)
    out, dropped = [], Counter()
    for i, row in enumerate(rows):
        _require(row, ("chosen", "rejected", "score_chosen", "score_rejected"), where, i)
        chosen, rejected = row["chosen"], row["rejected"]
        for field, msgs in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(msgs, list) or len(msgs) < 2 or not isinstance(msgs[-1], dict) \
                    or msgs[-1].get("role") != "assistant":
                raise UserError(f"{where}: row {i}: {field!r} must be a message list ending with an assistant turn")
            for j, m in enumerate(msgs):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
                    raise UserError(f"{where}: row {i}: {field!r} message {j} must be an object with 'role' and "
                                    f"'content', got {json.dumps(m)[:80]}")
        for field in ("score_chosen", "score_rejected"):
            score = row[field]
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise UserError(f"{where}: row {i}: {field!r} must be a finite number, got {score!r}")
        prompt = [{"role": m["role"], "content": str(m["content"])} for m in chosen[:-1] if m.get("role") != "system"]
        if (all(_blank(m["content"]) for m in prompt if m["role"] == "user")
                or _blank(chosen[-1].get("content")) or _blank(rejected[-1].get("content"))):
            dropped["empty turn"] += 1
            continue
        if str(chosen[-1]["content"]).strip() == str(rejected[-1]["content"]).strip():
            dropped["chosen same as rejected"] += 1  # no preference to learn: DPO's loss sits at log 2
            continue
        out.append(_preference_row(_with_system(prompt, system_prompt), str(chosen[-1]["content"]),
                                   str(rejected[-1]["content"]), row["score_chosen"], row["score_rejected"]))
    return _kept(out, dropped, len(rows), where)


def ifcheck_preference_dataset(n: int, seed: int, system_prompt: str | None = None,
                               heldout: list[dict] | None = None):
    """Generated ifcheck pairs (chosen satisfies every constraint, rejected breaks one), none
    with a held-out prompt."""
    rows = ifcheck.preference_rows(n, seed, exclude={p["prompt"] for p in heldout or []})
    return datasets.Dataset.from_list([
        _preference_row(_with_system([{"role": "user", "content": r["prompt"]}], system_prompt),
                        r["chosen"], r["rejected"], r["score_chosen"], r["score_rejected"]) for r in rows])


def ifcheck_sft_dataset(n: int, seed: int, system_prompt: str | None = None, heldout: list[dict] | None = None):
    """The chosen side of generated ifcheck pairs as chat rows (SFT before DPO)."""
    pairs = ifcheck_preference_dataset(n, seed, system_prompt, heldout)
    return pairs.map(lambda r: {"messages": r["prompt"] + r["chosen"]}, remove_columns=pairs.column_names)


def ultrafeedback_prompt_dataset(path: str, split: str = "train_gen", system_prompt: str | None = None,
                                 max_rows: int | None = None):
    """UltraFeedback prompts (train_gen) as TRL conversational prompts, for on-policy stages."""
    rows, where = load_rows(path, split, max_rows)
    out = []
    for i, row in enumerate(rows):
        _require(row, ("prompt",), where, i)
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise UserError(f"{where}: row {i}: 'prompt' must be non-empty text")
        out.append({"prompt": _with_system([{"role": "user", "content": row["prompt"]}], system_prompt)})
    return datasets.Dataset.from_list(out)


def ultrafeedback_heldout_prompts(path: str, split: str = "test_gen", n: int = 400) -> list[dict]:
    """The first `n` UltraFeedback prompts of a held-out split, as rows {prompt} for win-rates
    (the paper judges 400 held-out prompts)."""
    rows, where = load_rows(path, split, n)
    out = []
    for i, row in enumerate(rows):
        _require(row, ("prompt",), where, i)
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise UserError(f"{where}: row {i}: 'prompt' must be non-empty text")
        out.append({"prompt": row["prompt"]})
    return out


def smoltalk_heldout_prompts(path: str, split: str = "test", n: int = 200, seed: int = 0) -> list[dict]:
    """`n` win-rate prompts drawn by `seed` from SmolTalk-style chats ({"messages": [...]}; by hub id
    or local .jsonl/.json/.parquet): the first user turn of each drawn row, as rows {prompt, source}.
    The authors' own evaluation judged 200 prompts of smol-smoltalk's `test` split.

    A row is usable when its chat opens, after an optional system turn, with a user turn of
    non-empty text (no answer needed); other rows are skipped before the draw. The row's own
    system turn is not part of the prompt. The draw is countdown_hub_problems': usable rows without
    replacement from one seeded stream, so it is the same on every machine and the first k of a
    draw of n are the draw of k (num_prompts=50 judges a subset of the 200).
    """
    rows, where = load_rows(path, split)
    if not any(isinstance(row, dict) and "messages" in row for row in rows):  # another schema: say so
        raise UserError(f"{where}: row 0: missing required field 'messages'")
    usable = [{"prompt": text, "source": row.get("source")} for row in rows
              if isinstance(row, dict) and (text := _first_user_text(row.get("messages"))) is not None]
    if not 1 <= n <= len(usable):
        raise UserError(f"{where}: cannot draw n={n} held-out prompts from {len(usable)} usable rows "
                        f"(of {len(rows)}; a usable row opens with a user turn of text)")
    rng = random.Random(seed)
    picked: dict[int, None] = {}  # insertion-ordered set of row indices
    while len(picked) < n:
        picked.setdefault(rng.randrange(len(usable)))
    return [usable[i] for i in picked]


def _first_user_text(messages) -> str | None:
    """The text of the user turn a chat opens with (after an optional system turn), or None."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return None
    turn = messages[1] if messages[0].get("role") == "system" and len(messages) > 1 else messages[0]
    content = turn.get("content")
    if turn.get("role") != "user" or not isinstance(content, str) or not content.strip():
        return None
    return content


def count_over_length(tokenizer, rows, max_length: int | None) -> int:
    """How many rows render (chat template) longer than `max_length` tokens: SFT rows
    ({"messages"}) or preference pairs (prompt + chosen, prompt + rejected; a pair counts once).
    TRL truncates them (SFT: max_length; DPO: truncation_mode), so rlft counts and reports them."""
    if max_length is None:
        return 0
    over, batch, owners = 0, [], []

    def flush():
        nonlocal over, batch, owners
        lengths = [len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]]
        over += len({owner for owner, n in zip(owners, lengths) if n > max_length})
        batch, owners = [], []

    for i, row in enumerate(rows):
        chats = [row["messages"]] if "messages" in row else [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]]
        for chat in chats:
            batch.append(tokenizer.apply_chat_template(chat, tokenize=False))
            owners.append(i)
        if len(batch) >= 2048:
            flush()
    if batch:
        flush()
    return over
