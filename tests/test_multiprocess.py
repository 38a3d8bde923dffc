"""Multi-process runs, exercised: two ranks on CPU through the shipped accelerate configs.

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes 2 --mixed_precision no \
        -m rlft train stage=sft ... ++stage.trainer.use_cpu=true         # DDP, two ranks over gloo
    accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 2 --mixed_precision no \
        -m rlft train stage=sft ... ++stage.trainer.use_cpu=true         # DeepSpeed ZeRO-2

On CPU `accelerate launch --cpu --num_processes 2` silently runs ONE process. The shipped configs
start two ranks; TrainingArguments(use_cpu=True) joins them over gloo. Without it accelerate finds
no GPU backend: DDP ranks would each train alone and DeepSpeed would stop, seeing two ranks where
the Trainer counted one; so the stage presets set use_cpu from ${rlft.use_cpu:} (several ranks,
no accelerator), and the last test launches exactly as a GPU user would type it. The command-line flags override the files' GPU values
(8 processes, bf16).

Each launch starts two fresh processes that import trl (~10-30 s here), so the tests are few and
each checks several things. The single-process references run in this process.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, changed_tensors, state_dict

pytestmark = pytest.mark.smoke

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
# Plain SGD (see assert_same_training): each step is lr x the clipped gradient, norm <= 1.
# One recipe for every process count: 4 per device x accumulation 2 = 8 sequences a step. rlft divides the
# accumulation by the world size (config.spread_batch): one process accumulates 2 batches of 4, each of two
# ranks trains 1 batch of 4. Nothing here halves the batch by hand.
COMMON = ["max_steps=3", "stage.trainer.logging_steps=1", "++stage.trainer.optim=sgd", "stage.trainer.learning_rate=1.0",
          "stage.trainer.per_device_train_batch_size=4", "stage.trainer.gradient_accumulation_steps=2",
          "data.heldout.n=8", "data.evaluate.max_new_tokens=16"]
SFT = ["stage=sft", "model=tiny", "data=countdown_tiny", "data.sft_dataset.n=96", "stage.trainer.warmup_steps=0",
       *COMMON]
DPO = ["stage=dpo", "model=tiny", "data=ifcheck", "data.preference_dataset.n=96", "report_to=[]", *COMMON]
DDP = ["++stage.trainer.use_cpu=true"]  # 2 ranks x 4 x accumulation 1
SINGLE = []                             # 1 process x 4 x accumulation 2


def launch(config: str, *overrides: str, script: Path | None = None, env: dict | None = None):
    """`accelerate launch --config_file configs/accelerate/<config>.yaml`, two processes, this venv."""
    with socket.socket() as s:  # a shared machine: never assume accelerate's default port is free
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [ACCELERATE, "launch", "--config_file", str(REPO / "configs" / "accelerate" / f"{config}.yaml"),
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), *([str(script)] if script else ["-m", "rlft"]), "train", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_files(run_dir: Path) -> set[str]:
    """Every file of a run dir; TensorBoard's event files (named by host, pid and time) by folder."""
    names = (str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    return {"tensorboard/<events>" if n.startswith("tensorboard/") else n for n in names}


def assert_rank0_wrote_once(run: Path, steps: int, single: Path | None = None) -> None:
    """One metrics line per logged step, one summary line, one DONE, at most one TensorBoard file,
    and (given a single-process run of the same stage) the same files, except that each rank keeps
    its own RNG state in a checkpoint (rng_state_<rank>.pth: what an exact resume of that rank
    needs, written by the Trainer, not by rlft)."""
    assert [r["step"] for r in records(run) if "loss" in r] == list(range(1, steps + 1))
    assert sum("train_runtime" in r for r in records(run)) == 1
    assert (run / "DONE").is_file() and (run / "model" / "README.md").is_file()
    assert len(list((run / "tensorboard").glob("*"))) <= 1
    if single is not None:
        rng = {f"checkpoints/checkpoint-{steps}/rng_state{s}.pth" for s in ("", "_0", "_1")}
        assert run_files(run) - rng == run_files(single) - rng
        assert rng & run_files(run) == rng - {f"checkpoints/checkpoint-{steps}/rng_state.pth"}


def assert_same_training(single: Path, multi: Path, start_dir: str) -> None:
    """Two ranks x batch 4 trained as one process accumulating two batches of 4 does (the same
    configured 4 x 2; same seed, so the same rows).

    The runs differ only in float32 summation order (two ranks' batch-4 gradients all-reduced over
    gloo vs two batch-4 gradients accumulated), which differs between CPUs and thread counts: losses
    and gradient norms agree to ~1e-7 relative, checked at 1e-5. The weights are trained by plain
    SGD, so each differs by lr x a roundoff-sized gradient difference plus its own rounding: the
    whole difference is ~1e-6 of the update (checked at 1e-4). Adam would divide a near-zero
    gradient's roundoff by its own size and move the weight by ~lr either way, measuring the CPU
    rather than rlft. A real fault (ranks on the same rows, gradients not averaged, a step lost)
    is off by O(update).
    """
    import torch

    a, b = [r for r in records(single) if "loss" in r], [r for r in records(multi) if "loss" in r]
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "grad_norm"):
            assert math.isclose(x[key], y[key], rel_tol=1e-5), (x["step"], key, x[key], y[key])

    start, ref, got = state_dict(start_dir), state_dict(single / "model"), state_dict(multi / "model")
    assert ref.keys() == start.keys() <= got.keys()
    for extra in got.keys() - ref.keys():  # DeepSpeed's save keeps the tied lm_head as its own copy
        assert extra == "lm_head.weight" and torch.equal(got[extra], got["model.embed_tokens.weight"])
    update = sum((ref[k] - start[k]).pow(2).sum() for k in ref).sqrt().item()
    error = sum((ref[k] - got[k]).pow(2).sum() for k in ref).sqrt().item()
    assert update > 0.5, update  # it trained (three clipped steps at lr 1, 2/3, 1/3: at most 2)
    assert error < 1e-4 * update, (error, update)


