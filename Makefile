# rlft — every target creates .venv and installs on first use (make setup is idempotent).
#   make demo        the tiny Countdown pipeline on CPU (offline): table + plots in runs/tiny_math/report
#   make tiny-if     SFT -> reward models -> DPO on the offline instruction task (CPU)
#   make test        unit + smoke tests (offline, CPU)       make test-slow   the long checks
#   make bench       verifier throughput; batched best-of-N sampling vs one at a time
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= runs

# Everything here runs offline on CPU; TRITON_INTERPRET must be set before triton is imported.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRITON_INTERPRET=1

.PHONY: setup demo tiny-math tiny-if test test-slow bench clean

setup: $(STAMP)

# torch is pinned in the same pip command: alone, pip would pick a multi-GB CUDA build on CPU boxes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test]" "torch==2.13.0"
	touch $(STAMP)

# make demo: the tiny Countdown pipeline (experiment=tiny_math): SFT, then best-of-16 with the
# verifier on it (tiny twins of the paper's math rows "SFT" and "SFT + best-of-N"), then the report
# (table, CSV, plots in runs/tiny_math/report). Finished steps are skipped on a second run.
demo: tiny-math

tiny-math: setup
	$(OFFLINE) $(BIN)/rlft pipeline experiment=tiny_math

# make tiny-if: the paper's instruction-following rows on the tiny model and the offline ifcheck
# task: SFT, reward models (each variant, two backbones), DPO from the SFT model; the rule judge
# scores held-out prompts and DPO's win-rate against its SFT start.
tiny-if: setup
	$(OFFLINE) $(BIN)/rlft train experiment=tiny_if_sft run_dir=$(RUNS)/tiny_if_sft overwrite=true
	for rm in bt siamese regression; do for backbone in tiny tiny_deberta; do \
		$(OFFLINE) $(BIN)/rlft train experiment=tiny_if_rm rm=$$rm reward_model=$$backbone \
			run_dir=$(RUNS)/tiny_if_rm_$${rm}_$$backbone overwrite=true || exit 1; done; done
	$(OFFLINE) $(BIN)/rlft train experiment=tiny_if_dpo init_from=$(RUNS)/tiny_if_sft/model \
		run_dir=$(RUNS)/tiny_if_dpo overwrite=true

test: setup
	$(OFFLINE) $(BIN)/python -m pytest -q

test-slow: setup
	$(OFFLINE) $(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python scripts/bench_verifier.py
	$(OFFLINE) $(BIN)/python scripts/bench_bon.py

clean:
	rm -rf $(RUNS) .pytest_cache
