"""The pretraining loop: one machine or torchrun (DDP), the same code path.

``train(config)`` is callable from tests and notebooks; ``medgrain pretrain`` is a thin wrapper.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import distributed as mdist
from ..data.dataset import Collator, ImageTextDataset, num_samples, take_rows
from ..data.manifest import Manifest, read_manifest
from ..data.skips import SkipReport, dataset_skips, manifest_skips
from ..data.transforms import eval_transform, pretrain_transform
from ..losses.objective import Objective, build_objective
from ..models.factory import create_model_and_tokenizer
from ..threads import use_threads
from .checkpoint import find_resumable, link_checkpoint, load_training_state, save_checkpoint
from .config import ConfigError, RunConfig, TrainSection
from .data import apply_drop_texts, build_datasets, build_train_sampler, open_sources, run_granularities
from .grad_cache import batchnorm_modules, cached_backward
from .logging import RunLogger
from .optim import build_optimizer, build_scheduler
from .sampling import EpochSeededDataset, ShardedBatchSampler

log = logging.getLogger(__name__)


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
    skips: dict[str, Any] = field(default_factory=dict)  # SkipReport.summary(): distinct records per reason

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


@dataclass
class TrainState:
    """What a checkpoint holds besides weights, optimizer and RNG: where the run is, and its counts.

    open_clip_train's seam: everything ``--resume`` needs to continue exactly where the run stopped.
    ``to_dict`` gives the plain values stored in ``train_state.pt`` (loaded with weights_only=True)."""

    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of ``epoch`` already trained on
    step: int = 0  # optimizer steps (the schedule's position)
    best_valid: float = math.inf
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient
    skipped_records: int = 0  # bad records skipped under data.on_error=skip, over all ranks
    equalised_records: int = 0  # good records left out to give every rank the same batch size
    empty_batches: int = 0  # micro-batches stepped over because no record of them was left
    # records that failed to load in training or validation, per reason (SkipReport.state(), all ranks)
    load_failures: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        """From a checkpoint's values; counters an older checkpoint lacks start at 0."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class Run:
    """What set-up builds once and every step reads: the objects of one training run.

    ``state`` is checkpointed; ``consecutive_bad`` and ``best_written_at`` live only for the process."""

    cfg: RunConfig
    env: mdist.DistEnv
    out: Path
    module: TrainingModule
    ddp: nn.Module  # ``module``, wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: Any
    tokenizer: Any
    train_ds: EpochSeededDataset
    valid_ds: ImageTextDataset | None
    collate: Collator
    train_sampler: ShardedBatchSampler
    total_steps: int
    use_bf16: bool
    logger: RunLogger
    state: TrainState
    history: list[dict[str, Any]] = field(default_factory=list)
    consecutive_bad: int = 0  # non-finite steps in a row (a resumed run starts counting afresh)
    best_written_at: int | None = None  # the step `best` holds, while nothing has moved since
    # what on_error=skip left out: manifest lines and dataset records (found again at every start, so
    # not checkpointed) and load failures (``state.load_failures``, kept across --resume)
    setup_skips: SkipReport = field(default_factory=SkipReport)
    load_skips: SkipReport = field(default_factory=SkipReport)

    @property
    def params(self) -> list[torch.Tensor]:
        return list(self.module.parameters())

    @property
    def last(self) -> Path:
        return self.out / "checkpoints" / "last"

    @property
    def best(self) -> Path | None:
        return self.out / "checkpoints" / "best" if self.valid_ds is not None else None


@dataclass
class _EpochMeter:
    """One epoch's running sums between two logged rows, and the current accumulation group."""

    t0: float
    micro: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    n_parts: int = 0
    samples: int = 0
    group_rows: int = 0  # samples the current accumulation group trained on
    finite: float = 1.0  # whether every loss of the current group was finite (as 0/1)
    last_loss: float = math.nan
    last_parts: dict[str, float] = field(default_factory=dict)
    step_started: float = 0.0

    def reset_rows(self) -> None:
        self.sums, self.n_parts, self.t0, self.samples = {}, 0, time.perf_counter(), 0


