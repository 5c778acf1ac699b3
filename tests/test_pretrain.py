"""End-to-end pretraining on tiny synthetic data: each objective learns, saves, reloads and resumes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _resume import assert_resumed_losses_match

from medgrain.losses.objective import OBJECTIVES
from medgrain.training.config import load_config
from medgrain.training.loop import NonFiniteLossError, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth_manifest(tmp_path_factory):
    from medgrain.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    return generate("cxr", out, n=160, seed=11, size=48, workers=1)


def _cfg(manifest, out, objective, **train):
    preset = "tiny-mgca" if OBJECTIVES.get(objective).aligns_tokens else "tiny"
    overrides = {
        "data": {"manifest": str(manifest)},
        "model": {"preset": preset, "overrides": {"image": {"image_size": 48}}},
        "objective": {"name": objective, "mgca": {"num_prototypes": 16}},
        "optim": {"lr": 1e-3, "weight_decay": 0.01, "warmup_steps": 2},
        "train": {"output_dir": str(out), "epochs": 2, "batch_size": 16, "log_every": 1, "progress": False,
                  "tensorboard": False, **train},
    }
    return load_config(overrides)


@pytest.mark.slow
@pytest.mark.parametrize("objective", OBJECTIVES.names())
def test_tiny_run_lowers_validation_loss_and_reloads(synth_manifest, tmp_path, objective):
    import medgrain

    result = train(_cfg(synth_manifest, tmp_path / "run", objective, epochs=3))
    losses = result.valid_losses
    assert len(losses) == 4 and all(map(lambda v: v == v, losses))
    assert losses[-1] < losses[0], f"{objective}: validation loss did not go down: {losses}"
    assert result.best_checkpoint is not None and (tmp_path / "run" / "run.yaml").is_file()
    # Both checkpoints are whole; `last` shares `best`'s files (hard links) exactly when the last epoch
    # was the best (here it always has been, but on another CPU's floating point it might not be).
    last_is_best = losses[-1] == min(losses[1:])
    names = sorted(p.relative_to(result.best_checkpoint) for p in result.best_checkpoint.rglob("*") if p.is_file())
    assert {"train_state.pt", "model.safetensors", "run.yaml"} <= {str(n) for n in names}
    if objective.startswith("mgca"):
        assert (result.best_checkpoint / "objective.safetensors").is_file()
    for n in names:
        assert (result.last_checkpoint / n).samefile(result.best_checkpoint / n) == last_is_best
    medgrain.load_pretrained(result.best_checkpoint)

    pre = medgrain.load_pretrained(result.last_checkpoint)
    tokens = pre.tokenizer(["small left pleural effusion", "no acute cardiopulmonary abnormality"])
    with torch.no_grad():
        img = pre.model.encode_image(torch.randn(2, 3, 48, 48))
        txt = pre.model.encode_text(tokens)
    assert img.shape == txt.shape and torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)

    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    parts = {"clip": {"loss"}, "mgll": {"clip", "point", "kl"}, "mgca": {"ita", "tca", "cpa"},
             "mgca+mgll": {"clip", "point", "kl", "tca", "cpa"}}[objective]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert parts <= set(train_rows[-1]), train_rows[-1]


@pytest.mark.slow
def test_resume_gives_the_same_losses(synth_manifest, tmp_path):
    full = train(_cfg(synth_manifest, tmp_path / "full", "mgll", epochs=2, eval_at_start=False))
    train(_cfg(synth_manifest, tmp_path / "cut", "mgll", epochs=2, eval_at_start=False, stop_after_steps=5))
    resumed = train(_cfg(synth_manifest, tmp_path / "cut", "mgll", epochs=2, eval_at_start=False), resume=True)
    assert_resumed_losses_match(full, resumed, first_step=6)


def test_resume_without_checkpoint_is_a_clear_error(synth_manifest, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        train(_cfg(synth_manifest, tmp_path / "none", "clip"), resume=True)


def test_non_finite_steps_are_counted_then_stop(synth_manifest, tmp_path, monkeypatch):
    from medgrain.losses import objective as objective_module

    real = objective_module.ClipObjective.forward

    def poisoned(self, model, batch):
        out = real(self, model, batch)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(objective_module.ClipObjective, "forward", poisoned)
    cfg = _cfg(synth_manifest, tmp_path / "nan", "clip", max_nonfinite_steps=3, eval_at_start=False)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        train(cfg)
    warnings = [json.loads(x) for x in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["split"] == "warning" for r in warnings) == 3


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_processes_trains_and_logs_global_loss(synth_manifest, tmp_path):
    """Two gloo processes with half the batch each, accumulation, and bad images skipped on one rank only:
    the ranks cut their batches to the same size and the run reports both counts over all ranks."""
    import shutil

    from medgrain.data import read_manifest
    from medgrain.training.sampling import ShardedBatchSampler

    data = tmp_path / "data"
    shutil.copytree(synth_manifest.parent, data)
    manifest = read_manifest(data / synth_manifest.name)
    train_records = manifest.split("train")
    # Every record of rank 1's second micro-batch (the one whose backward DDP reduces in) fails: both
    # ranks step over it, and the gradients of the group's first micro-batch are averaged by hand.
    whole = list(ShardedBatchSampler(len(train_records), 8, seed=0, rank=1, world_size=2, multiple_of=2))[1]
    bad = {r.id: r for r in train_records[:6] + [train_records[i] for i in whole]}.values()
    for record in bad:
        manifest.resolve(record.image).write_bytes(b"not a png")
    cfg = {
        "data.manifest": str(data / synth_manifest.name), "data.on_error": "skip",
        "model.preset": "tiny", "model.overrides.image.image_size": 48,
        "objective.name": "mgll", "train.epochs": 1, "train.log_every": 1, "train.progress": False,
        "train.tensorboard": False, "optim.warmup_steps": 1,
    }
    args = [f"{k}={v}" for k, v in cfg.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # grad_accum=2 exercises DDP's no_sync on the first micro-batch of each group.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medgrain", "pretrain", "--config", "tiny-mgll", *args,
           f"train.output_dir={tmp_path / 'ddp'}", "train.batch_size=8", "train.grad_accum=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows and all(r["loss"] == r["loss"] for r in train_rows)
    assert (tmp_path / "ddp" / "checkpoints" / "last" / "model.safetensors").is_file()
    (summary,) = [r for r in rows if r["split"] == "summary"]
    # Each bad record is counted once whichever rank met it (the trailing partial batch is dropped, so
    # some may not be met), and every batch that lost one on one rank only costs the other rank one.
    assert len(whole) <= summary["skipped_records"] <= len(bad) and summary["equalised_records"] >= len(whole)
    assert summary["empty_batches"] == 1
    warnings = [r for r in rows if r["split"] == "warning"]
    assert any("left out so that every rank" in w["message"] for w in warnings)
    assert any(w["message"].startswith("step 1: a micro-batch had no record left") for w in warnings)
    assert "good record(s) left out" in proc.stderr and "1 micro-batch(es) with no record left" in proc.stderr


def test_a_batch_with_no_good_record_is_stepped_over_and_counted(synth_manifest, tmp_path):
    """on_error=skip, one process: the first step's whole batch is unreadable. It makes no update (the
    weights stay as initialised until step 2), the schedule still advances, and the count is reported."""
    import shutil

    from safetensors.torch import load_file

    from medgrain.data import read_manifest
    from medgrain.training.sampling import ShardedBatchSampler

    data = tmp_path / "data"
    shutil.copytree(synth_manifest.parent, data)
    manifest = read_manifest(data / synth_manifest.name)
    train_records = manifest.split("train")
    first = next(iter(ShardedBatchSampler(len(train_records), 16, seed=0)))
    for i in first:
        manifest.resolve(train_records[i].image).write_bytes(b"not a png")
    overrides = {"data": {"manifest": str(data / synth_manifest.name), "on_error": "skip"}}
    cfg = _cfg(synth_manifest, tmp_path / "one", "clip", epochs=1, eval_at_start=False, stop_after_steps=1)
    cfg = load_config({**cfg.model_dump(mode="json"), **overrides})
    untouched = train(cfg)
    assert untouched.empty_batches == 1 and untouched.skipped_records == 16 and untouched.skipped_steps == 0
    assert [r for r in untouched.history if r["split"] == "train"] == []  # nothing was trained on: no row

    torch.manual_seed(cfg.train.seed)
    from medgrain.models import create_model

    initial = create_model(cfg.model.preset, **cfg.model.overrides).state_dict()
    after_one = load_file(str(untouched.last_checkpoint / "model.safetensors"))
    assert all(torch.equal(after_one[k], initial[k]) for k in after_one)
    state = torch.load(untouched.last_checkpoint / "train_state.pt", weights_only=True)
    assert state["step"] == 1 and state["scheduler"]["last_epoch"] == 1

    cfg = load_config({**cfg.model_dump(mode="json"), "train": {**cfg.train.model_dump(mode="json"),
                       "output_dir": str(tmp_path / "all"), "stop_after_steps": None}})
    result = train(cfg)
    steps = [r["step"] for r in result.history if r["split"] == "train"]
    assert steps[0] == 2 and result.empty_batches == 1
    rows = [json.loads(x) for x in (tmp_path / "all" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if r["split"] == "summary"][0]["empty_batches"] == 1


def test_gradient_accumulation_steps_once_per_accumulated_batches(synth_manifest, tmp_path):
    cfg = _cfg(synth_manifest, tmp_path / "accum", "clip", epochs=1, grad_accum=2, eval_at_start=False,
               tensorboard=True)
    result = train(cfg)
    assert list((tmp_path / "accum" / "tensorboard").glob("events.out.tfevents.*"))
    from medgrain.data import read_manifest

    n_train = len(read_manifest(synth_manifest).split("train"))
    micro_batches = n_train // 16
    assert micro_batches % 2 == 1, "the fixture should leave a trailing micro-batch to drop"
    expected = micro_batches // 2
    steps = [r["step"] for r in result.history if r["split"] == "train"]
    assert steps == list(range(1, expected + 1))
    state = torch.load(result.last_checkpoint / "train_state.pt", weights_only=True)
    assert state["step"] == expected and state["scheduler"]["last_epoch"] == expected


def test_a_checkpoint_write_that_dies_leaves_the_last_good_one(synth_manifest, tmp_path, monkeypatch):
    from medgrain.training import checkpoint as ckpt

    cfg = _cfg(synth_manifest, tmp_path / "atomic", "clip", epochs=1, eval_at_start=False)
    last = train(cfg).last_checkpoint
    before = (last / "model.safetensors").read_bytes()

    def dies(*args, **kwargs):
        raise OSError("disk full")

    # The process dies while the next checkpoint is being written: model files are staged, train state fails.
    monkeypatch.setattr(ckpt.torch, "save", dies)
    with pytest.raises(OSError, match="disk full"):
        train(_cfg(synth_manifest, tmp_path / "atomic", "clip", epochs=2, eval_at_start=False), resume=True)
    monkeypatch.undo()
    assert ckpt.find_resumable(last) == last and (last / "model.safetensors").read_bytes() == before

    # Killed between the two renames of the swap: the previous checkpoint is found as NAME.old.
    last.rename(last.with_name("last.old"))
    assert ckpt.find_resumable(last) == last.with_name("last.old")
    resumed = train(_cfg(synth_manifest, tmp_path / "atomic", "clip", epochs=2, eval_at_start=False), resume=True)
    assert resumed.last_checkpoint.is_dir()
