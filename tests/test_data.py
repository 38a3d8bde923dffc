"""Dataset loaders: schemas, local files, and errors that name the file and row."""

import pytest
from conftest import write_jsonl

from rlft import data
from rlft.errors import UserError


DEFAULT = "You are a helpful assistant."
REWRITE = "You're an AI assistant for text re-writing. Rewrite the input text to make it more concise."


def smoltalk_rows() -> list[dict]:
    """Rows in smol-smoltalk's exact schema (messages, source): trainable ones, then malformed ones."""
    def chat(*turns, source="smol-rewrite"):
        return {"messages": [{"role": r, "content": c} for r, c in turns], "source": source}

    return [
        chat(("system", REWRITE), ("user", "The meeting, which was long, ended late."),
             ("assistant", "The long meeting ended late.")),
        chat(("user", "hi"), ("assistant", "hello"), ("user", "more"), ("assistant", "no"), source="smol-magpie-ultra"),
        chat(("user", "2+2?"), ("assistant", "4"), source="smol-constraints"),
        chat(("assistant", "I speak first"), ("user", "ok")),                      # assistant turn first
        chat(("user", "a question nobody answers")),                               # user turn, no answer
        chat(("system", REWRITE), ("assistant", "no user turn")),                  # system, then no user
        chat(("user", "  "), ("assistant", "answer to nothing")),                 # empty content
        chat(("system", REWRITE), ("user", "text"), ("assistant", "")),            # empty answer
        {"messages": [{"role": "user", "content": ["a", "list"]}, {"role": "assistant", "content": "x"}],
         "source": "smol-constraints"},                                             # non-string content
        {"messages": None, "source": "smol-summarize"},                             # missing messages
        {"source": "smol-summarize"},
    ]


def test_smoltalk_keeps_a_rows_own_system_turn_and_cuts_to_the_first_exchange(tmp_path):
    path = write_jsonl(tmp_path / "smol.jsonl", smoltalk_rows())
    ds = data.first_turn_sft_dataset(str(path), system_prompt=DEFAULT, min_kept_fraction=0.2)
    assert [row["messages"] for row in ds] == [
        [{"role": "system", "content": REWRITE},  # the rewrite instruction, verbatim, not the default
         {"role": "user", "content": "The meeting, which was long, ended late."},
         {"role": "assistant", "content": "The long meeting ended late."}],
        [{"role": "system", "content": DEFAULT},  # multi-turn: the first exchange only
         {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        [{"role": "system", "content": DEFAULT},
         {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]]
    assert ds.dropped == {"no user->assistant start": 3, "empty turn": 2, "non-text content": 1, "no messages": 2}
    assert data.dropped_rows(ds) == ("8 of 11 (3 no user->assistant start, 2 empty turn, 2 no messages, "
                                     "1 non-text content)")
    assert data.dropped_rows(data.query_completion_sft_dataset(
        str(write_jsonl(tmp_path / "w.jsonl", [{"query": "q", "completion": "c"}])))) == "0"


def test_smoltalk_drops_rows_that_open_with_a_system_turn_as_the_authors_did(tmp_path):
    """experiment=paper_if_sft: only rows that open with a user turn, each under the paper's prompt."""
    from rlft.config import compose

    path = write_jsonl(tmp_path / "smol.jsonl", smoltalk_rows())
    ds = data.first_turn_sft_dataset(str(path), system_prompt=DEFAULT, min_kept_fraction=0.1, system_rows="drop")
    assert [row["messages"][0]["content"] for row in ds] == [DEFAULT, DEFAULT]
    assert ds.dropped["opens with a system turn (system_rows=drop)"] == 1
    assert compose(["experiment=paper_if_sft"]).data.sft_dataset.system_rows == "drop"
    assert compose(["experiment=paper_if_sft_lora"]).data.sft_dataset.system_rows == "drop"
    assert compose(["data=smoltalk"]).data.sft_dataset.system_rows == "keep"


def test_smoltalk_stops_only_when_too_few_rows_survive(tmp_path):
    path = write_jsonl(tmp_path / "smol.jsonl", smoltalk_rows())  # 3 of 11 trainable
    with pytest.raises(UserError) as e:
        data.first_turn_sft_dataset(str(path))  # min_kept_fraction 0.5, as in configs/data/smoltalk.yaml
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"{path}: only 3 of 11 rows can be trained on")
    assert "3 no user->assistant start" in line
    assert len(data.first_turn_sft_dataset(str(path), min_kept_fraction=0.25)) == 3


def test_query_completion_rows_become_one_turn(tmp_path):
    path = write_jsonl(tmp_path / "warm.jsonl", [{"query": "Using the numbers [1, 2]...", "completion": "<answer>1+2</answer>"}])
    ds = data.query_completion_sft_dataset(path)
    assert [m["role"] for m in ds[0]["messages"]] == ["user", "assistant"]


def test_parquet_is_read(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"query": "q", "completion": "c"}]).to_parquet(str(tmp_path / "w.parquet"))
    assert len(data.query_completion_sft_dataset(str(tmp_path / "w.parquet"))) == 1


