"""RLOO, rlft's wing of it in one package:

- `trainer`: rlft.rloo.RLOOTrainer, trl.RLOOTrainer with rlft's kernels in the hot loop and the
  objectives (mean, pass@k);
- `trl_copy`: TRL's two methods rlft overrides, copied verbatim and fenced (the drift test
  compares them with the installed trl);
- `sampling`: the recording sampler (transformers' custom_generate hook) that keeps each sampled
  token's log-prob, so TRL's old-log-prob forward is skipped;
- `objective`: the objective as configured, checked in pure Python (config.validate imports no trl).

`rlft.rloo.RLOOTrainer` (the configs' `_target_`) is the trainer module's, imported on first use:
importing `rlft.rloo.objective` costs no trl import.
"""


def __getattr__(name: str):
    if name == "RLOOTrainer":
        from rlft.rloo.trainer import RLOOTrainer

        return RLOOTrainer
    raise AttributeError(f"module 'rlft.rloo' has no attribute {name!r}")
