"""Multi-node launch: SLURM's variables and compressed host lists, srun without torchrun, and two
"nodes" (two torchrun launches of one process each, c10d rendezvous on localhost) that train like
one process with the whole batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _dist import free_port

from medgrain.distributed import LaunchEnv, expand_hostlist, launch_env

REPO = Path(__file__).resolve().parents[1]
TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def test_slurm_variables_give_rank_world_size_local_rank_and_master():
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08,11],cpu1"}
    assert launch_env(slurm) == LaunchEnv(rank=5, world_size=8, local_rank=1, launcher="slurm",
                                          master_addr="gpu07", master_port=29500)
    assert launch_env({**slurm, "MASTER_PORT": "4242", "MASTER_ADDR": "head"}).master_port == 4242
    assert launch_env({**slurm, "MASTER_ADDR": "head"}).master_addr == "head"
    # torchrun inside an allocation: torchrun's variables win
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "29400"}
    assert launch_env({**slurm, **torchrun}) == LaunchEnv(3, 4, 1, "torchrun", "n1", 29400)
    # `python train.py` in a batch script, or srun --ntasks 1: one process
    assert launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "a1"}).launcher == "single"
    assert launch_env({}) == LaunchEnv(0, 1, 0, "single")
    with pytest.raises(RuntimeError, match="SLURM_JOB_NODELIST"):
        launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


def test_compressed_host_lists_expand_as_scontrol_does():
    assert expand_hostlist("node[01-03,07]") == ["node01", "node02", "node03", "node07"]
    assert expand_hostlist("a,b[1-2]-x[3-4],c9") == ["a", "b1-x3", "b1-x4", "b2-x3", "b2-x4", "c9"]
    assert expand_hostlist("gpu[008-010]") == ["gpu008", "gpu009", "gpu010"]
    for bad in ("node[01-03", "node01]", "node[a-b]"):
        with pytest.raises(ValueError, match="SLURM host list"):
            expand_hostlist(bad)


def _clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_KEYS and not k.startswith("SLURM_")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo", **extra}


@pytest.mark.distributed
def test_srun_without_torchrun_joins_one_process_group():
    script = ("import torch; from medgrain.distributed import all_gather, cleanup, setup; env = setup('cpu'); "
              "print(env.rank, env.world_size, [int(t) for t in all_gather(torch.tensor(env.rank))]); cleanup()")
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_clean_env(SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r),
                                                        SLURM_JOB_NODELIST="localhost", MASTER_PORT=port))
             for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert [o[0].split("\n")[0] for o in outs] == ["0 2 [0, 1]", "1 2 [0, 1]"]


@pytest.fixture(scope="module")
def synth_manifest(tmp_path_factory):
    from medgrain.data.synthetic import generate

    return generate("cxr", tmp_path_factory.mktemp("synth"), n=80, seed=5, size=48, workers=1)


def _overrides(manifest: Path, out: Path, batch_size: int) -> dict[str, object]:
    # A BatchNorm-free tower with dropout off: 2 ranks of 8 then compute exactly what 1 process of 16 does.
    return {
        "data.manifest": str(manifest), "model.preset": "tiny-vit", "model.overrides.image.image_size": 48,
        "model.overrides.text.config.hidden_dropout_prob": 0.0,
        "model.overrides.text.config.attention_probs_dropout_prob": 0.0,
        "objective.name": "mgll", "train.epochs": 1, "train.stop_after_steps": 3, "train.log_every": 1,
        "train.progress": False, "train.tensorboard": False, "train.eval_at_start": False,
        "optim.warmup_steps": 1, "train.output_dir": str(out), "train.batch_size": batch_size,
    }


def _train_losses(out: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_of_one_process_train_like_one_process_with_the_whole_batch(synth_manifest, tmp_path):
    from medgrain.training.config import load_config
    from medgrain.training.loop import train

    train(load_config("tiny-mgll", [f"{k}={v}" for k, v in _overrides(synth_manifest, tmp_path / "one", 16).items()]))
    args = [f"{k}={v}" for k, v in _overrides(synth_manifest, tmp_path / "nodes", 8).items()]
    endpoint = f"localhost:{free_port()}"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(r),
         "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
         "-m", "medgrain", "pretrain", "--config", "tiny-mgll", *args],
        cwd=REPO, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=600) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [o[1][-3000:] for o in outs]
    one, two = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "nodes")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), (step, two[step], one[step])
