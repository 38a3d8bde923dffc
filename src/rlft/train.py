"""`rlft train`: compose the config, validate it, then run the stage module named by stage.name.

The stage name equals its module name (rlft/stages/<name>.py); each stage's `main(cfg)` returns
(results, model-card facts), and the run dir is bracketed here so every stage gets the same
contract (rlft/rundir.py): rlft.runcontrol.running catches signals and says a full disk in one
line; stages train through rlft.runcontrol.fit. `rlft pipeline` is rlft/pipeline.py.
"""

from __future__ import annotations

import importlib

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlft import config, preflight, report, rundir, runcontrol
from rlft.errors import UserError


def train(overrides: list[str], config_dir: str | None = None, print_only: bool = False) -> int:
    cfg = config.compose(overrides, config_dir)
    if cfg.get("pipeline"):
        raise UserError(f"experiment {cfg.run_name!r} is a pipeline of stages; run it with: rlft pipeline "
                        + " ".join(overrides))
    try:
        if print_only:
            print(OmegaConf.to_yaml(cfg, resolve=True), end="")
            return 0
        config.validate(cfg)
        OmegaConf.resolve(cfg)  # resolve once: every rank and every later read see the same values
        config.spread_batch(cfg)  # the configured batch per optimizer step on any number of processes
    except OmegaConfBaseException as e:
        raise UserError(f"config: {str(e).splitlines()[0]}") from None
    stage = importlib.import_module(f"rlft.stages.{cfg.stage.name}")
    with runcontrol.running(cfg):
        preflight.start(cfg)  # rlft pipeline --preflight: this run measures itself (rlft.preflight)
        results, card = stage.main(cfg)
        rundir.finish(cfg, results, card)
        if rundir.is_main_process():
            preflight.write(cfg, runcontrol.checkpoint_bytes())
    if results and rundir.is_main_process():
        print(f"### {cfg.run_name} ({cfg.run_dir})\n")
        print(report.markdown(report.rows([{"name": cfg.run_name, "stage": cfg.stage.name, "results": results}])))
    return 0
