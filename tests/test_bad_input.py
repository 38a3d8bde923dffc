"""The bad-input catalogue: every mistake a user of rlft's stages could plausibly make ends with
exit code 2 and one line naming the culprit (key, file and line/row, model path), and nothing is
written as complete (no DONE, no results.json, no model/). README's catalogue lists the same rows."""

import json

import pytest
from conftest import error_line, write_jsonl


def _files(tmp):
    """The bad files and dirs the cases point at."""
    write_jsonl(tmp / "warm.jsonl", [{"query": "q", "completion": "c"}, {"query": "q2"}])
    (tmp / "bad.jsonl").write_text('{"query": "q", "completion": "c"}\n{"query": oops}\n')
    (tmp / "empty.jsonl").write_text("\n")
    (tmp / "latin1.jsonl").write_bytes(b'{"query": "caf\xe9"}\n')
    (tmp / "null_row.jsonl").write_text('{"query": "q", "completion": "c"}\nnull\n')
    (tmp / "string_row.jsonl").write_text('"just a sentence"\n')
    (tmp / "null_row.json").write_text('[{"query": "q", "completion": "c"}, null]')
    (tmp / "dir.jsonl").mkdir()
    (tmp / "broken.parquet").write_bytes(b"PAR1 not really")
    (tmp / "notamodel").mkdir()
    (tmp / "afile").write_text("x")
    (tmp / "theirs").mkdir()
    (tmp / "theirs" / "thesis.tex").write_text("mine")
    for name, files in (("done", ["config.yaml", "DONE"]), ("unfinished", ["config.yaml"])):
        (tmp / name).mkdir()
        for f in files:
            (tmp / name / f).write_text("")
    (tmp / "unfinished" / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (tmp / "a_run" / "model").mkdir(parents=True)  # a run dir, not the model dir inside it
    (tmp / "a_run" / "model" / "config.json").write_text("{}")
    # rows that all parse but hold nothing to learn from
    write_jsonl(tmp / "blank.jsonl", [{"query": "", "completion": ""}, {"query": "  ", "completion": "\n"}])
    write_jsonl(tmp / "blank_chat.jsonl", [{"messages": [{"role": "user", "content": ""},
                                                         {"role": "assistant", "content": ""}]}] * 3)
    empty_turn = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
    write_jsonl(tmp / "blank_pairs.jsonl", [{"chosen": empty_turn, "rejected": empty_turn, "score_chosen": 1.0,
                                             "score_rejected": 0.0}] * 2)
    same = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]
    good = {"chosen": same, "rejected": [same[0], {"role": "assistant", "content": "no"}], "score_chosen": 2.0,
            "score_rejected": 1.0}
    write_jsonl(tmp / "uf_strings.jsonl", [good, {**good, "chosen": "hi"}])
    write_jsonl(tmp / "uf_score.jsonl", [good, good, {**good, "score_chosen": "high"}])
    write_jsonl(tmp / "uf_nan.jsonl", [good, {**good, "score_rejected": float("nan")}])
    write_jsonl(tmp / "uf_no_content.jsonl", [{**good, "rejected": [same[0], {"role": "assistant"}]}])
    write_jsonl(tmp / "same_pairs.jsonl", [{"chosen": same, "rejected": same, "score_chosen": 2.0,
                                            "score_rejected": 1.0}] * 3)


