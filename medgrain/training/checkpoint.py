"""Training checkpoints: a pretrained-model directory plus what resuming needs.

Layout (``medgrain.load_pretrained`` reads the first three; ``--resume`` reads all):
    model.safetensors, config.json, tokenizer/     the model (save_pretrained)
    objective.safetensors                          weights owned by the loss (MGCA's prototypes)
    train_state.pt                                 optimizer, scheduler, counters, RNG: loaded with weights_only=True
    run.yaml                                       the resolved run config

When ``last`` is written at the very state ``best`` was just written at (the end of an epoch that
improved the validation loss), its files are hard links to ``best``'s (``link_checkpoint``): the
same bytes are not stored twice.

Written into a staging folder and swapped in with renames: a run killed mid-write leaves the
previous checkpoint whole (as ``NAME`` or, if killed between the two renames, ``NAME.old``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import loading
from ..io import atomic_directory
from ..models import save_pretrained

TRAIN_STATE = "train_state.pt"
OBJECTIVE_WEIGHTS = "objective.safetensors"


def save_checkpoint(target: Path, *, model: nn.Module, tokenizer, objective: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler, state: dict[str, Any], run_yaml: str) -> Path:
    def build(staging: Path) -> None:
        save_pretrained(model, tokenizer, staging)
        obj_state = {k: v.detach().contiguous().cpu() for k, v in objective.state_dict().items()}
        if obj_state:
            save_file(obj_state, str(staging / OBJECTIVE_WEIGHTS))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **state},
            staging / TRAIN_STATE,
        )
        (staging / "run.yaml").write_text(run_yaml)

    return atomic_directory(target, build)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def link_checkpoint(source: Path, target: Path) -> Path:
    """``target`` as a checkpoint identical to ``source``, its files hard links to ``source``'s (copies
    where the file system has no hard links), swapped in as atomically as ``save_checkpoint``'s.
    Checkpoints are replaced whole, never edited in place, so the shared files never change."""
    return atomic_directory(target, lambda staging: shutil.copytree(source, staging, copy_function=_link_or_copy))


def find_resumable(target: Path) -> Path | None:
    """The checkpoint to resume from: ``target``, or its ``.old`` twin left by an interrupted swap."""
    target = Path(target)
    for cand in (target, target.with_name(target.name + ".old")):
        if (cand / TRAIN_STATE).is_file() and (cand / "model.safetensors").is_file():
            return cand
    return None


def load_training_state(directory: Path, *, model: nn.Module, objective: nn.Module,
                        optimizer: torch.optim.Optimizer, scheduler) -> dict[str, Any]:
    from safetensors.torch import load_model

    directory = Path(directory)
    with loading(directory / "model.safetensors"):
        load_model(model, str(directory / "model.safetensors"), strict=True)
    obj_path = directory / OBJECTIVE_WEIGHTS
    if obj_path.is_file():
        with loading(obj_path):
            objective.load_state_dict(load_file(str(obj_path)), strict=True)
    with loading(directory / TRAIN_STATE):
        state = torch.load(directory / TRAIN_STATE, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"optimizer", "scheduler"} <= state.keys():
            raise ValueError("not a medgrain training state (no optimizer and scheduler state)")
    optimizer.load_state_dict(state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    return state