@pytest.fixture(scope="module")
def sft_single(tmp_path_factory, tiny_base) -> Path:
    """The single-process SFT reference (1 process x 4 x accumulation 2) for the DDP and ZeRO-2 runs
    (2 ranks x 4 x accumulation 1, from the same configured accumulation 2)."""
    from rlft.cli import main

    run_dir = tmp_path_factory.mktemp("sft") / "single"
    assert main(["train", *SFT, *SINGLE, f"run_dir={run_dir}"]) == 0
    return run_dir


def test_sft_ddp_two_ranks_train_as_one_process(tmp_path, sft_single, tiny_base):
    run = tmp_path / "ddp"
    launch("multi_gpu", *SFT, *DDP, f"run_dir={run}")
    assert_same_training(sft_single, run, tiny_base)
    assert_rank0_wrote_once(run, 3, sft_single)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_sft_over_two_machines_trains_as_one_process(tmp_path, sft_single, tiny_base):
    """configs/accelerate/multi_node.yaml as a scheduler would run it: one `accelerate launch` per
    machine (here two on 127.0.0.1, one CPU process each), machine rank, address and port passed
    as flags. The batch rule holds across nodes: the world size counts every rank of every node."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "two_machines"
    machines = [subprocess.Popen(
        [ACCELERATE, "launch", "--config_file", str(REPO / "configs" / "accelerate" / "multi_node.yaml"),
         "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
         "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "rlft", "train", *SFT, *DDP, f"run_dir={run}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [m.communicate(timeout=600) for m in machines]
    for m, (out, err) in zip(machines, outputs):
        assert m.returncode == 0, f"exit {m.returncode}\n{out[-3000:]}\n{err[-6000:]}"
    assert_rank0_wrote_once(run, steps=3)
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    assert_same_training(sft_single, run, tiny_base)


def test_dpo_ddp_two_ranks_train_as_one_process(tmp_path, run_cli, tiny_base):
    single, run = tmp_path / "single", tmp_path / "ddp"
    code, _, err = run_cli("train", *DPO, *SINGLE, f"init_from={tiny_base}", f"run_dir={single}")
    assert code == 0, err
    launch("multi_gpu", *DPO, *DDP, f"init_from={tiny_base}", f"run_dir={run}")
    assert_same_training(single, run, tiny_base)  # the reference model too: it is part of every loss
    assert_rank0_wrote_once(run, 3, single)
    results = json.loads((run / "results.json").read_text())
    assert results["vs_reference"]["wins"] + results["vs_reference"]["ties"] + results["vs_reference"]["losses"] == 8


def test_ddp_without_use_cpu_on_a_machine_without_a_gpu_trains_as_one(tmp_path, sft_single, tiny_base):
    """The shipped DDP config launched as a GPU user would type it (no use_cpu) where no GPU is
    visible (CUDA_VISIBLE_DEVICES="" makes that true on any machine): accelerate alone would make
    each rank a single-process run, both training rows 0-3 and both writing as rank 0. rlft turns
    use_cpu on by itself (several ranks, no accelerator), so the ranks train as one process does."""
    run = tmp_path / "ddp"
    launch("multi_gpu", *SFT, "report_to=[]", f"run_dir={run}",
           env={"CUDA_VISIBLE_DEVICES": ""})
    assert_rank0_wrote_once(run, 3)
    assert_same_training(sft_single, run, tiny_base)


# `python -m rlft` with a probe: every rank records what rloo_advantages saw and returned, and its
# final weights, in $PROBE_DIR (outside the run dir). Stages call models.save_trained by attribute,
# so patching the module attribute reaches them.
PROBE = '''
import os
import sys

import torch

import rlft.rloo.trl_copy
from rlft import models
from rlft.cli import main

calls = []
rloo_advantages, save_trained = rlft.rloo.trl_copy.rloo_advantages, models.save_trained


def recorded(rewards, k, beta=0.0, old_logps=None, ref_logps=None, mask=None, kl=None, **kwargs):
    advantages, kl_out = rloo_advantages(rewards, k, beta, old_logps, ref_logps, mask, kl=kl, **kwargs)
    local_kl = None if old_logps is None else ((old_logps - ref_logps) * mask).sum(-1)
    calls.append({name: value.detach().cpu().clone() if torch.is_tensor(value) else value for name, value in
                  {"rewards": rewards, "k": k, "beta": beta, "kl": kl, "local_kl": local_kl,
                   "advantages": advantages}.items()})
    return advantages, kl_out


def save_and_record(trainer, *args, **kwargs):
    policy = save_trained(trainer, *args, **kwargs)
    weights = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    torch.save({"calls": calls, "weights": {k: v.detach().cpu().clone() for k, v in weights.items()}},
               os.path.join(os.environ["PROBE_DIR"], f"rank{os.environ['RANK']}.pt"))
    return policy


rlft.rloo.trl_copy.rloo_advantages, models.save_trained = recorded, save_and_record
sys.exit(main())
'''


def test_rloo_ddp_two_ranks_share_groups_and_stay_in_sync(tmp_path, countdown_sft):
    """RLOO samples, and two ranks draw other samples than one process does (each rank generates
    its own rows from its own RNG stream), so its result cannot equal a single-process run's.
    What must hold: with k = 8 samples per prompt and 4 rows per rank, every group is split over
    the two ranks, so rewards and per-sequence KL must be gathered (in rank order) before the
    leave-one-out baseline; every rank then computes the same advantages for the whole group
    and ends with the same weights (rank 0 alone saves them). Checked on both ranks at every
    step, and the run dir is written once."""
    import torch

    run, probe_dir = tmp_path / "rloo", tmp_path / "probe"
    probe_dir.mkdir()
    (tmp_path / "rlft_probe.py").write_text(PROBE)
    launch("multi_gpu", "stage=rloo", "model=tiny", "data=countdown_tiny", "reward=countdown",
           f"init_from={countdown_sft}", f"run_dir={run}", "data.prompt_dataset.n=64", "max_steps=2",
           "stage.trainer.logging_steps=1", "stage.trainer.learning_rate=1e-3", "stage.trainer.num_generations=8",
           "stage.trainer.per_device_train_batch_size=4", "stage.trainer.gradient_accumulation_steps=2",
           "stage.trainer.max_completion_length=12",
           "stage.trainer.temperature=1.0", "data.heldout.n=8", "data.evaluate.max_new_tokens=24", "report_to=[]",
           *DDP, script=tmp_path / "rlft_probe.py", env={"PROBE_DIR": str(probe_dir)})
    assert sorted(p.name for p in probe_dir.iterdir()) == ["rank0.pt", "rank1.pt"]
    rank0, rank1 = (torch.load(probe_dir / f"rank{r}.pt") for r in (0, 1))

    # every rank leaves with the same weights; rank 0 saved exactly those, and they moved
    saved = state_dict(run / "model")
    for name, tensor in saved.items():
        assert torch.equal(rank0["weights"][name], rank1["weights"][name]), name
        assert torch.equal(rank0["weights"][name], tensor), name
    assert changed_tensors(state_dict(countdown_sft), saved)

    # advantages over the gathered group of k = 8 (4 rows on each rank), identical on both ranks
    assert len(rank0["calls"]) == len(rank1["calls"]) == 2  # one generation per step
    for step, (c0, c1) in enumerate(zip(rank0["calls"], rank1["calls"], strict=True), 1):
        assert c0["k"] == 8 and c0["beta"] == 0.03 and c0["rewards"].shape == (8,)
        assert not c0["rewards"].isnan().any()
        for key in ("rewards", "kl", "advantages"):
            assert torch.equal(c0[key], c1[key]), (step, key)
        # the gathered per-sequence KL is rank 0's 4 sums then rank 1's
        assert torch.allclose(c0["kl"], torch.cat([c0["local_kl"], c1["local_kl"]]), atol=1e-6)
        r = c0["rewards"] - c0["beta"] * c0["kl"]
        expected = r - (r.sum() - r) / 7  # leave-one-out: minus the mean of the other 7 in the group
        assert torch.allclose(c0["advantages"], expected, atol=1e-6), step
    # the KL term is live: zero while policy == reference, not after the first update
    assert rank0["calls"][0]["kl"].abs().max() < 1e-4 < rank0["calls"][1]["kl"].abs().max()
    # the reward varied (12 new tokens cut some answers short: 0 instead of 0.1; a float
    # std of eight equal 0.1s is ~1e-9, not 0, so compare the range) ...
    assert any(c["rewards"].max() - c["rewards"].min() > 0.05 for c in rank0["calls"])
    # ... and a baseline over each rank's 4 rows alone would have given other advantages
    def per_rank_only(c):
        r = (c["rewards"] - c["beta"] * c["kl"]).view(2, 4)
        return (r - (r.sum(1, keepdim=True) - r) / 3).view(-1)

    assert any(not torch.allclose(c["advantages"], per_rank_only(c), atol=1e-4) for c in rank0["calls"])

    assert_rank0_wrote_once(run, 2)
    assert not {n for n in run_files(run) if "rng_state" in n} - {f"checkpoints/checkpoint-2/rng_state_{r}.pth"
                                                                   for r in (0, 1)}
    assert all(r["unscorable/countdown"] == 0 for r in records(run) if "loss" in r)


def test_sft_zero2_two_ranks_shard_optimizer_and_train_as_one_process(tmp_path, sft_single, tiny_base):
    """configs/accelerate/zero2.yaml as shipped, on two CPU ranks. DeepSpeed wraps torch's AdamW
    (the Trainer's DeepSpeed config allows an untested optimizer, so no cpu_adam JIT build) and
    shards its state: the checkpoint holds one optimizer shard per rank (written by that rank, as
    ZeRO must), the proof that ZeRO ran rather than DDP. ZeRO-2 reduces the same gradients, so
    it matches the single-process run like DDP does."""
    run = tmp_path / "zero2"
    launch("zero2", *SFT, *DDP, f"run_dir={run}")
    ckpt = run / "checkpoints" / "checkpoint-3"
    shards = sorted(p.name for p in ckpt.glob("global_step3/*optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "model")  # loadable
    assert_same_training(sft_single, run, tiny_base)
    assert_rank0_wrote_once(run, 3)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