def test_bad_rows_are_named_by_file_and_row(tmp_path):
    path = write_jsonl(tmp_path / "warm.jsonl", [{"query": "q", "completion": "c"}, {"query": "q"}])
    with pytest.raises(UserError, match=r"warm.jsonl: row 1: missing required field 'completion'"):
        data.query_completion_sft_dataset(path)
    path = write_jsonl(tmp_path / "chat.jsonl", [{"conversation": []}, {"conversation": []}])  # another schema
    with pytest.raises(UserError, match=r"chat.jsonl: row 0: missing required field 'messages'"):
        data.first_turn_sft_dataset(path)


def test_malformed_json_line_is_named(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"query": "q", "completion": "c"}\n{"query": oops}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
        data.load_rows(str(tmp_path / "bad.jsonl"))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match=r"data file '.*missing.jsonl' does not exist"):
        data.load_rows(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="has no rows"):
        data.load_rows(str(tmp_path / "empty.jsonl"))


def test_hub_name_offline_is_one_line():
    with pytest.raises(UserError, match=r"dataset 'nobody/nothing' \(split 'train'\) cannot be loaded"):
        data.load_rows("nobody/nothing")


def test_countdown_training_rows_exclude_heldout():
    from rlft.tasks import countdown

    problems = dict(num_counts=[3], min_num=1, max_num=6, min_target=1, max_target=30)
    heldout = countdown.generate_problems(40, seed=9, **problems)
    ds = data.countdown_sft_dataset(500, 0, "compact", True, None, problems, heldout=heldout, distinct=False)
    shown = {m["content"] for row in ds for m in row["messages"] if m["role"] == "user"}
    assert not shown & {countdown.make_prompt(p["nums"], p["target"], "compact") for p in heldout}


def ultrafeedback_row(i, **over):
    row = {"prompt": f"q{i}", "score_chosen": 8.0, "score_rejected": 3.0,
           "chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "good"}],
           "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "bad"}]}
    return {**row, **over}


def test_ultrafeedback_rows_become_trl_preference_rows(tmp_path):
    path = write_jsonl(tmp_path / "uf.jsonl", [ultrafeedback_row(0)])
    row = data.ultrafeedback_preference_dataset(str(path), system_prompt="You are a helpful assistant.")[0]
    assert row["prompt"] == [{"role": "system", "content": "You are a helpful assistant."},
                             {"role": "user", "content": "q0"}]
    assert row["chosen"] == [{"role": "assistant", "content": "good"}]
    assert row["rejected"] == [{"role": "assistant", "content": "bad"}]
    assert (row["score_chosen"], row["score_rejected"]) == (8.0, 3.0)


def test_ultrafeedback_schema_errors_name_the_row(tmp_path):
    path = write_jsonl(tmp_path / "uf.jsonl", [ultrafeedback_row(0), ultrafeedback_row(1, score_rejected=None)])
    with pytest.raises(UserError, match=r"uf.jsonl: row 1: missing required field 'score_rejected'"):
        data.ultrafeedback_preference_dataset(str(path))
    path = write_jsonl(tmp_path / "uf2.jsonl", [ultrafeedback_row(0, rejected=[{"role": "user", "content": "x"}])])
    with pytest.raises(UserError, match=r"uf2.jsonl: row 0: 'rejected' must be a message list ending with an assistant"):
        data.ultrafeedback_preference_dataset(str(path))


def test_rows_with_nothing_to_learn_are_dropped_and_counted_and_a_file_of_only_those_refused(tmp_path):
    """An empty query, completion, prompt, chosen or rejected text is dropped and counted, as SmolTalk's
    empty turns are; a file whose rows are all empty stops with one line naming it."""
    warm = write_jsonl(tmp_path / "warm.jsonl", [{"query": "q", "completion": "c"}, {"query": "", "completion": "c"},
                                                 {"query": "q", "completion": "  "}])
    ds = data.query_completion_sft_dataset(str(warm))
    assert len(ds) == 1 and data.dropped_rows(ds) == "2 of 3 (2 empty turn)"
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"query": "", "completion": ""}] * 4)
    with pytest.raises(UserError) as e:
        data.query_completion_sft_dataset(str(blank))
    assert str(e.value) == f"{blank}: no usable rows: all 4 rows dropped (4 empty turn)"

    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": ""},
                                                                 {"role": "assistant", "content": ""}]}] * 2)
    with pytest.raises(UserError, match=rf"^{chats}: no usable rows: all 2 rows dropped \(2 empty turn\)$"):
        data.first_turn_sft_dataset(str(chats), min_kept_fraction=0.0)  # however low the bar

    empty = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        ultrafeedback_row(0), ultrafeedback_row(1, chosen=empty),
        ultrafeedback_row(2, rejected=[{"role": "user", "content": "q2"}, {"role": "assistant", "content": " "}])])
    ds = data.ultrafeedback_preference_dataset(str(pairs))
    assert [r["chosen"][0]["content"] for r in ds] == ["good"] and ds.dropped == {"empty turn": 2}
    only_empty = write_jsonl(tmp_path / "only_empty.jsonl", [ultrafeedback_row(0, chosen=empty, rejected=empty)])
    with pytest.raises(UserError, match=rf"^{only_empty}: no usable rows: all 1 rows dropped"):
        data.ultrafeedback_preference_dataset(str(only_empty))