def train(cfg: RunConfig, resume: bool = False) -> TrainResult:
    env = mdist.setup(cfg.train.device)
    try:
        return _train(cfg, env, resume)
    finally:
        mdist.cleanup()


def _train(cfg: RunConfig, env: mdist.DistEnv, resume: bool) -> TrainResult:
    run = set_up(cfg, env, resume)
    t, state = cfg.train, run.state
    if run.valid_ds is not None and state.step == 0 and t.eval_at_start:
        validate(run, step=0, epoch=-1)
    stopped = False
    for epoch in range(state.epoch, t.epochs):
        stopped = train_one_epoch(run, epoch)
        if stopped:
            break
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        if run.valid_ds is not None and ((epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs):
            row = validate(run, step=state.step, epoch=epoch)
            if row["loss"] < state.best_valid:
                state.best_valid = row["loss"]
                save(run, run.best)
        save(run, run.last)
    if stopped:
        save(run, run.last)
    counts = ("skipped_steps", "skipped_records", "equalised_records", "empty_batches")
    skips = SkipReport()
    skips.update(run.setup_skips)
    skips.update(run.load_skips)
    run.logger.close(summary={**{k: getattr(state, k) for k in counts}, "skipped": skips.summary()})
    if env.is_main and (skips.total or cfg.data.on_error == "skip"):
        log.log(logging.WARNING if skips.total else logging.INFO, skips.format())
    best = run.best
    return TrainResult(run.out, run.last, best if best is not None and best.exists() else None, run.history,
                       state.skipped_steps, state.skipped_records, state.equalised_records, state.empty_batches,
                       skips.summary())


# ----------------------------------------------------------------------------- set-up


def set_up(cfg: RunConfig, env: mdist.DistEnv, resume: bool) -> Run:
    """Data, model, objective, optimizer and schedule; the checkpoint's state when resuming; DDP."""
    t = cfg.train
    use_threads(cfg.data.num_workers)  # the process's cores between compute and data workers (no oversubscription)
    out = Path(t.output_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.yaml").write_text(cfg.to_yaml())
    sources = open_sources(cfg, lambda: open_training_data(cfg, env.is_main))

    # Same initialisation on every rank (DDP also broadcasts it); then per-rank streams for dropout.
    _seed_everything(t.seed)
    model, tokenizer = create_model_and_tokenizer(cfg.model.preset, **cfg.model.overrides)
    if cfg.data.max_length:
        tokenizer.max_length = cfg.data.max_length
    granularities = run_granularities(cfg, sources)
    has_report = any(r.report for s in sources for r in s.manifest.records)
    objective = build_objective(cfg.objective, granularities, has_report, embed_dim=model.embed_dim)
    _seed_everything(t.seed + 1000 * env.rank)

    sources = apply_drop_texts(cfg, sources, granularities, out, env.is_main)
    notes, find_unused = prepare_model(model, objective, t, _texts_complete(sources, cfg, objective))
    train_ds, valid_ds, collate = _datasets(cfg, sources, granularities, objective, model.config.preprocess_config(),
                                            tokenizer)
    train_sampler = build_train_sampler(cfg, sources, train_ds.base, env.rank, env.world_size)
    steps_per_epoch = len(train_sampler) // t.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"one epoch of {len(train_ds)} records has fewer batches of {t.batch_size} than "
            f"train.grad_accum={t.grad_accum}"
        )
    total_steps = steps_per_epoch * t.epochs

    module = TrainingModule(model, objective).to(env.device)
    if env.distributed and t.sync_batchnorm and env.device.type == "cuda":
        # SyncBatchNorm runs only on GPUs; on CPU (gloo) each rank normalises over its own samples.
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    optimizer = build_optimizer({"model": module.model, "objective": module.objective}, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    state = _resume(out, env, module, optimizer, scheduler) if resume else TrainState()
    logger = RunLogger(out, enabled=env.is_main, tensorboard=t.tensorboard, progress=t.progress,
                       total_steps=total_steps, start_step=state.step)
    for note in notes:
        logger.warn(note)
    # A static graph (DDP traces the first step, then skips its per-step bookkeeping) needs every step to
    # be one forward and one synchronised backward: not with accumulation (no_sync) or skipped records
    # (a micro-batch may have no forward at all); torch's reducer asserts otherwise.
    static = not find_unused and t.grad_accum == 1 and cfg.data.on_error != "skip"
    ddp = _wrap_ddp(module, env, find_unused, static)
    return Run(cfg=cfg, env=env, out=out, module=module, ddp=ddp, optimizer=optimizer,
               scheduler=scheduler, tokenizer=tokenizer, train_ds=train_ds, valid_ds=valid_ds, collate=collate,
               train_sampler=train_sampler, total_steps=total_steps,
               use_bf16=t.precision == "bf16" or (t.precision == "auto" and env.device.type == "cuda"),
               logger=logger, state=state, setup_skips=_setup_skips(sources, train_ds.base, valid_ds),
               load_skips=SkipReport(state.load_failures))


def _datasets(cfg: RunConfig, sources, granularities, objective: Objective, preprocess, tokenizer):
    """``(train, valid or None, collate)``: the sources' training splits, reseeding their augmentation
    every epoch, and their validation splits."""
    common = dict(granularities=granularities, with_report=objective.needs_report, on_error=cfg.data.on_error,
                  max_image_pixels=cfg.data.max_image_pixels)
    train, valid_ds = build_datasets(cfg, sources, granularities, common, pretrain_transform(preprocess),
                                     eval_transform(preprocess))
    train_ds = EpochSeededDataset(train, seed=cfg.train.seed)
    # Under on_error=skip a batch whose records all fail is an empty batch that every rank steps over.
    collate = Collator(tokenizer, granularities,
                       with_report=objective.needs_report, allow_empty=cfg.data.on_error == "skip")
    return train_ds, valid_ds, collate


def _setup_skips(sources, train_ds, valid_ds) -> SkipReport:
    """Manifest lines rejected while reading and records the datasets left out, per reason, over every
    source (the datasets are ConcatDatasets of one ImageTextDataset per source)."""
    skips = SkipReport()
    for source in sources:
        skips.update(manifest_skips(source.manifest))
    for ds in (train_ds, valid_ds):
        for part in getattr(ds, "datasets", [ds] if ds is not None else []):
            skips.update(dataset_skips(part))
    return skips


def _resume(out: Path, env: mdist.DistEnv, module: TrainingModule, optimizer, scheduler) -> TrainState:
    """Weights, optimizer, schedule and this rank's RNG streams from ``checkpoints/last``."""
    ckpt_dir = out / "checkpoints"
    src = find_resumable(ckpt_dir / "last")
    if src is None:
        raise FileNotFoundError(f"--resume: no checkpoint to resume from in {ckpt_dir / 'last'}")
    loaded = load_training_state(src, model=module.model, objective=module.objective,
                                 optimizer=optimizer, scheduler=scheduler)
    rng = loaded.pop("rng_state_per_rank", [])
    if env.rank < len(rng):
        torch.set_rng_state(rng[env.rank])
    cuda_rng = loaded.pop("cuda_rng_state_per_rank", [])
    if env.device.type == "cuda" and env.rank < len(cuda_rng):
        torch.cuda.set_rng_state(cuda_rng[env.rank], env.device)
    return TrainState.from_dict(loaded)


def _texts_complete(sources, cfg: RunConfig, objective: Objective) -> bool:
    """Every training record of every source has every text the objective reads (else a micro-batch
    may leave the text tower unused on one rank)."""
    records = (r for source in sources for r in source.manifest.split(cfg.data.train_split))
    for record in records:
        for name in objective.texts_read():
            if (not record.report) if name == "report" else (record.texts.get(name) is None):
                return False
    return True


def prepare_model(model: nn.Module, objective: Objective, t: TrainSection,
                  texts_complete: bool = True) -> tuple[list[str], bool]:
    """The training levers on the model; returns warnings for the log and whether DDP must search for
    unused parameters.

    Parameters the objective declares unused (token heads under clip and mgll, the logit scale under
    mgca) are frozen: they never get a gradient anyway, and DDP then needs no per-step search of the
    graph (``find_unused_parameters``). It searches only for an objective that cannot say, or when
    texts are absent in the data (a micro-batch without any text of a kind skips the text tower)."""
    notes = []
    if t.contrastive_chunks > 1:
        if objective.chunk_limitation:
            raise ConfigError(f"train.contrastive_chunks={t.contrastive_chunks} with objective "
                              f"{objective.name!r}: {objective.chunk_limitation}")
        norms = batchnorm_modules(model)
        if norms:
            notes.append(f"train.contrastive_chunks={t.contrastive_chunks}: BatchNorm layers ({', '.join(norms[:3])}"
                         f"{', ...' if len(norms) > 3 else ''}) normalise over each chunk, not the batch, so the "
                         "step is not exactly the unchunked one (a BatchNorm-free tower such as a ViT is)")
    if t.grad_checkpointing:
        model.set_grad_checkpointing(True)
    unused = objective.unused_parameters(model)
    for name in unused or []:
        model.get_parameter(name).requires_grad_(False)
    if t.compile:
        # In place (nn.Module.compile): the state dict keeps its names, so checkpoints are unchanged.
        model.visual.compile()
        model.text.compile()
    return notes, unused is None or not texts_complete


def _wrap_ddp(module: TrainingModule, env: mdist.DistEnv, find_unused: bool, static_graph: bool) -> nn.Module:
    """DDP, searching the graph for unused parameters only where asked; ``static_graph``: the same
    parameters in the same order at every step, so DDP reuses its first step's bucket order."""
    if not env.distributed:
        return module
    device = env.device
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused, static_graph=static_graph,
    )


# ----------------------------------------------------------------------------- one epoch


def train_one_epoch(run: Run, epoch: int) -> bool:
    """Train on ``epoch`` from ``run.state.batch_in_epoch`` on; True when ``train.stop_after_steps``
    stopped it before its end."""
    t, state = run.cfg.train, run.state
    run.module.objective.set_epoch(epoch)
    run.train_ds.set_epoch(epoch)
    start_batch = state.batch_in_epoch if epoch == state.epoch else 0
    run.train_sampler.set_epoch(epoch, start_batch)
    # What this epoch draws: records per source, texts present per granularity (issue 12's mixture log).
    run.logger.log({"split": "data", "epoch": epoch, "step": state.step,
                    **run.train_ds.base.counts(run.train_sampler.epoch_indices())})
    # The loader draws its workers' base seed from `generator`, not from the global stream, so
    # a resumed run's dropout sees the same random numbers as an uninterrupted run's.
    loader = DataLoader(run.train_ds, batch_sampler=run.train_sampler, collate_fn=run.collate,
                        num_workers=run.cfg.data.num_workers, pin_memory=run.env.device.type == "cuda",
                        generator=torch.Generator().manual_seed(t.seed * 7919 + epoch))
    run.module.train()
    meter = _EpochMeter(t0=time.perf_counter())
    meter.step_started = meter.t0
    for batch in loader:
        sync = (meter.micro + 1) % t.grad_accum == 0
        train_micro_batch(run, batch, meter, sync)
        meter.micro += 1
        state.batch_in_epoch = start_batch + meter.micro
        if not sync:
            continue
        grad_norm = optimizer_step(run, meter)
        _after_step(run, meter, epoch, grad_norm)
        if t.checkpoint_every and state.step % t.checkpoint_every == 0:
            save(run, run.last)
        if t.stop_after_steps and state.step >= t.stop_after_steps:
            return True
    return False


def train_micro_batch(run: Run, batch: dict[str, Any], meter: _EpochMeter, sync: bool) -> None:
    """Forward and backward of one micro-batch (or stepping over an empty one); gradients accumulate."""
    state, env, t = run.state, run.env, run.cfg.train
    batch, skipped, equalised = equalise_batches(batch, env)
    state.skipped_records += skipped
    count_load_failures(run.load_skips, batch, skipped, env)
    state.equalised_records += equalised
    if equalised:
        run.logger.warn(f"step {state.step + 1}: {equalised} good record(s) left out so that every rank has "
                        f"the batch size of the smallest (records were skipped; "
                        f"{state.equalised_records} in all)")
    n = num_samples(batch)  # the same on every rank after equalise_batches
    if n < 2:
        # Every record of this micro-batch, or all but one, failed to load (on this rank or another): no
        # forward, since a contrastive loss over one sample is 0 and batch norm cannot train on it.
        state.empty_batches += 1
        left = "no record" if n == 0 else "only one record"
        run.logger.warn(f"step {state.step + 1}: a micro-batch had {left} left to train on "
                        f"({state.empty_batches} in all); it is stepped over")
        if sync and env.distributed and meter.group_rows and t.contrastive_chunks == 1:
            # DDP averages gradients in the group's last backward, which did not run: do it here.
            mdist.average_gradients(run.params)
        return
    batch = to_device(batch, env.device)
    if t.contrastive_chunks > 1:
        parts = _cached_micro_batch(run, batch)
    else:
        parts = _micro_batch(run, batch, sync)
    meter.finite *= float(torch.isfinite(parts["loss"].detach()))
    meter.last_parts = {k: float(v.detach()) for k, v in parts.items()}
    for k, v in meter.last_parts.items():
        meter.sums[k] = meter.sums.get(k, 0.0) + v
    meter.last_loss = meter.last_parts["loss"]
    meter.n_parts += 1
    meter.samples += n * env.world_size
    meter.group_rows += n


def _micro_batch(run: Run, batch: dict[str, Any], sync: bool) -> dict[str, torch.Tensor]:
    env = run.env
    # Until the last micro-batch of a group, DDP keeps gradients local (one context for both the
    # forward and the backward: no_sync is a one-shot context manager).
    with run.ddp.no_sync() if (env.distributed and not sync) else contextlib.nullcontext():
        with _autocast(run):
            parts = run.ddp(batch)
        (parts["loss"] / run.cfg.train.grad_accum).backward()
    return parts


def _cached_micro_batch(run: Run, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Gradient caching (medgrain.training.grad_cache): outside DDP, whose one forward per backward it
    cannot follow; optimizer_step averages the gradients over ranks instead."""
    t = run.cfg.train
    return cached_backward(run.module.objective, run.module.model, batch, t.contrastive_chunks,
                           loss_scale=1.0 / t.grad_accum, context=lambda: _autocast(run))


def _autocast(run: Run):
    return torch.autocast(run.env.device.type, dtype=torch.bfloat16, enabled=run.use_bf16)


def optimizer_step(run: Run, meter: _EpochMeter) -> torch.Tensor:
    """Close an accumulation group: clip, update unless a rank's loss or gradient was non-finite,
    advance the schedule. Returns the gradient norm before clipping."""
    state, t, optim = run.state, run.cfg.train, run.cfg.optim
    if t.contrastive_chunks > 1 and run.env.distributed:
        mdist.average_gradients(run.params)
        mdist.broadcast_buffers(run.module)
    run.module.objective.after_backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(
        [p for p in run.params if p.grad is not None],
        float("inf") if optim.clip_grad is None else optim.clip_grad,  # inf: measure, do not clip
    )
    ok = (torch.isfinite(grad_norm).float() * meter.finite).reshape(1)
    mdist.all_reduce_(ok, "min")
    if not meter.group_rows:
        # Nothing was trained on: no update, and no weight decay either. The schedule still
        # advances below, so it stays aligned with the data.
        run.logger.warn(f"step {state.step + 1}: no record to train on in this step; no update")
    elif bool(ok.item()):
        run.optimizer.step()
        run.consecutive_bad = 0
    else:
        state.skipped_steps += 1
        run.consecutive_bad += 1
        run.logger.warn(f"step {state.step + 1}: non-finite loss or gradient; the update is skipped "
                        f"({run.consecutive_bad} in a row, {state.skipped_steps} in all)")
        if run.consecutive_bad >= t.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{run.consecutive_bad} consecutive steps had a non-finite loss or gradient "
                f"(last loss parts: {meter.last_parts}); lower optim.lr, "
                "check the data, or use train.precision=fp32"
            )
    run.optimizer.zero_grad(set_to_none=True)
    meter.group_rows = 0
    with warnings.catch_warnings():
        # A skipped update still advances the schedule, so it stays aligned with the data; torch
        # warns about that order when the very first updates are the skipped ones.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        run.scheduler.step()
    state.step += 1
    meter.finite = 1.0
    return grad_norm


def _after_step(run: Run, meter: _EpochMeter, epoch: int, grad_norm: torch.Tensor) -> None:
    """The training row every ``log_every`` steps (the mean over the micro-batches since the last) and
    the progress bar."""
    state, t, env = run.state, run.cfg.train, run.env
    # A row needs at least one micro-batch trained on since the last (empty ones are stepped over).
    if meter.n_parts and (state.step % t.log_every == 0 or state.step == run.total_steps):
        dt = time.perf_counter() - meter.t0
        row = {"split": "train", "step": state.step, "epoch": epoch,
               "lr": run.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
               "logit_scale": float(run.module.model.logit_scale_value().detach()),
               "samples_per_s": meter.samples / max(dt, 1e-9),
               **_mean_over_ranks({k: v / meter.n_parts for k, v in meter.sums.items()}, env)}
        run.logger.log(row)
        run.history.append(row)
        meter.reset_rows()
    step_time = time.perf_counter() - meter.step_started
    run.logger.advance(state.step, {"loss": meter.last_loss, "epoch": epoch,
                                    "rate": t.grad_accum * t.batch_size * env.world_size / max(step_time, 1e-9)})
    meter.step_started = time.perf_counter()


# ----------------------------------------------------------------------------- validation, checkpoints


def validate(run: Run, step: int, epoch: int) -> dict[str, Any]:
    """The validation loss, logged and kept in the history."""
    t = run.cfg.train
    row = evaluate_loss(run.module, run.valid_ds, run.collate, t.batch_size, run.env, run.use_bf16,
                        run.cfg.data.num_workers, skips=run.load_skips)
    row.update({"split": "valid", "step": step, "epoch": epoch})
    run.logger.log(row)
    run.history.append(row)
    return row


def save(run: Run, name: Path) -> None:
    """Checkpoint ``name`` (``run.last`` or ``run.best``) with every rank's RNG state; a collective."""
    env, state = run.env, run.state
    if name == run.last and run.best_written_at == state.step:
        # Nothing changed since `best` was written (no step, no random draw): share its files.
        if env.is_main:
            link_checkpoint(run.best, run.last)
        mdist.barrier()
        return
    mdist.check_in_sync(run.params)
    state.load_failures = run.load_skips.state()
    rng = {"rng_state_per_rank": mdist.all_gather(torch.get_rng_state())}
    if env.device.type == "cuda":  # dropout on the GPU draws from the device's generator
        rng["cuda_rng_state_per_rank"] = mdist.all_gather(torch.cuda.get_rng_state(env.device))
    if env.is_main:
        save_checkpoint(name, model=run.module.model, tokenizer=run.tokenizer, objective=run.module.objective,
                        optimizer=run.optimizer, scheduler=run.scheduler, state={**state.to_dict(), **rng},
                        run_yaml=run.cfg.to_yaml())
    run.best_written_at = state.step if name == run.best else None
    mdist.barrier()



def count_load_failures(skips: SkipReport, batch: dict[str, Any], skipped: int, env: mdist.DistEnv) -> None:
    """Add the batch's load failures on every rank (``skipped``: their number over all ranks, the same
    on every rank, so the gather runs on all of them or on none) to ``skips``, per reason."""
    if not skipped:
        return
    failures = batch.get("failures", [])
    if env.distributed:
        failures = [f for part in mdist.all_gather_object(failures) for f in part]
    for where, kind in failures:
        skips.add(kind, where)


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
                  use_bf16: bool, num_workers: int = 0, skips: SkipReport | None = None) -> dict[str, float]:
    """Mean objective over a split (weighted by batch size), in eval mode, summed over ranks. Records
    that fail to load (under on_error=skip) are added to ``skips``."""
    sampler = ShardedBatchSampler(len(dataset), batch_size, seed=0, rank=env.rank, world_size=env.world_size,
                                  shuffle=False, drop_last=False)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    was_training = module.training
    module.eval()
    sums: dict[str, float] = {}
    count = 0
    for batch in loader:
        batch, skipped, _ = equalise_batches(batch, env)  # the losses gather across ranks: equal batches
        if skips is not None:
            count_load_failures(skips, batch, skipped, env)
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
