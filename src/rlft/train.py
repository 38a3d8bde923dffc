"""`rlft train`: compose the config, validate it, then run the stage module named by stage.name.

The stage name equals its module name (rlft/stages/<name>.py); each stage's `main(cfg)` returns
(results, model-card facts), and the run dir is bracketed here so every stage gets the same
contract (rlft/rundir.py).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def train(overrides: list[str], config_dir: str | None = None, print_only: bool = False) -> int:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from rlft import config, rundir
    from rlft.errors import UserError

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
    except OmegaConfBaseException as e:
        raise UserError(f"config: {str(e).splitlines()[0]}") from None
    stage = importlib.import_module(f"rlft.stages.{cfg.stage.name}")
    rundir.start(cfg)
    try:
        results, card = stage.main(cfg)
    except UserError:
        sys.stderr.write("\n")  # a progress bar may have left the cursor mid-line: the error gets its own line
        raise
    rundir.finish(cfg, results, card)
    if results and rundir.is_main_process():
        from rlft.report import markdown, rows

        print(f"### {cfg.run_name} ({cfg.run_dir})\n")
        print(markdown(rows([{"name": cfg.run_name, "stage": cfg.stage.name, "results": results}])))
    return 0


def pipeline(overrides: list[str], config_dir: str | None = None) -> int:
    """`rlft pipeline experiment=NAME [key=value ...]`: the experiment's stages in order.

    Each step is `rlft train <step overrides> <your overrides> run_dir=<run_dir>/<step name>`;
    steps read earlier steps' model dirs by interpolation (`init_from: ${run_dir}/sft/model`). A
    step whose run dir is DONE is skipped and one with checkpoints resumes, so an interrupted
    pipeline continues where it stopped. Ends with `rlft report` over the steps.
    """
    from omegaconf import OmegaConf

    from rlft import config, report, rundir
    from rlft.errors import UserError

    cfg = config.compose(overrides, config_dir)
    if not cfg.get("pipeline"):
        raise UserError("rlft pipeline needs an experiment with a `pipeline:` list of steps "
                        f"(e.g. experiment=tiny_math); got run_name={cfg.run_name!r}")
    steps = OmegaConf.to_container(cfg.pipeline, resolve=True)
    extra = [o for o in overrides if not o.startswith("experiment=")]
    dirs = []
    for step in steps:
        step_dir = Path(cfg.run_dir) / step["name"]
        dirs.append(str(step_dir))
        if (step_dir / "DONE").exists():
            print(f"rlft pipeline: {step['name']}: done, skipped ({step_dir})")
            continue
        resume = ["resume=true"] if list((step_dir / "checkpoints").glob("checkpoint-*")) else []
        print(f"rlft pipeline: {step['name']}: running ({step_dir})")
        train([*step["overrides"], *extra, f"run_dir={step_dir}", *resume], config_dir=config_dir)
    if rundir.is_main_process():
        print(report.report(dirs, str(Path(cfg.run_dir) / "report")))
        print(f"plots and CSV: {Path(cfg.run_dir) / 'report'}")
    return 0
