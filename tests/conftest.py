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


def error_line(stderr: str) -> str:
    """The one error line of a failed run (progress bars may precede it; tracebacks may not)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("rlft: error: ")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


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


def record_model_uses(monkeypatch, device=None) -> list[tuple[str, str, bool]]:
    """Every model a stage samples from or scores with, seen where it is used (generation.generate and
    reward_models.score, which every sampling and scoring path goes through): a list of
    (what: generate's desc or "reward_models.score", the device its weights sit on, whether
    models.on_accelerator put it there).

    With `device` (a CPU test: torch.device("meta"), distinct from the CPU every model loads to),
    models.accelerator_device, the one function placement asks, returns it; on_accelerator keeps a
    CPU copy of each model's weights before moving them, and each use runs on them (the same model
    object, its weights back on the CPU for the call, then on `device` again), so the stage runs to
    the end with real outputs. Without `device` (the GPU tier) nothing is replaced."""
    from itertools import chain

    import torch

    from rlft import generation, models, reward_models

    placed, uses = {}, []  # id(placed model) -> (model, {name: CPU copy of its weights and buffers} or None)
    real_place = models.on_accelerator

    def tensors(model):  # every name: moving to meta unties tied weights (a real device keeps them tied)
        return chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))

    def place(model):
        if id(model) in placed:  # placed again (a reference the trainer prepared): keep the first copy
            return real_place(model)
        weights = ({name: t.detach().clone() for name, t in tensors(model)}
                   if device is not None and isinstance(model, torch.nn.Module) else None)
        out = real_place(model)
        placed[id(out)] = (out, weights)
        return out

    def seen(where, fn):
        def use(model, *args, **kwargs):
            at = next(model.parameters()).device
            model_, weights = placed.get(id(model), (None, None))
            uses.append((kwargs.get("desc", where), at.type, model_ is model))
            if weights is None or at != device:
                return fn(model, *args, **kwargs)
            model.to_empty(device="cpu")
            with torch.no_grad():
                for name, t in tensors(model):
                    t.copy_(weights[name])
            try:
                return fn(model, *args, **kwargs)
            finally:
                model.to(device)

        return use

    monkeypatch.setattr(models, "on_accelerator", place)
    monkeypatch.setattr(generation, "generate", seen("generation.generate", generation.generate))
    monkeypatch.setattr(reward_models, "score", seen("reward_models.score", reward_models.score))
    if device is not None:
        monkeypatch.setattr(models, "accelerator_device", lambda: device)
    return uses
