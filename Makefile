# rlft — every target creates .venv and installs on first use (make setup is idempotent).
#   make demo        the tiny Countdown pipeline on CPU (offline): table + plots in runs/tiny_math/report
#   make real-math   the Countdown pipeline on the real SmolLM2-135M-Instruct, on CPU (runs/real_math/report)
#   make tiny-if     SFT -> reward models -> DPO, RLOO on the offline instruction task (CPU)
#   make real-if     the instruction-following chain on real SmolLM2-135M + MiniLM-L6, IFEval's checkers (CPU)
#   make test        unit + smoke tests (offline, CPU)       make test-slow   the long checks
#   make test-gpu    on a CUDA box: Triton compiled for real, sampler and shared prompts on the GPU
#   make bench       verifier throughput; batched best-of-N sampling vs one at a time; the RLOO kernels
#   make paper-math, make paper-if   the paper's tables: Qwen2.5-0.5B on a GPU box with the hub
# Each multi-step recipe (demo, tiny-if, paper-math, paper-if) is one `rlft pipeline experiment=<recipe>`:
# configs/experiment/<recipe>.yaml lists its steps; DONE steps are skipped, interrupted ones resumed,
# and `rlft pipeline experiment=<recipe> --dry-run` prints each step's `rlft train` command.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= runs

# Everything here runs offline on CPU; TRITON_INTERPRET must be set before triton is imported.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRITON_INTERPRET=1

.PHONY: setup demo tiny-math real-math tiny-if real-if paper-math paper-if paper-preflight rehearsal rehearsal-preflight test test-slow test-gpu bench clean

setup: $(STAMP)

# torch is pinned in the same pip command: alone, pip would pick a multi-GB CUDA build on CPU boxes.
$(STAMP): pyproject.toml scripts/requirements-real.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test]" "torch==2.13.0"
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --require-hashes -r scripts/requirements-real.txt
	touch $(STAMP)

# make demo: the tiny Countdown pipeline (experiment=tiny_math): SFT, then best-of-16 with the
# verifier on it (tiny twins of the paper's math rows "SFT" and "SFT + best-of-N"), then the report
# (table, CSV, plots in runs/tiny_math/report). Finished steps are skipped on a second run.
demo: tiny-math

tiny-math: setup
	$(OFFLINE) $(BIN)/rlft pipeline experiment=tiny_math

# make real-math: the same Countdown rows on the real SmolLM2-135M-Instruct (experiment=real_math):
# SFT on solver-verified answers, best-of-16 with the verifier on it, RLOO from it with the verifier
# reward, best-of-16 on the RLOO model, then the report (runs/real_math/report). CPU, offline.
real-math: setup
	$(OFFLINE) $(BIN)/rlft pipeline experiment=real_math

# make tiny-if: the paper's instruction-following rows on the tiny model and the offline ifcheck
# task (experiment=tiny_if): SFT, reward models (each variant, two backbones), DPO from the SFT model,
# RLOO from the SFT model with the tiny Bradley-Terry reward model; the rule judge scores held-out
# prompts and the win-rates of DPO and RLOO against their SFT start. Run dirs in RUNS.
tiny-if: setup
	$(OFFLINE) $(BIN)/rlft pipeline experiment=tiny_if runs_dir=$(RUNS)

# make real-if: the paper's instruction-following chain on real weights, offline (experiment=real_if):
# rejection-sampled SFT data from SmolLM2-135M-Instruct, SFT, on-policy pairs, MiniLM-L6 reward
# models (Bradley-Terry, Siamese), DPO (full, LoRA), RLOO with the reward model and with IFEval's
# checkers, best-of-16 by the checkers and by the reward model; report in $(RUNS)/real_if/report.
real-if: setup
	$(OFFLINE) $(BIN)/rlft pipeline experiment=real_if runs_dir=$(RUNS)