WARM = "data=countdown_warmstart"
# (case, overrides; {tmp} is the test's folder, {base} the tiny base model), the text the line must hold
CATALOGUE = [
    ("unknown stage", ["stage=nope"], "'nope'"),
    ("unknown option of a group", ["reward=nope"], "'nope'"),
    ("misspelled key", ["max_step=4"], "max_step"),
    ("mistyped key", ["max_steps=abc"], "stage.trainer.max_steps: expected int, got 'abc'"),
    ("mistyped TRL knob", ["stage.trainer.learning_rate=fast"], "stage.trainer.learning_rate: expected float"),
    ("unknown TRL knob", ["+stage.trainer.learnin_rate=1"], "stage.trainer.learnin_rate: not an argument"),
    ("TRL knob the preset lacks, without +", ["stage.trainer.max_grad_norm=2"], "set it with +stage.trainer.max_grad_norm="),
    ("missing data file", [WARM, "data.sft_dataset.path={tmp}/nowhere.jsonl"], "nowhere.jsonl' does not exist"),
    ("empty data file", [WARM, "data.sft_dataset.path={tmp}/empty.jsonl"], "empty.jsonl' has no rows"),
    ("data path is a folder", [WARM, "data.sft_dataset.path={tmp}/dir.jsonl"], "dir.jsonl' is not a file"),
    ("data file not UTF-8", [WARM, "data.sft_dataset.path={tmp}/latin1.jsonl"], "latin1.jsonl' cannot be read"),
    ("corrupt parquet", [WARM, "data.sft_dataset.path={tmp}/broken.parquet"], "broken.parquet' cannot be read"),
    ("malformed JSONL line", [WARM, "data.sft_dataset.path={tmp}/bad.jsonl"], "bad.jsonl:2: not valid JSON"),
    ("JSONL row that is null", [WARM, "data.sft_dataset.path={tmp}/null_row.jsonl"],
     "null_row.jsonl:2: expected a JSON object, got NoneType"),
    ("JSONL row that is a string", [WARM, "data.sft_dataset.path={tmp}/string_row.jsonl"],
     "string_row.jsonl:1: expected a JSON object, got str"),
    ("JSON list holding null", [WARM, "data.sft_dataset.path={tmp}/null_row.json"],
     "null_row.json': row 1: expected a JSON object, got null"),
    ("row missing a field", [WARM, "data.sft_dataset.path={tmp}/warm.jsonl"],
     "warm.jsonl: row 1: missing required field 'completion'"),
    ("hub dataset while offline", [WARM, "data.sft_dataset.path=nobody/nothing"], "dataset 'nobody/nothing'"),
    ("init_from does not exist", ["init_from={tmp}/nope", "data.sft_dataset.n=8"], "init_from: model dir"),
    ("init_from is not a model", ["init_from={tmp}/notamodel", "data.sft_dataset.n=8"], "notamodel': cannot load"),
    ("hub model while offline", ["model=qwen2_5_0_5b", "data.sft_dataset.n=8"], "'Qwen/Qwen2.5-0.5B' not found"),
    ("unwritable run dir", ["run_dir={tmp}/afile/run"], "is not writable"),
    ("run dir rlft did not make", ["run_dir={tmp}/theirs"], "is not an rlft run dir"),
    ("finished run dir without overwrite", ["run_dir={tmp}/done"], "holds a finished run (DONE)"),
    ("unfinished run dir without resume", ["run_dir={tmp}/unfinished"], "pass resume=true"),
    ("rloo on data without prompts", ["stage=rloo", "data=smoltalk"], "data=smoltalk has no prompt_dataset"),
    ("rloo objective misspelled", ["stage=rloo", "+stage.algorithm.objective=pass@k"],
     "stage.algorithm.objective: 'pass@k' is not one of mean, pass_at_k"),
    ("rloo pass@k above the samples per prompt", ["stage=rloo", "+stage.algorithm.objective=pass_at_k",
                                                  "+stage.algorithm.pass_k=5"],
     "stage.algorithm.pass_k: 5 is not an integer in 1..num_generations (4)"),
    ("rloo pass@k schedule not from step 0", ["stage=rloo", "+stage.algorithm.objective=pass_at_k",
                                              "+stage.algorithm.pass_k_schedule=[[10,4],[20,1]]"],
     "stage.algorithm.pass_k_schedule: steps [10, 20] must start at 0 and increase"),
    ("rloo reward model path unset", ["stage=rloo", "data=ifcheck", "reward=reward_model"], "reward.path"),
    ("rloo reward model path missing", ["stage=rloo", "data=ifcheck", "reward=reward_model", "reward.path={tmp}/nope",
                                        "data.prompt_dataset.n=8"], "nope' not found"),
    ("rloo batch not a multiple of k", ["stage=rloo", "data=countdown_tiny", "init_from={base}",
                                        "stage.trainer.per_device_train_batch_size=6",
                                        "stage.trainer.gradient_accumulation_steps=1", "data.prompt_dataset.n=8"],
     "trl.RLOOConfig: generation_batch_size (6) must be divisible by num_generations (4)"),
    ("rloo fewer prompts than one generation batch", ["stage=rloo", "data=countdown_tiny", "init_from={base}",
                                                      "data.prompt_dataset.n=4"],
     "data.prompt_dataset: 4 prompts, fewer than one generation batch"),
    ("bon on data without held-out prompts", ["stage=bon", "data=smoltalk"], "has no heldout"),
    ("winrate without a reference", ["stage=winrate", "data=ifcheck", "init_from={base}", "num_prompts=2"],
     "set reference=MODEL_DIR"),
    ("bon with vLLM not installed", ["stage=bon", "data=countdown", "init_from={base}", "generation_backend=vllm",
                                     "num_prompts=2"], "generation_backend=vllm needs the vllm package"),
    ("bon with n < 1", ["stage=bon", "data=countdown", "init_from={base}", "n=0", "num_prompts=2"], "n must be"),
    ("bf16 weights under the optimizer", ["model.dtype=bfloat16"], "model.dtype=bfloat16: stage=sft would have the "
                                                                    "optimizer update bfloat16 weights"),
    ("SFT length leaving no assistant token", ["data=countdown_tiny", "init_from={base}", "data.sft_dataset.n=8",
                                               "stage.trainer.max_length=4"],
     "data.sft_dataset: none of 8 rows keeps an assistant token within stage.trainer.max_length=4"),
    ("negative seed", ["seed=-1", "data.sft_dataset.n=8"], "seed=-1: a seed is an integer from 0 to 4294967295"),
    ("negative seed, no trainer", ["stage=bon", "data=countdown", "init_from={base}", "seed=-5"], "seed=-5: a seed"),
    ("max_steps=0", ["max_steps=0", "data=countdown_tiny", "data.sft_dataset.n=8"], "max_steps=0: set a number of optimizer steps >= 1, or -1 to train "
                                     "stage.trainer.num_train_epochs"),
    ("num_train_epochs=0", ["stage.trainer.num_train_epochs=0", "data=countdown_tiny", "data.sft_dataset.n=8"],
     "stage.trainer.num_train_epochs=0: with max_steps=-1 a run trains num_train_epochs; set it > 0"),
    ("bon sampling at temperature 0", ["stage=bon", "data=countdown", "init_from={base}", "temperature=0", "n=4",
                                       "num_prompts=2"], "temperature=0 with n=4: stage=bon samples n answers"),
    ("winrate temperature that is not a number (unused without select=reward: a typo all the same)",
     ["stage=winrate", "data=ifcheck", "init_from={base}", "reference={base}", "temperature=hot"],
     "temperature: expected a number, got 'hot'"),
    ("data file whose rows are all empty (query/completion)", [WARM, "data.sft_dataset.path={tmp}/blank.jsonl"],
     "blank.jsonl: no usable rows: all 2 rows dropped (2 empty turn)"),
    ("data file whose rows are all empty (chats)", ["data=smoltalk", "data.sft_dataset.path={tmp}/blank_chat.jsonl"],
     "blank_chat.jsonl: no usable rows: all 3 rows dropped (3 empty turn)"),
    ("data file whose rows are all empty (preference pairs)", ["stage=dpo", "data=ultrafeedback",
                                                               "data.preference_dataset.path={tmp}/blank_pairs.jsonl"],
     "blank_pairs.jsonl: no usable rows: all 2 rows dropped (2 empty turn)"),
    ("UltraFeedback row whose chosen is a string", ["stage=dpo", "data=ultrafeedback",
                                                    "data.preference_dataset.path={tmp}/uf_strings.jsonl"],
     "uf_strings.jsonl: row 1: 'chosen' must be a message list ending with an assistant turn"),
    ("UltraFeedback row whose score is not a number", ["stage=rm", "data=ultrafeedback", "rm_loss=regression",
                                                       "data.preference_dataset.path={tmp}/uf_score.jsonl"],
     "uf_score.jsonl: row 2: 'score_chosen' must be a finite number, got 'high'"),
    ("UltraFeedback row whose score is NaN", ["stage=rm", "data=ultrafeedback", "rm_loss=regression",
                                              "data.preference_dataset.path={tmp}/uf_nan.jsonl"],
     "uf_nan.jsonl: row 1: 'score_rejected' must be a finite number, got nan"),
    ("UltraFeedback message without content", ["stage=dpo", "data=ultrafeedback",
                                               "data.preference_dataset.path={tmp}/uf_no_content.jsonl"],
     "uf_no_content.jsonl: row 0: 'rejected' message 1 must be an object with 'role' and 'content', got "
     '{{"role": "assistant"}}'),
    ("preference pairs whose chosen answer is the rejected one", ["stage=dpo", "data=ultrafeedback",
                                                                 "data.preference_dataset.path={tmp}/same_pairs.jsonl"],
     "same_pairs.jsonl: no usable rows: all 3 rows dropped (3 chosen same as rejected)"),
    ("init_from a run dir", ["init_from={tmp}/a_run"], "init_from: '{tmp}/a_run' is a run dir, not a model dir; "
                                                         "did you mean init_from={tmp}/a_run/model?"),
    ("init_from a weights file", ["init_from={base}/model.safetensors"],
     "init_from: '{base}/model.safetensors' is a file; init_from takes the model dir that holds it (init_from={base})"),
    ("chat template typo", ["model.chat_template=chatlm"], "model.chat_template: 'chatlm' is not a template rlft knows"),
    ("batch size 0", ["stage.trainer.per_device_train_batch_size=0"],
     "stage.trainer.per_device_train_batch_size=0: must be an integer >= 1"),
    ("data n=0", ["data=countdown_tiny", "data.sft_dataset.n=0"], "data.sft_dataset.n=0: the number of rows"),
    ("wandb without the package", ["report_to=[tensorboard,wandb]"], "report_to: wandb is not installed"),
    ("judge reward model path unset", ["stage=winrate", "data=ifcheck", "judge=reward_model", "init_from={base}",
                                       "reference={base}", "num_prompts=2"], "judge.path"),
]


