"""What every evaluation task shares, in one object: the encoder under test, the manifest, the splits,
the seeds and label fractions, and where files are cached.

A task is ``task(ctx: EvalContext, options) -> TaskResult``; the fields of ``ContextOptions`` are the
options the command line and ``evaluate()`` take for every task. Every task uses the checkpoint, the
data, the split and the workers; the rest (``OPTIONAL``) only where its registration says so, so that an
option a task would ignore is refused instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medgrain.evaluation.fractions import FRACTIONS, fraction_name

# The context's fields a task may use; the others every task uses.
OPTIONAL = ("valid_split", "seeds", "fractions", "fractions_dir", "cache_dir")


class ContextOptions(BaseModel):
    """How to build an ``EvalContext``: what the user names on the command line or in ``evaluate()``."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: str = Field(description="a checkpoint directory, 'random' or 'imagenet'")
    data: Path = Field(description="manifest.jsonl")
    model: str = Field("tiny", description="model preset for the random/imagenet baselines")
    imagenet_weights: str | None = Field(None, description="local ImageNet weights for the imagenet baseline")
    device: str | None = Field(None, description="cpu, cuda, cuda:1 ... (default: cuda when available)")
    workers: int = Field(0, description="data-loading worker processes")
    split: str = Field("test", description="the split evaluated")
    valid_split: str = Field("valid", description="the split that picks thresholds, C or the epoch")
    seeds: tuple[int, ...] = Field((0, 1, 2), description="seeds: one run (and one label draw) per seed")
    fractions: tuple[float, ...] = Field(FRACTIONS, description="label fractions of the train split, e.g. 0.01 0.1 1")
    fractions_dir: Path | None = Field(None, description="where label-fraction files are kept "
                                                         "(default: next to the manifest)")
    cache_dir: Path | None = Field(None, description="feature cache (default ~/.cache/medgrain/features)")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples of the test images for every metric's 95% "
                                                   "interval (<metric>_ci); 0 leaves intervals out")
    on_error: Literal["raise", "skip"] = Field("raise", description="skip: leave out (and count, by reason, in the "
                                                                 "result JSON) manifest lines and images that cannot "
                                                                 "be read, instead of stopping at the first")


@dataclass
class EvalContext:
    encoder: Any  # medgrain.evaluation.encoder.Encoder
    manifest: Any  # medgrain.data.manifest.Manifest
    model: str = "tiny"
    split: str = "test"
    valid_split: str = "valid"
    seeds: tuple[int, ...] = (0, 1, 2)
    fractions: tuple[float, ...] = FRACTIONS
    fractions_dir: Path | None = None
    cache_dir: Path | None = None
    workers: int = 0
    bootstrap: int = 1000
    skips: Any = None  # medgrain.data.skips.SkipReport of what on_error=skip left out, else None

    @classmethod
    def open(cls, options: ContextOptions, encoder=None, manifest=None) -> EvalContext:
        """Load the manifest and the encoder (the random baseline seeded by the first seed), unless given."""
        from medgrain.evaluation.data import open_manifest
        from medgrain.evaluation.encoder import load_encoder

        if not options.seeds:
            raise ValueError("seeds: give at least one seed")
        manifest = manifest if manifest is not None else open_manifest(options.data, options.on_error)
        skips = None
        if options.on_error == "skip":
            from medgrain.evaluation.data import without_unreadable_images

            manifest, skips = without_unreadable_images(manifest)
        encoder = encoder or load_encoder(options.checkpoint, options.model, options.seeds[0], options.device,
                                          options.imagenet_weights)
        fields = options.model_dump(include={"model", "split", "valid_split", "seeds", "fractions",
                                             "fractions_dir", "cache_dir", "workers", "bootstrap"})
        return cls(encoder, manifest, **fields, skips=skips)

    @property
    def intervals(self):
        """How metrics get their 95% intervals (``medgrain.evaluation.bootstrap.Bootstrap``), or None."""
        from medgrain.evaluation.bootstrap import Bootstrap

        return Bootstrap(resamples=self.bootstrap) if self.bootstrap else None

    @property
    def device(self):
        return next(self.encoder.model.parameters()).device

    def has_images(self, split: str) -> bool:
        return any(r.image is not None for r in self.manifest.split(split))

    def describe(self, uses: tuple[str, ...]) -> dict[str, Any]:
        """The context's part of a result's ``options``: the preset, the split, and what the task used."""
        described: dict[str, Any] = {"model": self.model, "split": self.split, "bootstrap": self.bootstrap}
        if "valid_split" in uses:
            described["valid_split"] = self.valid_split
        if "seeds" in uses:
            described["seeds"] = list(self.seeds)
        if "fractions" in uses:
            described["fractions"] = [fraction_name(f) for f in self.fractions]
        return described
