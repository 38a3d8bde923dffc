"""`rlft train`: compose the config, validate it, then run the stage module named by stage.name.

The stage name equals its module name (rlft/stages/<name>.py); each stage's `main(cfg)` returns
(results, model-card facts), and the run dir is bracketed here so every stage gets the same
contract (rlft/rundir.py).
"""

from __future__ import annotations

import importlib


def train(overrides: list[str], config_dir: str | None = None, print_only: bool = False) -> int:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from rlft import config, rundir
    from rlft.errors import UserError

    cfg = config.compose(overrides, config_dir)
    try:
        if print_only:
            print(OmegaConf.to_yaml(cfg, resolve=True), end="")
            return 0
        config.validate(cfg)
        OmegaConf.resolve(cfg)  # resolve once: every rank and every later read see the same values
    except OmegaConfBaseException as e:
        raise UserError(f"config: {str(e).splitlines()[0]}") from None
    stage = importlib.import_module(f"rlft.stages.{cfg.stage.name}")
    rundir.start(cfg)
    results, card = stage.main(cfg)
    rundir.finish(cfg, results, card)
    if results and rundir.is_main_process():
        from rlft.metrics import results_table

        print(results_table(results, title=f"{cfg.run_name} ({cfg.run_dir})"))
    return 0
