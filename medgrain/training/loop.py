"""The pretraining loop: one machine or torchrun (DDP), the same code path.

``train(config)`` is callable from tests and notebooks; ``medgrain pretrain`` is a thin wrapper.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.dataset import Collator, ImageTextDataset, num_samples, take_rows
from ..data.manifest import Manifest, read_manifest
from ..data.transforms import eval_transform, pretrain_transform
from ..losses.objective import Objective, build_objective
from ..models import create_model
from . import distributed as mdist
from .checkpoint import find_resumable, link_checkpoint, load_training_state, save_checkpoint
from .config import RunConfig
from .logging import RunLogger
from .optim import build_optimizer, build_scheduler
from .sampling import EpochSeededDataset, ShardedBatchSampler


class NonFiniteLossError(RuntimeError):
    pass


class TrainingModule(nn.Module):
    """Model and objective in one module, so DDP sees one forward and synchronises both
    (the objective may own parameters: MGCA's prototypes, learnable cross-attention)."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.objective(self.model, batch)


@dataclass
class TrainResult:
    output_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    history: list[dict[str, Any]]
    skipped_steps: int
    skipped_records: int  # bad records skipped under data.on_error=skip, over all ranks
    equalised_records: int = 0  # good records left out to give every rank the same batch size (DDP + skips)
    empty_batches: int = 0  # micro-batches stepped over because no record of them was left (on some rank)

    @property
    def valid_losses(self) -> list[float]:
        return [h["loss"] for h in self.history if h.get("split") == "valid"]


def to_device(obj, device: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def ensure_data(cfg: RunConfig, is_main: bool = True) -> Path:
    manifest = Path(cfg.data.manifest)
    if manifest.is_file():
        return manifest
    syn = cfg.data.synthetic
    if syn is None:
        raise FileNotFoundError(
            f"manifest not found: {manifest} (set data.synthetic to generate a synthetic dataset there)"
        )
    from ..data.synthetic import generate

    if is_main:
        generate(syn.domain, manifest.parent, n=syn.n, seed=syn.seed, size=syn.size, workers=syn.workers)
    mdist.barrier()
    if not manifest.is_file():
        raise FileNotFoundError(f"synthetic generation did not write {manifest}")
    return manifest


def open_training_data(cfg: RunConfig, is_main: bool = True) -> Manifest:
    """The records of ``data.manifest`` (generated first where ``data.synthetic`` asks), or of the
    WebDataset shards in ``data.shards``; both give the same records, read the same way."""
    if cfg.data.shards is not None:
        from ..data.shards import read_shards

        return read_shards(cfg.data.shards, on_error=cfg.data.on_error)
    return read_manifest(ensure_data(cfg, is_main), on_error=cfg.data.on_error)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: RunConfig, resume: bool = False) -> TrainResult:
    env = mdist.setup(cfg.train.device)
    try:
        return _train(cfg, env, resume)
    finally:
        mdist.cleanup()


def _train(cfg: RunConfig, env: mdist.DistEnv, resume: bool) -> TrainResult:
    t = cfg.train
    out = Path(t.output_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.yaml").write_text(cfg.to_yaml())
    manifest = open_training_data(cfg, env.is_main)

    # Same initialisation on every rank (DDP also broadcasts it); then per-rank streams for dropout.
    _seed_everything(t.seed)
    created = create_model(cfg.model.preset, **cfg.model.overrides)
    model, tokenizer, preprocess = created.model, created.tokenizer, created.preprocess
    if cfg.data.max_length:
        tokenizer.max_length = cfg.data.max_length

    granularities = cfg.data.granularities or manifest.granularities
    has_report = any(r.report for r in manifest.records)
    objective = build_objective(cfg.objective, granularities, has_report, embed_dim=model.embed_dim)
    _seed_everything(t.seed + 1000 * env.rank)

    common = dict(granularities=granularities, with_report=objective.needs_report, on_error=cfg.data.on_error,
                  max_image_pixels=cfg.data.max_image_pixels)
    train_ds = EpochSeededDataset(
        ImageTextDataset(manifest, cfg.data.train_split, transform=pretrain_transform(preprocess), **common),
        seed=t.seed,
    )
    valid_ds = None
    if cfg.data.valid_split and manifest.split(cfg.data.valid_split):
        valid_ds = ImageTextDataset(manifest, cfg.data.valid_split, transform=eval_transform(preprocess), **common)
    # Under on_error=skip a batch whose records all fail is an empty batch that every rank steps over.
    collate = Collator(tokenizer, granularities, with_report=objective.needs_report,
                       allow_empty=cfg.data.on_error == "skip")

    train_sampler = ShardedBatchSampler(len(train_ds), t.batch_size, t.seed, env.rank, env.world_size,
                                        multiple_of=t.grad_accum)
    steps_per_epoch = len(train_sampler) // t.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"one epoch of {len(train_ds)} records has fewer batches of {t.batch_size} than "
            f"train.grad_accum={t.grad_accum}"
        )
    total_steps = steps_per_epoch * t.epochs

    device = env.device
    module = TrainingModule(model, objective).to(device)
    if env.distributed and t.sync_batchnorm and device.type == "cuda":
        # SyncBatchNorm runs only on GPUs; on CPU (gloo) each rank normalises over its own samples.
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    optimizer = build_optimizer({"model": module.model, "objective": module.objective}, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")

    state = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best_valid": math.inf, "skipped_steps": 0,
             "skipped_records": 0, "equalised_records": 0, "empty_batches": 0}
    ckpt_dir = out / "checkpoints"
    if resume:
        src = find_resumable(ckpt_dir / "last")
        if src is None:
            raise FileNotFoundError(f"--resume: no checkpoint to resume from in {ckpt_dir / 'last'}")
        loaded = load_training_state(src, model=module.model, objective=module.objective,
                                     optimizer=optimizer, scheduler=scheduler)
        rng = loaded.pop("rng_state_per_rank", [])
        if env.rank < len(rng):
            torch.set_rng_state(rng[env.rank])
        cuda_rng = loaded.pop("cuda_rng_state_per_rank", [])
        if device.type == "cuda" and env.rank < len(cuda_rng):
            torch.cuda.set_rng_state(cuda_rng[env.rank], device)
        state.update(loaded)

    ddp = module
    if env.distributed:
        ddp = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # presets may carry heads the chosen objective does not use
        )

    logger = RunLogger(out, enabled=env.is_main, tensorboard=t.tensorboard, progress=t.progress,
                       total_steps=total_steps, start_step=state["step"])
    history: list[dict[str, Any]] = []
    consecutive_bad = 0
    last = ckpt_dir / "last"
    best = ckpt_dir / "best" if valid_ds is not None else None
    params = [p for p in module.parameters()]

    best_written_at: int | None = None  # the step `best` holds, while nothing has moved since

    def checkpoint(name: Path) -> None:
        nonlocal best_written_at
        if name == last and best_written_at == state["step"]:
            # Nothing changed since `best` was written (no step, no random draw): share its files.
            if env.is_main:
                link_checkpoint(best, last)
            mdist.barrier()
            return
        mdist.check_in_sync(params)
        rng = {"rng_state_per_rank": mdist.all_gather(torch.get_rng_state())}
        if device.type == "cuda":  # dropout on the GPU draws from the device's generator
            rng["cuda_rng_state_per_rank"] = mdist.all_gather(torch.cuda.get_rng_state(device))
        if env.is_main:
            save_checkpoint(name, model=module.model, tokenizer=tokenizer, objective=module.objective,
                            optimizer=optimizer, scheduler=scheduler, state={**state, **rng},
                            run_yaml=cfg.to_yaml())
        best_written_at = state["step"] if name == best else None
        mdist.barrier()

    if valid_ds is not None and state["step"] == 0 and t.eval_at_start:
        row = evaluate_loss(module, valid_ds, collate, t.batch_size, env, use_bf16, cfg.data.num_workers)
        row.update({"split": "valid", "step": 0, "epoch": -1})
        logger.log(row)
        history.append(row)

    stop = False
    for epoch in range(state["epoch"], t.epochs):
        module.objective.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        start_batch = state["batch_in_epoch"] if epoch == state["epoch"] else 0
        train_sampler.set_epoch(epoch, start_batch)
        # The loader draws its workers' base seed from `generator`, not from the global stream, so
        # a resumed run's dropout sees the same random numbers as an uninterrupted run's.
        loader = DataLoader(train_ds, batch_sampler=train_sampler, collate_fn=collate,
                            num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(t.seed * 7919 + epoch))
        module.train()
        micro, sums, n_parts, t0, samples = 0, {}, 0, time.perf_counter(), 0
        step_started = t0
        local_finite = torch.ones((), device=device)
        group_rows, last_loss = 0, math.nan  # samples the current accumulation group trained on
        for batch in loader:
            batch, skipped, equalised = equalise_batches(batch, env)
            state["skipped_records"] += skipped
            state["equalised_records"] += equalised
            if equalised:
                logger.warn(f"step {state['step'] + 1}: {equalised} good record(s) left out so that every rank has "
                            f"the batch size of the smallest (records were skipped; "
                            f"{state['equalised_records']} in all)")
            n = num_samples(batch)  # the same on every rank after equalise_batches
            sync = (micro + 1) % t.grad_accum == 0
            if n == 0:
                # Every record of this micro-batch failed to load (on this rank or another): no forward.
                state["empty_batches"] += 1
                logger.warn(f"step {state['step'] + 1}: a micro-batch had no record left to train on "
                            f"({state['empty_batches']} in all); it is stepped over")
                if sync and env.distributed and group_rows:
                    # DDP averages gradients in the group's last backward, which did not run: do it here.
                    mdist.average_gradients(params)
            else:
                batch = to_device(batch, device)
                # Until the last micro-batch of a group, DDP keeps gradients local (one context for both the
                # forward and the backward: no_sync is a one-shot context manager).
                with ddp.no_sync() if (env.distributed and not sync) else contextlib.nullcontext():
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                        parts = ddp(batch)
                    loss = parts["loss"]
                    local_finite = local_finite * torch.isfinite(loss.detach()).float()
                    (loss / t.grad_accum).backward()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                last_loss = float(loss.detach())
                n_parts += 1
                samples += n * env.world_size
                group_rows += n
            micro += 1
            state["batch_in_epoch"] = start_batch + micro
            if not sync:
                continue

            module.objective.after_backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in params if p.grad is not None],
                float("inf") if cfg.optim.clip_grad is None else cfg.optim.clip_grad,  # inf: measure, do not clip
            )
            ok = (torch.isfinite(grad_norm).float() * local_finite).reshape(1)
            mdist.all_reduce_(ok, "min")
            if not group_rows:
                # Nothing was trained on: no update, and no weight decay either. The schedule still
                # advances below, so it stays aligned with the data.
                logger.warn(f"step {state['step'] + 1}: no record to train on in this step; no update")
            elif bool(ok.item()):
                optimizer.step()
                consecutive_bad = 0
            else:
                state["skipped_steps"] += 1
                consecutive_bad += 1
                logger.warn(f"step {state['step'] + 1}: non-finite loss or gradient; the update is skipped "
                            f"({consecutive_bad} in a row, {state['skipped_steps']} in all)")
                if consecutive_bad >= t.max_nonfinite_steps:
                    raise NonFiniteLossError(
                        f"{consecutive_bad} consecutive steps had a non-finite loss or gradient "
                        f"(last loss parts: { {k: float(v.detach()) for k, v in parts.items()} }); lower optim.lr, "
                        "check the data, or use train.precision=fp32"
                    )
            optimizer.zero_grad(set_to_none=True)
            group_rows = 0
            with warnings.catch_warnings():
                # A skipped update still advances the schedule, so it stays aligned with the data; torch
                # warns about that order when the very first updates are the skipped ones.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                scheduler.step()
            state["step"] += 1
            local_finite = torch.ones((), device=device)

            # A row needs at least one micro-batch trained on since the last (empty ones are stepped over).
            if n_parts and (state["step"] % t.log_every == 0 or state["step"] == total_steps):
                dt = time.perf_counter() - t0
                row = {"split": "train", "step": state["step"], "epoch": epoch,
                       "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "logit_scale": float(module.model.logit_scale_value().detach()),
                       "samples_per_s": samples / max(dt, 1e-9),
                       **_mean_over_ranks({k: v / n_parts for k, v in sums.items()}, env)}
                logger.log(row)
                history.append(row)
                sums, n_parts, t0, samples = {}, 0, time.perf_counter(), 0
            step_time = time.perf_counter() - step_started
            logger.advance(state["step"], {"loss": last_loss, "epoch": epoch,
                                           "rate": t.grad_accum * t.batch_size * env.world_size / max(step_time, 1e-9)})
            step_started = time.perf_counter()

            if t.checkpoint_every and state["step"] % t.checkpoint_every == 0:
                checkpoint(last)
            if t.stop_after_steps and state["step"] >= t.stop_after_steps:
                stop = True
                break
        if stop:
            break
        state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
        if valid_ds is not None and ((epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs):
            row = evaluate_loss(module, valid_ds, collate, t.batch_size, env, use_bf16, cfg.data.num_workers)
            row.update({"split": "valid", "step": state["step"], "epoch": epoch})
            logger.log(row)
            history.append(row)
            if row["loss"] < state["best_valid"]:
                state["best_valid"] = row["loss"]
                checkpoint(best)
        checkpoint(last)

    if stop:
        checkpoint(last)
    counts = ("skipped_steps", "skipped_records", "equalised_records", "empty_batches")
    logger.close(summary={k: state.get(k, 0) for k in counts})
    return TrainResult(out, last, best if best is not None and best.exists() else None, history,
                       state["skipped_steps"], state["skipped_records"], state.get("equalised_records", 0),
                       state.get("empty_batches", 0))


def equalise_batches(batch: dict[str, Any], env: mdist.DistEnv) -> tuple[dict[str, Any], int, int]:
    """Returns ``(batch, skipped, equalised)``: the records skipped for bad input in this batch summed
    over ranks, and how many good records this call left out on all ranks together.

    The losses gather features across ranks, which needs the same batch size on every rank; a record
    skipped under ``data.on_error="skip"`` breaks that on one rank only. Every rank keeps as many
    samples as the smallest has (one collective per batch), and both counts are reported: nothing is
    dropped silently, and every rank holds the same global counts (what rank 0 logs and checkpoints).
    """
    n, skipped = num_samples(batch), int(batch.get("skipped", 0))
    if not env.distributed:
        return batch, skipped, 0
    sizes = torch.stack([torch.tensor(n), torch.tensor(skipped)])
    per_rank = torch.stack(mdist.all_gather(sizes))  # (world, 2)
    smallest = int(per_rank[:, 0].min())
    equalised = int(per_rank[:, 0].sum()) - smallest * env.world_size
    return (take_rows(batch, smallest) if n > smallest else batch), int(per_rank[:, 1].sum()), equalised


def _mean_over_ranks(values: dict[str, float], env: mdist.DistEnv) -> dict[str, float]:
    """Each rank's loss covers its own rows; the logged value is the global batch's (their mean)."""
    if not env.distributed or not values:
        return values
    keys = sorted(values)
    vec = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    mdist.all_reduce_(vec)
    return {k: vec[i].item() / env.world_size for i, k in enumerate(keys)}


@torch.no_grad()
def evaluate_loss(module: TrainingModule, dataset, collate, batch_size: int, env: mdist.DistEnv,
                  use_bf16: bool, num_workers: int = 0) -> dict[str, float]:
    """Mean objective over a split (weighted by batch size), in eval mode, summed over ranks."""
    sampler = ShardedBatchSampler(len(dataset), batch_size, seed=0, rank=env.rank, world_size=env.world_size,
                                  shuffle=False, drop_last=False)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    was_training = module.training
    module.eval()
    sums: dict[str, float] = {}
    count = 0
    for batch in loader:
        batch, _, _ = equalise_batches(batch, env)  # the losses gather across ranks: equal batches
        n = num_samples(batch)
        if n < 2:  # a contrastive loss over one sample is 0 by construction: leave it out (on every rank)
            continue
        batch = to_device(batch, env.device)
        with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            parts = module(batch)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        count += n
    module.train(was_training)
    keys = sorted(sums)
    vec = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64)
    mdist.all_reduce_(vec)
    total = vec[-1].item()
    if total == 0:
        raise ValueError("the validation split gave no batch of at least 2 records")
    return {k: vec[i].item() / total for i, k in enumerate(keys)} | {"records": int(total)}
