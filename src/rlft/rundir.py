"""The run directory contract: what every stage leaves behind, and when.

    runs/<run_name>/
      config.yaml    the resolved config             (written first)
      env.json       package versions, git sha, seed, command
      metrics.jsonl  one JSON object per logged step
      tensorboard/   event files (report_to=[tensorboard], the default)
      model/         save_pretrained output + README.md model card
      results.json   evaluation results, when the stage evaluates
      DONE           written last; a DONE dir is never overwritten unless overwrite=true

Only rank 0 writes. Paths are deterministic (never timestamped) so every rank agrees.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rlft.errors import UserError

PACKAGES = [
    "rlft", "torch", "transformers", "trl", "datasets", "peft", "accelerate", "hydra-core",
    "omegaconf", "deepspeed", "bitsandbytes", "triton", "tokenizers",
]  # fmt: skip


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def start(cfg) -> Path:
    """Check the run dir may be used, then write config.yaml and env.json (rank 0)."""
    from omegaconf import OmegaConf

    run_dir = Path(cfg.run_dir)
    if run_dir.is_file() or (run_dir.is_dir() and any(run_dir.iterdir())
                             and not any((run_dir / f).exists() for f in ("config.yaml", "env.json", "DONE"))):
        # never write into (or, with overwrite=true, delete) a folder rlft did not make
        raise UserError(f"run_dir {str(run_dir)!r} exists and is not an rlft run dir; choose another run_dir")
    done = run_dir / "DONE"
    if done.exists() and not cfg.overwrite:
        raise UserError(f"run_dir {str(run_dir)!r} holds a finished run (DONE); pass overwrite=true to replace it")
    checkpoints = sorted((p for p in (run_dir / "checkpoints").glob("checkpoint-*") if p.name[11:].isdigit()),
                         key=lambda p: int(p.name[11:]))
    if checkpoints and not (cfg.resume or cfg.overwrite):
        raise UserError(
            f"run_dir {str(run_dir)!r} holds an unfinished run ({checkpoints[-1].name}); "
            "pass resume=true to continue it or overwrite=true to start over"
        )
    if not is_main_process():
        return run_dir
    try:
        if cfg.overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:  # a fresh start: drop what an earlier, unfinished attempt logged
            for stale in ("metrics.jsonl", "results.json"):
                (run_dir / stale).unlink(missing_ok=True)
        write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    except OSError as e:
        raise UserError(f"run_dir {str(run_dir)!r} is not writable ({e.strerror})") from None
    write_atomic(run_dir / "env.json", json.dumps(environment(cfg), indent=2) + "\n")
    # TensorBoard's default log dir is timestamped; pin it inside the run dir.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    return run_dir


def environment(cfg) -> dict:
    """Everything needed to reproduce a run besides the config."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "seed": cfg.seed,
        "argv": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git": _git_state(),
        "packages": versions,
    }


def _git_state() -> dict | None:
    src = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain"], capture_output=True, text=True, timeout=5)
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return None


def finish(cfg, results: dict | None, card: dict) -> None:
    """results.json, the model card, then DONE, in that order (rank 0)."""
    if not is_main_process():
        return
    run_dir = Path(cfg.run_dir)
    if results is not None:
        write_atomic(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    if (run_dir / "model").is_dir():
        write_atomic(run_dir / "model" / "README.md", model_card(cfg, results, card))
    write_atomic(run_dir / "DONE", "")


def model_card(cfg, results: dict | None, card: dict) -> str:
    """A short markdown card: what was trained from what, how, and how well."""
    lines = [
        f"# {cfg.run_name}",
        "",
        f"Trained by `rlft` stage `{cfg.stage.name}`.",
        "",
        f"- base model: `{card.get('base_model')}`",
        f"- data: `{cfg.data.name}`" + (f" ({card['train_rows']} training rows)" if "train_rows" in card else ""),
        f"- fine-tuning: `{cfg.peft.name}`" + (" (adapter merged into these weights)" if cfg.peft.name != "none" else ""),
        f"- seed: {cfg.seed}",
    ]
    lines += [f"- {k}: {v}" for k, v in card.items() if k not in ("base_model", "train_rows")]
    if results:
        lines += ["", "## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in _flatten(results).items()]
    lines += ["", "Full resolved config: `../config.yaml`; package versions: `../env.json`.", ""]
    return "\n".join(lines)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = round(v, 4) if isinstance(v, float) else v
    return out