@pytest.mark.parametrize("case,overrides,expected", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_one_line_exit_2_and_nothing_complete(case, overrides, expected, tmp_path, run_cli, tiny_base):
    _files(tmp_path)
    args = [o.format(tmp=tmp_path, base=tiny_base) for o in overrides]
    if not any(a.startswith("run_dir=") for a in args):
        args.append(f"run_dir={tmp_path / 'run'}")
    run_dir = next(a[len("run_dir="):] for a in args if a.startswith("run_dir="))
    code, _, err = run_cli("train", *args)
    assert code == 2, err
    assert expected.format(tmp=tmp_path, base=tiny_base) in error_line(err)
    from pathlib import Path

    if case not in ("finished run dir without overwrite",):
        assert not (Path(run_dir) / "DONE").exists()
    assert not (Path(run_dir) / "results.json").exists() and not (Path(run_dir) / "model").exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, run_cli):
    run_dir = tmp_path / "nan"
    code, _, err = run_cli("train", "experiment=tiny_math_sft", f"run_dir={run_dir}", "max_steps=8",
                           "data.sft_dataset.n=512", "stage.trainer.per_device_train_batch_size=8",
                           "stage.trainer.learning_rate=1e9", "stage.trainer.warmup_steps=0",
                           "stage.trainer.logging_steps=1",
                           "stage.trainer.save_steps=1", "report_to=[]")
    assert code == 2
    line = error_line(err)
    assert "non-finite" in line and "resume=true" in line
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    bad_step = records[-1]["step"]
    kept = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert kept and max(kept) < bad_step and f"checkpoint-{max(kept)}" in line
    assert not (run_dir / "DONE").exists() and not (run_dir / "model").exists()


    # resume=true continues the checkpoint's own optimizer and schedule: another config is refused,
    # naming the keys, before config.yaml (the run's record) is touched
    saved = (run_dir / "config.yaml").read_text()
    base = ["experiment=tiny_math_sft", f"run_dir={run_dir}", "max_steps=8", "data.sft_dataset.n=512",
            "stage.trainer.per_device_train_batch_size=8", "stage.trainer.warmup_steps=0",
            "stage.trainer.logging_steps=1", "stage.trainer.save_steps=1", "report_to=[]", "resume=true"]
    code, _, err = run_cli("train", *base, "stage.trainer.learning_rate=1e-3")
    line = error_line(err)
    assert code == 2 and "another config" in line and "stage.trainer.learning_rate (1000000000.0 -> 0.001)" in line
    code, _, err = run_cli("train", "stage=dpo", "data=ifcheck", f"run_dir={run_dir}", "resume=true")
    assert code == 2 and "stage.name ('sft' -> 'dpo')" in error_line(err)
    code, _, err = run_cli("train", *base, "model.build.hidden_size=64")  # another model shape
    assert code == 2 and "model.build.hidden_size" in error_line(err) and "Traceback" not in err
    assert (run_dir / "config.yaml").read_text() == saved