# The paper's tables on a GPU box with the hub (Qwen2.5-0.5B Base): experiment=paper_math and
# paper_if, one step per table cell, each skipped when its run dir is DONE; run dirs in RUNS, where
# each cell also finds the runs it starts from; reports in $(RUNS)/paper_*_report.
# Multi-GPU: ACCELERATE="accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m" (the
# training steps run under it, evaluations in one process).
# The IF win-rates need the paper's judge behind an OpenAI-compatible endpoint: JUDGE_URL=http://HOST:PORT/v1
# (or RLFT_JUDGE_URL in the environment; key in OPENAI_API_KEY); IF_EVAL=paper_if_winrate_authors picks the authors' code's protocol
# (200 SmolTalk test prompts vs the base model, sampled) instead of the handout's (the default).
# Pass-through (make rehearsal shrinks steps, batch sizes, lengths and prompt counts through them):
# PAPER_ARGS go to every step; SFT_ARGS/RM_ARGS/DPO_ARGS/RLOO_ARGS/BON_ARGS/WINRATE_ARGS to that
# stage's steps, SMOLTALK_ARGS/WARMSTART_ARGS/COUNTDOWN_ARGS/UF_PROMPT_ARGS to the steps tagged with
# that data, as rlft pipeline's TAG:KEY=VALUE (one word each); REPORT_NOTE heads both reports.
# Disk: a full-parameter cell keeps up to save_total_limit=2 checkpoints of ~6 GB (weights and
# AdamW's moments) while it trains; KEEP_CHECKPOINTS=false (the default here) drops them once the
# cell is DONE, leaving its ~2 GB model/ (docs/paper.md: ~45 GB for both tables, ~130 GB kept; estimated).
JUDGE_URL ?=
KEEP_CHECKPOINTS ?= false
IF_EVAL ?= paper_if_winrate
PAPER_ARGS ?=
SFT_ARGS ?=
RM_ARGS ?=
DPO_ARGS ?=
RLOO_ARGS ?=
BON_ARGS ?=
WINRATE_ARGS ?=
SMOLTALK_ARGS ?=
WARMSTART_ARGS ?=
COUNTDOWN_ARGS ?=
UF_PROMPT_ARGS ?=
REPORT_NOTE ?=
# $(call to,TAG,ARGS): each override in ARGS for the steps tagged TAG only
to = $(addprefix $(1):,$(2))
PAPER_PIPELINE = $(strip runs_dir=$(RUNS) keep_checkpoints=$(KEEP_CHECKPOINTS) $(PAPER_ARGS) $(if $(ACCELERATE),--launcher "$(ACCELERATE)") \
	$(if $(REPORT_NOTE),--note "$(REPORT_NOTE)"))
PAPER_MATH_ARGS = $(strip $(call to,sft,$(SFT_ARGS)) $(call to,rloo,$(RLOO_ARGS)) $(call to,bon,$(BON_ARGS)) \
	$(call to,warmstart,$(WARMSTART_ARGS)) $(call to,countdown,$(COUNTDOWN_ARGS)))
PAPER_IF_ARGS = $(strip evaluation=$(patsubst paper_if_%,%,$(IF_EVAL)) $(if $(JUDGE_URL),winrate:judge.base_url=$(JUDGE_URL)) \
	$(call to,sft,$(SFT_ARGS)) $(call to,rm,$(RM_ARGS)) $(call to,dpo,$(DPO_ARGS)) $(call to,rloo,$(RLOO_ARGS)) \
	$(call to,winrate,$(WINRATE_ARGS)) $(call to,smoltalk,$(SMOLTALK_ARGS)) $(call to,uf_prompt,$(UF_PROMPT_ARGS)))

# Math table: SFT (full, LoRA), SFT + synthetic data, SFT + best-of-16 (verifier); extensions the
# paper does not report: SFT + RLOO (full, LoRA) and RLOO + best-of-16.
paper-math: setup
	$(BIN)/rlft pipeline experiment=paper_math $(PAPER_PIPELINE) $(PAPER_MATH_ARGS)

# IF table: SFT (full, LoRA), reward models (DeBERTa off the shelf, DistilBERT, Siamese DistilBERT),
# DPO and RLOO x {DeBERTa, DistilBERT, Siamese DistilBERT}, each full and LoRA, from the merged LoRA
# SFT model; each policy's win-rate against the protocol's reference, judged by the endpoint.
paper-if: setup
	$(BIN)/rlft pipeline experiment=paper_if $(PAPER_PIPELINE) $(PAPER_IF_ARGS)

# make paper-preflight: the first thing to run on a GPU box. Every cell of both recipes, with the same
# variables as make paper-*, cut to one or two optimizer steps on 256 rows and its evaluation on 4
# items, in $(PREFLIGHT_RUNS)/paper_*; then a table per recipe: the device each model sits on, world
# size and batch against the recipe's, peak memory, step time -> estimated hours for the whole cell,
# disk against free disk. Exits 1 when a cell fails, would not fit or would idle the GPU (rlft.preflight).
# PREFLIGHT_RECIPES=paper_math prices one recipe.
PREFLIGHT_RUNS ?= $(RUNS)/preflight
PREFLIGHT_RECIPES ?= paper_math paper_if
paper-preflight: setup
	$(if $(filter paper_math,$(PREFLIGHT_RECIPES)),$(BIN)/rlft pipeline experiment=paper_math --preflight $(PREFLIGHT_RUNS)/paper_math $(PAPER_PIPELINE) $(PAPER_MATH_ARGS))
	$(if $(filter paper_if,$(PREFLIGHT_RECIPES)),$(BIN)/rlft pipeline experiment=paper_if --preflight $(PREFLIGHT_RUNS)/paper_if $(PAPER_PIPELINE) $(PAPER_IF_ARGS))

