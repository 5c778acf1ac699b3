"""What every objective shares: the registry, the base class and the base of its options.

An objective is one module of this package that registers itself::

    @OBJECTIVES.register("clip", help="...", options=ClipOptions)
    class ClipObjective(Objective): ...

``options`` (a pydantic class, or none) is the objective's section of the config
(``objective: {name: clip, clip: {...}}``); the config, the command line, the demo and the report take
the names from ``OBJECTIVES``. Registry metadata the report reads: ``improves_on`` (the methods this
one is meant to beat; the report's summary says when it does not).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from medgrain.registry import Registry

OBJECTIVES: Registry[type[Objective]] = Registry("objective")


class ObjectiveOptions(BaseModel):
    """An objective's section of the config: unknown keys are errors, as everywhere in the config."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def loss_default(loss: type, parameter: str) -> Any:
    """The default of ``parameter`` in ``loss``'s constructor: the options read their defaults from the
    loss, so each default is written once (next to the code and the paper it comes from)."""
    default = inspect.signature(loss).parameters[parameter].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{loss.__name__}({parameter}) has no default to share with the config")
    return default


class Objective(nn.Module):
    """Base: ``needs_report`` and ``granularities`` tell the data pipeline which texts to tokenise;
    ``aligns_tokens`` says the model needs token-level heads (the report shows attention maps for it).

    ``forward(model, batch) -> {"loss": ..., parts...}`` is all the trainer sees; ``from_config``
    builds the objective from the validated config and what the data and the model offer."""

    name: str = ""
    needs_report: bool = False
    aligns_tokens: bool = False

    def __init__(self, granularities: Sequence[str]):
        super().__init__()
        self.granularities = list(granularities)

    @classmethod
    def from_config(cls, cfg, granularities: Sequence[str], has_report: bool, embed_dim: int) -> Objective:
        """``cfg`` is a ``medgrain.training.config.ObjectiveConfig``; a user error is a ValueError."""
        raise NotImplementedError(f"{cls.__name__} does not say how to build itself from a config")

    def forward(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        pass

    def after_backward(self) -> None:  # noqa: B027 - optional hook
        pass

    def texts_read(self) -> list[str]:
        """The texts this objective reads ('report' or granularity names): where one is absent for a
        whole micro-batch the text tower may not run, which DDP must know (``find_unused_parameters``)."""
        return [*self.granularities, *(["report"] if self.needs_report else [])]

    def unused_parameters(self, model: nn.Module) -> list[str] | None:
        """Names of ``model``'s parameters this objective never uses (the trainer freezes them, so DDP
        needs no search for unused parameters); None: not known (DDP then searches at every step)."""
        return None

    # Gradient caching (``train.contrastive_chunks``, medgrain.training.grad_cache) splits the forward in
    # two: per-sample embeddings, then the loss over a whole batch of them. An objective that can be
    # split sets ``chunk_limitation = None`` and implements both; otherwise it says why not.
    chunk_limitation: str | None = "its forward is not split into embeddings and a loss over them"

    def embed(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        """Per-sample embeddings ``{name: (n, ...)}`` of a batch, in batch order."""
        raise NotImplementedError(f"objective {self.name!r}: {self.chunk_limitation}")

    def loss_from_embeddings(self, model: nn.Module, embeddings: Mapping, batch: Mapping) -> dict[str, torch.Tensor]:
        """The loss of ``batch`` from its embeddings (``embed``'s, possibly computed chunk by chunk)."""
        raise NotImplementedError(f"objective {self.name!r}: {self.chunk_limitation}")


def token_head_parameters(model: nn.Module) -> list[str]:
    """The token heads' parameters: objectives that align global embeddings only never use them."""
    return [n for n, _ in model.named_parameters() if n.startswith(("image_token_proj.", "text_token_proj."))]


# ------------------------------------------------------------------------- absent texts
# Texts may be absent (``batch["present"][g]``, ``batch["report_present"]``): the text tower runs on the
# present texts only, their features are put back in batch order with zero rows for the absent ones,
# and the losses get the masks.


def rows_in_batch(values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Rows computed for the present samples, put back in batch order with zeros for the absent ones."""
    out = values.new_zeros((present.shape[0], *values.shape[1:]))
    out[present] = values
    return out


def encode_present_text(model: nn.Module, tokens, present: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Global text features (N, D) of a batch whose texts may be absent: the tower runs on the present
    ones (``tokens`` holds just those, or is None when there is none) and absent rows are zeros."""
    if present is None:
        return model.encode_text(tokens)
    if tokens is None:
        return like.new_zeros(like.shape)
    return rows_in_batch(model.encode_text(tokens), present)


def _all_present(batch: Mapping) -> torch.Tensor:
    return torch.ones(len(batch["ids"]), dtype=torch.bool, device=batch["images"].device)


def text_and_present(batch: Mapping, text: str):
    """Tokens and present mask of ``text`` ('report' or a granularity); the mask is None for a batch
    that carries none (every text present)."""
    if text == "report":
        if "report" not in batch:  # no record of this batch has a report
            return None, torch.zeros_like(_all_present(batch))
        return batch["report"], batch.get("report_present")
    return batch["texts"][text], batch.get("present", {}).get(text)
