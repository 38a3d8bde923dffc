"""Shared test setup. Everything runs offline on CPU; most tests call the CLI in-process
(importing trl costs ~11 s a process), a few run the real console script."""

import os

# Before anything imports triton (trl and peft do): CPU launches need the interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def rlft_cache(tmp_path_factory) -> str:
    """One tiny-model cache for the session (set RLFT_TEST_CACHE to reuse one across runs)."""
    cache = os.environ.get("RLFT_TEST_CACHE") or str(tmp_path_factory.mktemp("rlft-cache"))
    os.environ["RLFT_CACHE_DIR"] = cache
    return cache


@pytest.fixture
def run_cli(capsys):
    """Run `rlft ARGS...` in this process; returns (exit code, stdout, stderr)."""

    def run(*args: str):
        from rlft.cli import main

        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def tiny_base(rlft_cache) -> str:
    """Directory of the tiny base model the presets build (built once per session)."""
    from hydra.utils import instantiate

    from rlft.config import compose

    return instantiate(compose(["model=tiny"]).model.build)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def state_dict(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def changed_tensors(before: dict, after: dict) -> list[str]:
    import torch

    return [k for k in before if k in after and not torch.equal(before[k], after[k])]


@pytest.fixture(scope="session")
def countdown_sft(tmp_path_factory, tiny_base) -> str:
    """A tiny model given 60 SFT steps on Countdown: enough to write <answer> tags, so the
    verifier's reward varies (an untrained model scores 0 everywhere and RLOO has no signal)."""
    from rlft.cli import main

    run_dir = tmp_path_factory.mktemp("countdown-sft") / "run"
    code = main(["train", "experiment=tiny_math_sft", f"run_dir={run_dir}", "max_steps=60",
                 "data.sft_dataset.n=3840", "data.heldout.n=8", "stage.trainer.warmup_steps=5",
                 "stage.trainer.logging_steps=30", "report_to=[]"])
    assert code == 0
    return str(run_dir / "model")