# make rehearsal: make paper-math and make paper-if themselves, offline on CPU, at Qwen2.5-0.5B's
# real shapes: the same targets, experiment configs and hub ids, served by a local hub
# (python -m rlft.rehearsal: the real architecture with random weights and the real Qwen2.5
# tokenizer, the reward backbones, small files in the hub datasets' schemas, a judge that also
# answers 429 and 500). Only steps, batch sizes, lengths and prompt counts shrink, through the
# pass-through variables above. The numbers are meaningless (random weights); what passes is that
# every cell runs at least one optimizer step, full and LoRA, through the user's code path.
REHEARSAL_HUB ?= .rehearsal
REHEARSAL_RUNS ?= $(RUNS)/rehearsal
REHEARSE_TARGETS ?= paper-math paper-if   # REHEARSE_TARGETS=paper-math rehearses one recipe
R_TRAIN := stage.trainer.logging_steps=1 stage.trainer.gradient_accumulation_steps=1
R_SFT := $(R_TRAIN) stage.trainer.per_device_train_batch_size=1 stage.trainer.max_length=256 \
	stage.trainer.warmup_steps=0
R_DATA := data.evaluate.max_new_tokens=8 data.heldout.n=2
REHEARSE_ARGS := PAPER_ARGS="max_steps=1 report_to=[]" \
	SFT_ARGS="$(R_SFT)" WARMSTART_ARGS="data.sft_dataset.max_rows=16 $(R_DATA)" \
	SMOLTALK_ARGS="data.sft_dataset.max_rows=16" COUNTDOWN_ARGS="$(R_DATA) data.sft_dataset.n=16 data.prompt_dataset.n=8" \
	RM_ARGS="stage.trainer.logging_steps=1 stage.trainer.per_device_train_batch_size=2 reward_model.max_length=64 data.preference_dataset.max_rows=8 \
		data.preference_heldout.max_rows=4" \
	DPO_ARGS="$(R_TRAIN) stage.trainer.per_device_train_batch_size=1 \
		stage.trainer.max_length=128 data.preference_dataset.max_rows=4" \
	RLOO_ARGS="$(R_TRAIN) stage.trainer.per_device_train_batch_size=4 \
		stage.trainer.max_completion_length=8" \
	UF_PROMPT_ARGS="data.prompt_dataset.max_rows=4" \
	BON_ARGS="num_prompts=2 n=2 stage.sweep=[1,2]" WINRATE_ARGS="num_prompts=2 stage.max_new_tokens=8" \
	REPORT_NOTE="Rehearsal: random weights at Qwen2.5-0.5B's shapes, one optimizer step per cell; the numbers mean nothing"

rehearsal: setup
	$(BIN)/python -m rlft.rehearsal build --root $(REHEARSAL_HUB)
	$(BIN)/python -m rlft.rehearsal run --root $(REHEARSAL_HUB) -- \
		$(MAKE) --no-print-directory $(REHEARSE_TARGETS) RUNS=$(REHEARSAL_RUNS) $(REHEARSE_ARGS)

# make rehearsal-preflight: make paper-preflight against the rehearsal hub with make rehearsal's
# shrink, so each cell's estimate can be held against its time in make rehearsal (docs/paper.md).
rehearsal-preflight: setup
	$(BIN)/python -m rlft.rehearsal build --root $(REHEARSAL_HUB)
	$(BIN)/python -m rlft.rehearsal run --root $(REHEARSAL_HUB) -- \
		$(MAKE) --no-print-directory paper-preflight RUNS=$(REHEARSAL_RUNS) $(REHEARSE_ARGS)

test: setup
	$(OFFLINE) $(BIN)/python -m pytest -q

test-slow: setup
	$(OFFLINE) $(BIN)/python -m pytest -q -m slow

# On a CUDA box: the Triton kernels compiled for real, the sampler and the shared-prompt pass on the
# GPU (tests/test_gpu.py), then the log-prob path's ratios at Qwen shapes.
test-gpu: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q -m gpu
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_rloo.py --part 1 --tokens 512 4096 8192

bench: setup
	$(BIN)/python scripts/bench_verifier.py
	$(BIN)/python tests/tasks/fuzz_inputs.py
	$(OFFLINE) $(BIN)/python scripts/bench_bon.py
	$(OFFLINE) $(BIN)/python scripts/bench_rloo.py
	$(OFFLINE) $(BIN)/python scripts/bench_rloo.py --part 2 --model smollm2 --steps 2 --rounds 2

clean:
	rm -rf $(RUNS) .pytest_cache
