"""The `rlft` command. Each command imports its module when it runs, so `rlft --help` is instant.

    rlft train stage=sft model=tiny data=countdown run_dir=runs/sft max_steps=4
    rlft pipeline experiment=tiny_math
    rlft report runs/tiny_math/sft runs/tiny_math/bon --out runs/report
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m rlft train stage=sft ...
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from rlft.errors import Stopped, UserError

TRAIN_HELP = """\
Compose a config with Hydra and run one stage. Overrides are Hydra's KEY=VALUE:

  stage=sft            which stage (a file under configs/stage/): sft rm dpo rloo bon winrate sample
  model=tiny           model preset (configs/model/): tiny (built locally), smollm2_135m or qwen2_5_0_5b
  data=countdown       data preset (configs/data/)
  peft=none|lora|qlora full fine-tuning, LoRA, or QLoRA (4-bit base + LoRA)
  rm_loss=bt|siamese|regression   stage=rm: the reward model's loss
  reward_model=tiny    reward-model backbone (stage=rm; reward= and judge=reward_model score with it)
  reward=countdown|ifcheck|ifeval|reward_model|countdown_and_reward_model   what stage=rloo rewards
  judge=rule|reward_model|endpoint   how stage=winrate scores win-rates
  experiment=NAME      a bundle of overrides (configs/experiment/)
  run_dir=DIR          where config.yaml, env.json, metrics.jsonl, model/ and DONE go
  max_steps=N seed=N overwrite=true resume=true init_from=MODEL_DIR
  stage.trainer.KEY=V  any field of the stage's TRL config (SFTConfig, ...); +KEY=V adds one

SIGTERM or Ctrl-C saves a checkpoint at the end of the current optimizer step and exits
(143 / 130); resume=true continues from it. One run at a time per run_dir (a lock).

Show the composed config without running: rlft train --cfg ...
"""

PIPELINE_HELP = """\
rlft pipeline experiment=NAME [KEY=VALUE ...] [TAG:KEY=VALUE ...]

Run the steps an experiment lists under `pipeline:` in order (each one `rlft train`), skipping
DONE ones and resuming interrupted ones, then `rlft report`:
  experiment=tiny_math   make demo; also tiny_if, paper_math, paper_if
  KEY=VALUE              to every step (runs_dir=DIR, max_steps=N, ...)
  TAG:KEY=VALUE          to the steps tagged TAG: their stage (sft, rm, dpo, rloo, bon, winrate)
                         or a tag of the step (paper_math: warmstart, countdown), e.g.
                         rloo:stage.trainer.learning_rate=1e-6
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlft", description="Config-driven post-training for small language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="run one stage (sft, ...) from a Hydra config",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    train.add_argument("--config-dir", help="a folder of your own configs, searched after the shipped ones")
    train.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    pipe = sub.add_parser("pipeline", help="run an experiment's stages in order, skipping finished ones",
                          description=PIPELINE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    pipe.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    pipe.add_argument("--config-dir", help="a folder of your own configs, searched after the shipped ones")
    pipe.add_argument("--dry-run", action="store_true", help="print each step's `rlft train` command and run nothing")
    pipe.add_argument("--launcher", help='run training steps as `LAUNCHER rlft train ...`, e.g. '
                                         '"accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m"')
    pipe.add_argument("--note", default=None, help="a line printed above the report's tables (replaces report.note)")
    pipe.add_argument("--preflight", metavar="DIR", default=None,
                      help="price the recipe on this box: every step cut to one optimizer step and a handful of "
                           "rows, run in DIR, then one table (rlft.preflight); exits 1 when a cell would not go")
    rep = sub.add_parser("report", help="results tables (markdown, CSV) and PNG plots from run dirs",
                         description="rlft report RUN_DIR... [--out DIR]")
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("--out", default="runs/report", help="folder for results.md, results.csv and PNGs")
    rep.add_argument("--note", default=None, help="a line printed above the tables (e.g. what the weights are)")
    return parser


# The libraries' notices on every run that say nothing about it: (logger, start of the message)
NOTICES = [("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),  # an optional CPU kernel
           ("DeepSpeed", "Setting accelerator to CPU")]                              # no GPU: rlft knows


class _Drop(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_libraries() -> None:
    """Drop NOTICES (filters on their loggers, set before the libraries load: a logger keeps its
    filters when its library configures it) and torch's pin_memory warning on a box with nothing to
    pin for. Every other warning and error still prints."""
    for name, prefix in NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_Drop(prefix))
    warnings.filterwarnings("ignore", message=r"'pin_memory' argument is set as true but no accelerator is found")


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    parser = _parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if rest:  # KEY=VALUE after an option (rlft pipeline experiment=x --dry-run runs_dir=y): still overrides
        if args.command not in ("train", "pipeline") or any(r.startswith("-") for r in rest):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.overrides += rest
    if args.command is None:
        parser.print_help()
        return 2
    try:
        # imported per command: rlft.train brings hydra and omegaconf, rlft.report yaml; `--help` needs none
        if args.command == "train":
            from rlft.train import train

            return train(args.overrides, config_dir=args.config_dir, print_only=args.cfg)
        if args.command == "pipeline":
            from rlft.pipeline import pipeline

            return pipeline(args.overrides, config_dir=args.config_dir, dry_run=args.dry_run,
                            launcher=args.launcher, note=args.note, preflight_dir=args.preflight)
        if args.command == "report":
            from rlft.report import report

            print(report(args.run_dirs, args.out, args.note))
            return 0
    except UserError as e:
        print(f"rlft: error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:  # SIGTERM / SIGINT during `rlft train`: where the checkpoint is, how to resume
        from rlft.rundir import is_main_process  # imported by then: no cost here, none at `--help`

        if is_main_process():
            print(f"rlft: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("rlft: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
