"""The rehearsal hub on disk: one folder per repo, plus a manifest per repo written last.

    root/models/Qwen/Qwen2.5-0.5B/{config.json, model.safetensors, tokenizer.json, ...}
    root/datasets/HuggingFaceH4/ultrafeedback_binarized/{README.md, data/train_prefs-00000-of-00001.parquet, ...}
    root/manifests/models/Qwen/Qwen2.5-0.5B.json   {"sha": commit, "params": {...}, "files": {path: {size, sha256, oid}}}

A repo whose manifest exists with the same build parameters is skipped, so `build` is
idempotent and a changed parameter (e.g. qwen_layers) rebuilds only the repos it touches. The
server (server.py) serves exactly the files a manifest lists, under its commit sha.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

# (repo type, repo id): what the paper's configs name (configs/model, reward_model, data)
QWEN_BASE, QWEN_INSTRUCT = "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct"
DEBERTA_RM, DISTILBERT = "OpenAssistant/reward-model-deberta-v3-large", "distilbert-base-uncased"
SMOLTALK, ULTRAFEEDBACK = "HuggingFaceTB/smol-smoltalk", "HuggingFaceH4/ultrafeedback_binarized"
WARMSTART, COUNTDOWN_TASKS = "Asap7772/cog_behav_all_strategies", "Jiayi-Pan/Countdown-Tasks-3to4"
MODELS = (QWEN_BASE, QWEN_INSTRUCT, DEBERTA_RM, DISTILBERT)
DATASETS = (SMOLTALK, ULTRAFEEDBACK, WARMSTART, COUNTDOWN_TASKS)


def repo_dir(root: Path, repo_type: str, repo_id: str) -> Path:
    return Path(root) / f"{repo_type}s" / repo_id


def manifest_path(root: Path, repo_type: str, repo_id: str) -> Path:
    return Path(root) / "manifests" / f"{repo_type}s" / f"{repo_id}.json"


def read_manifest(root: Path, repo_type: str, repo_id: str) -> dict | None:
    path = manifest_path(root, repo_type, repo_id)
    return json.loads(path.read_text()) if path.is_file() else None


def _file_entry(path: Path) -> dict:
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    size = path.stat().st_size
    sha1.update(f"blob {size}\0".encode())  # git's blob id
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            sha256.update(chunk)
            sha1.update(chunk)
    return {"size": size, "sha256": sha256.hexdigest(), "oid": sha1.hexdigest()}


def _write_manifest(root: Path, repo_type: str, repo_id: str, params: dict) -> dict:
    folder = repo_dir(root, repo_type, repo_id)
    files = {p.relative_to(folder).as_posix(): _file_entry(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    commit = hashlib.sha1(json.dumps([repo_type, repo_id, params, files], sort_keys=True).encode()).hexdigest()
    manifest = {"repo_type": repo_type, "repo_id": repo_id, "sha": commit, "params": params, "files": files}
    path = manifest_path(root, repo_type, repo_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(path)  # written last: a repo without its manifest is unfinished
    return manifest


def build_hub(root: str | Path, *, qwen_layers: int = 24, reward_layers: int = 2, seed: int = 0,
              log=print) -> dict[str, dict]:
    """Build every repo of the rehearsal hub under `root` (skipping those already built with the
    same parameters); returns {"<type>s/<repo id>": manifest}."""
    # datasets, torch and transformers only to build: the server imports this module for repo_dir
    import datasets

    from rlft.rehearsal import data, models

    datasets.disable_progress_bars()
    root = Path(root)
    qwen_tok = {}  # the Qwen vocab/merges conversion (~5 s) once for both Qwen repos

    def qwen(instruct):
        def write(folder):
            if not qwen_tok:
                qwen_tok["vm"] = models._qwen_vocab_merges()
            models.write_qwen(folder, instruct, qwen_layers, seed, qwen_tok["vm"])
        return write

    steps = [  # (parameters, the repos one write produces, write(folders))
        ({"layers": qwen_layers, "seed": seed}, [("model", QWEN_BASE)], lambda f: qwen(False)(f[0])),
        ({"layers": qwen_layers, "seed": seed}, [("model", QWEN_INSTRUCT)], lambda f: qwen(True)(f[0])),
        ({"layers": reward_layers, "seed": seed}, [("model", DEBERTA_RM)],
         lambda f: models.write_deberta_rm(f[0], reward_layers, seed)),
        ({"layers": reward_layers, "seed": seed}, [("model", DISTILBERT)],
         lambda f: models.write_distilbert(f[0], reward_layers, seed)),
        ({"seed": seed}, [("dataset", SMOLTALK)], lambda f: data.write_smoltalk(f[0], seed)),
        ({"seed": seed}, [("dataset", ULTRAFEEDBACK)], lambda f: data.write_ultrafeedback(f[0], seed)),
        # one step: the warm-start set poses some of Countdown-Tasks' held-out problems
        ({"seed": seed, "warmstart_splits": ["train", "test"]}, [("dataset", COUNTDOWN_TASKS), ("dataset", WARMSTART)],
         lambda f: data.write_countdown(f[0], f[1], seed)),
    ]
    built = {}
    for params, repos, write in steps:
        old = [read_manifest(root, t, r) for t, r in repos]
        if all(m is not None and m["params"] == params for m in old):
            built |= {f"{t}s/{r}": m for (t, r), m in zip(repos, old)}
            continue
        start = time.time()
        for t, r in repos:
            manifest_path(root, t, r).unlink(missing_ok=True)
            shutil.rmtree(repo_dir(root, t, r), ignore_errors=True)
        write([repo_dir(root, t, r) for t, r in repos])
        for t, r in repos:
            built[f"{t}s/{r}"] = _write_manifest(root, t, r, params)
        log(f"built {', '.join(r for _, r in repos)} ({time.time() - start:.1f} s)")
    return built
