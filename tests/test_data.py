"""Dataset loaders: schemas, local files, and errors that name the file and row."""

import pytest
from conftest import write_jsonl

from rlft import data
from rlft.errors import UserError


def test_first_turn_keeps_only_the_first_user_assistant_turn(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "system", "content": "old system"},
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "more"}, {"role": "assistant", "content": "no"}]}])
    ds = data.first_turn_sft_dataset(str(path), system_prompt="You are a helpful assistant.")
    assert ds[0]["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


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
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(UserError, match=r"chat.jsonl: row 0: 'messages' must start with a user turn"):
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


def test_ultrafeedback_train_gen_prompts(tmp_path):
    path = write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "Tell me a joke."}, {"prompt": "  "}])
    with pytest.raises(UserError, match=r"gen.jsonl: row 1: 'prompt' must be non-empty text"):
        data.ultrafeedback_prompt_dataset(str(path))
    path = write_jsonl(tmp_path / "gen2.jsonl", [{"prompt": "Tell me a joke."}])
    ds = data.ultrafeedback_prompt_dataset(str(path), system_prompt="You are a helpful assistant.")
    assert ds[0]["prompt"][-1] == {"role": "user", "content": "Tell me a joke."}