def test_ultrafeedback_train_gen_prompts(tmp_path):
    path = write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "Tell me a joke."}, {"prompt": "  "}])
    with pytest.raises(UserError, match=r"gen.jsonl: row 1: 'prompt' must be non-empty text"):
        data.ultrafeedback_prompt_dataset(str(path))
    path = write_jsonl(tmp_path / "gen2.jsonl", [{"prompt": "Tell me a joke."}])
    ds = data.ultrafeedback_prompt_dataset(str(path), system_prompt="You are a helpful assistant.")
    assert ds[0]["prompt"][-1] == {"role": "user", "content": "Tell me a joke."}


# --------------------------------------------------------------------------- SmolTalk held-out prompts

def test_smoltalk_heldout_prompts_are_first_user_turns_of_usable_rows_only(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", smoltalk_rows())  # 5 of 11 open with a user turn of text
    drawn = data.smoltalk_heldout_prompts(str(path), n=5, seed=3)
    assert sorted(r["prompt"] for r in drawn) == sorted(
        ["The meeting, which was long, ended late.",  # after the row's system turn, which is not in the prompt
         "hi", "2+2?", "a question nobody answers", "text"])  # the first user turn; no answer needed
    assert {r["source"] for r in drawn} == {"smol-rewrite", "smol-magpie-ultra", "smol-constraints"}
    with pytest.raises(UserError) as e:
        data.smoltalk_heldout_prompts(str(path), n=6, seed=3)
    assert str(e.value) == f"{path}: cannot draw n=6 held-out prompts from 5 usable rows (of 11; a usable row opens " \
                           "with a user turn of text)"


def test_smoltalk_heldout_draw_is_seeded_not_the_first_rows(tmp_path):
    chats = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
              "source": "smol-magpie-ultra"} for i in range(60)]
    malformed = [row for i, row in enumerate(smoltalk_rows()) if i in (3, 5, 6, 8, 9, 10)]
    path = write_jsonl(tmp_path / "test.jsonl", [row for pair in zip(chats, malformed * 10) for row in pair])
    drawn = [r["prompt"] for r in data.smoltalk_heldout_prompts(str(path), n=10, seed=7)]
    assert drawn == [r["prompt"] for r in data.smoltalk_heldout_prompts(str(path), n=10, seed=7)]
    assert drawn != [r["prompt"] for r in data.smoltalk_heldout_prompts(str(path), n=10, seed=8)]
    assert drawn != [f"q{i}" for i in range(10)] and len(set(drawn)) == 10
    assert set(drawn) <= {f"q{i}" for i in range(60)}  # the malformed rows between them are skipped
    assert drawn[:4] == [r["prompt"] for r in data.smoltalk_heldout_prompts(str(path), n=4, seed=7)]  # num_prompts=4


def test_smoltalk_heldout_file_without_messages_is_named(tmp_path):
    path = write_jsonl(tmp_path / "uf.jsonl", [{"prompt": "Tell me a joke."}])
    with pytest.raises(UserError) as e:
        data.smoltalk_heldout_prompts(str(path), n=1)
    assert str(e.value) == f"{path}: row 0: missing required field 'messages'"