def test_non_finite_weights_are_never_saved_and_the_run_they_would_replace_is_kept(tmp_path, run_cli):
    """The loss guard reads only logging steps: a run that diverges between logs (here before its
    first) must still not save NaN weights as a DONE model, nor replace a finished run."""
    run_dir, kept = tmp_path / "run", tmp_path / ".run.previous"
    args = ["data=countdown_tiny", "data.sft_dataset.n=64", "data.evaluate=null", "max_steps=4", "report_to=[]",
            "stage.trainer.per_device_train_batch_size=4", "stage.trainer.warmup_steps=0", f"run_dir={run_dir}"]
    code, _, err = run_cli("train", *args)  # a good finished run
    assert code == 0, err
    old = {p.name: p.read_bytes() for p in (run_dir / "model").iterdir()}

    code, _, err = run_cli("train", *args, "stage.trainer.learning_rate=1e9", "overwrite=true")
    assert code == 2, err
    line = error_line(err)
    assert "non-finite weights after step 4:" in line and "model.embed_tokens.weight" in line, line
    assert f"kept at {kept}" in line
    assert not (run_dir / "DONE").exists() and not (run_dir / "model").exists()
    assert not (run_dir / "model.partial").exists()
    assert (kept / "DONE").exists() and {p.name: p.read_bytes() for p in (kept / "model").iterdir()} == old


def test_learning_rate_zero_trains_to_done_and_says_the_weights_did_not_change(tmp_path, run_cli, tiny_base):
    """lr 0 is legal (the start model through the training path) but never silent: one line, and the card."""
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    code, _, err = run_cli("train", "data=countdown_tiny", "data.sft_dataset.n=16", "data.evaluate=null", "max_steps=2",
                           "report_to=[]", "stage.trainer.per_device_train_batch_size=4", "stage.trainer.warmup_steps=0",
                           "stage.trainer.learning_rate=0", f"init_from={tiny_base}", f"run_dir={run_dir}")
    assert code == 0, err
    said = "stage.trainer.learning_rate=0: the optimizer steps leave every weight as it started"
    assert f"rlft: {said}" in err and f"- learning_rate: {said}" in (run_dir / "model" / "README.md").read_text()
    before, after = load_file(f"{tiny_base}/model.safetensors"), load_file(run_dir / "model" / "model.safetensors")
    assert all((before[k] == after[k]).all() for k in before)


CANARY = "sk-canary0123456789abcdefCANARY"


@pytest.mark.parametrize("override,expected", [
    (f"judge.scorer.api_key_env={CANARY}", "judge.scorer.api_key_env: expects the name of an environment variable"),
    (f"judge.base_url=https://user:{CANARY}@127.0.0.1:9/v1", "judge.base_url: the URL holds credentials"),
], ids=["key where a variable name belongs", "key in the URL's userinfo"])
def test_a_key_in_the_config_is_refused_and_reaches_no_file_and_no_console(override, expected, tmp_path, run_cli,
                                                                          tiny_base):
    run_dir = tmp_path / "run"
    code, out, err = run_cli("train", "stage=winrate", "data=ifcheck", "judge=endpoint", f"init_from={tiny_base}",
                             f"reference={tiny_base}", "num_prompts=2", override, f"run_dir={run_dir}")
    assert code == 2, err
    assert expected.format(tmp=tmp_path, base=tiny_base) in error_line(err)
    assert CANARY not in out and CANARY not in err
    assert not run_dir.exists()  # refused before the run dir is made
    for f in tmp_path.rglob("*"):
        assert not f.is_file() or CANARY.encode() not in f.read_bytes(), f
