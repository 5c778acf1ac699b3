"""Pretraining configuration: YAML validated with pydantic, dotted ``key=value`` overrides.

A wrong key or value is named in the error together with the file it came from; every run writes
its resolved config next to its outputs (``run.yaml``).
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..errors import user_error

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SyntheticData(_Strict):
    """Generate the synthetic dataset at ``data.manifest``'s folder when it does not exist yet."""

    domain: Literal["cxr", "fundus"] = "cxr"
    n: int = Field(300, ge=10)
    size: int = Field(64, ge=32)
    seed: int = 0
    workers: int = Field(1, ge=1)


class SourceConfig(_Strict):
    """One manifest of a multi-source run; batches draw from it in proportion to ``weight``."""

    manifest: Path
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)
    name: str | None = None  # default: the name of the manifest's folder (names must differ)


class DropTexts(_Strict):
    """Remove ``rate`` of the named granularities' texts from the training split (MGLL's robustness
    experiment): the same records for the same seed, written to the run directory."""

    rate: float = Field(ge=0, lt=1)
    seed: int = 0
    granularities: list[str] = Field(min_length=1)


class DataConfig(_Strict):
    # Exactly one source of records: a manifest, a folder of WebDataset shards from `medgrain shard`
    # (``data.manifest=null data.shards=DIR`` on the command line), or several manifests drawn in
    # proportion to their weights (``data.manifest=null data.sources=[...]``).
    manifest: Path | None = None
    shards: Path | None = None
    sources: list[SourceConfig] | None = None
    drop_texts: DropTexts | None = None
    train_split: Literal["train", "valid", "test"] = "train"
    valid_split: Literal["train", "valid", "test"] | None = "valid"
    granularities: list[str] | None = None  # default: the manifest's, coarse to fine
    max_length: int | None = Field(None, ge=8)  # default: the model's tokenizer setting
    num_workers: int = Field(0, ge=0)
    on_error: Literal["raise", "skip"] = "raise"
    # images whose header claims more pixels are refused before decoding (None: medgrain's default,
    # PIL's decompression-bomb threshold of 89.5 Mpixel, or $MEDGRAIN_MAX_IMAGE_PIXELS)
    max_image_pixels: int | None = Field(None, ge=1)
    synthetic: SyntheticData | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if sum(x is not None for x in (self.manifest, self.shards, self.sources)) != 1:
            raise ValueError("set exactly one of data.manifest, data.shards and data.sources")
        if self.shards is not None and self.synthetic is not None:
            raise ValueError("data.synthetic generates a manifest; it does not apply to data.shards")
        if self.sources is not None:
            if not self.sources:
                raise ValueError("data.sources is empty: give at least one {manifest, weight, name}")
            if self.synthetic is not None:
                raise ValueError("data.synthetic generates one manifest; it does not apply to data.sources")
            names = self.source_names()
            duplicated = sorted({n for n in names if names.count(n) > 1})
            if duplicated:
                raise ValueError(f"data.sources: name {duplicated[0]!r} is used twice; give each source a name")
        return self

    def source_names(self) -> list[str]:
        return [s.name or s.manifest.resolve().parent.name for s in self.sources or []]


class ModelSection(_Strict):
    preset: str = "tiny"  # a name in medgrain.models.list_models(), or "open_clip:<ref>"
    overrides: dict[str, Any] = {}  # fields of medgrain.models.ModelConfig, merged into the preset

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, preset: str) -> str:
        from ..models.factory import MODEL_NAMES

        try:
            return MODEL_NAMES.check(preset)
        except ValueError as e:
            raise PydanticCustomError("unknown_model_preset", "{error}", {"error": str(e)}) from None


def _objective_sections() -> dict[str, type[BaseModel]]:
    """Each registered objective that has options: its section's name (its own) and options class."""
    from ..losses.objective import OBJECTIVES

    return {e.name: e.meta["options"] for e in OBJECTIVES.entries() if e.meta.get("options") is not None}


@functools.lru_cache(maxsize=8)
def _sections_model(sections: tuple[tuple[str, type[BaseModel]], ...]) -> type[BaseModel]:
    # A model per set of registered objectives (a test may register one), so that pydantic names a bad key
    # by its full path (objective.mgll.alpha_kl) as for any other section.
    fields = {f"section_{i}": (options, Field(default_factory=options, alias=key))
              for i, (key, options) in enumerate(sections)}
    return create_model("ObjectiveSections", __config__=ConfigDict(extra="forbid"), **fields)


class ObjectiveConfig(BaseModel):
    """``name`` is a registered objective (``medgrain.losses.objective.OBJECTIVES``); every objective with
    options has a section named after it (``objective: {name: mgll, mgll: {...}, mgca: {...}}``), validated
    by its options class, its defaults when absent (``cfg.objective.mgca`` always exists)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    name: str

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from ..losses.objective import OBJECTIVES

        if name not in OBJECTIVES:
            raise PydanticCustomError("unknown_objective", "unknown objective; registered: {known}",
                                      {"known": ", ".join(OBJECTIVES.names())})
        return name

    @model_validator(mode="after")
    def _sections(self) -> ObjectiveConfig:
        sections = tuple(_objective_sections().items())
        given = {k: (v.model_dump() if isinstance(v, BaseModel) else v) for k, v in (self.model_extra or {}).items()}
        validated = _sections_model(sections).model_validate(given)
        self.__pydantic_extra__ = {key: getattr(validated, f"section_{i}") for i, (key, _) in enumerate(sections)}
        return self


class OptimConfig(_Strict):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int | None = Field(None, ge=0)  # takes precedence over warmup_ratio
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # cosine decays to lr * min_lr_ratio
    clip_grad: float | None = Field(1.0, gt=0)


class TrainSection(_Strict):
    seed: int = 0
    output_dir: Path = Path("runs/pretrain")
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=2)  # per process; MGLL/CLIP need at least two samples
    grad_accum: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(1, ge=1)  # epochs
    eval_at_start: bool = True  # the validation loss before any update: the baseline of the curves
    checkpoint_every: int | None = Field(None, ge=1)  # steps, in addition to every epoch's end
    max_nonfinite_steps: int = Field(5, ge=1)  # consecutive skipped steps before stopping
    stop_after_steps: int | None = Field(None, ge=1)  # stop early (the schedule still plans all epochs)
    sync_batchnorm: bool = True  # under DDP on GPUs, so BatchNorm sees the global batch (CPU: per rank)
    progress: bool = True
    tensorboard: bool = True
    # Memory levers (docs/benchmarks.md). Activation checkpointing of both towers, by their libraries'
    # own switches (timm's and open_clip's set_grad_checkpointing, transformers' gradient_checkpointing_enable).
    grad_checkpointing: bool = False
    # Gradient caching (Gao et al. 2021, arXiv:2101.06983): embed each micro-batch in K chunks, so the
    # contrastive loss sees the whole (global) batch in the memory of one chunk. clip and mgll only.
    contrastive_chunks: int = Field(1, ge=1)
    compile: bool = False  # torch.compile the two towers (in place: checkpoints keep their names)

    @model_validator(mode="after")
    def _chunks_fit(self) -> TrainSection:
        if self.contrastive_chunks > self.batch_size:
            raise ValueError(f"train.contrastive_chunks={self.contrastive_chunks} is more than "
                             f"train.batch_size={self.batch_size}: a chunk needs at least one sample")
        return self


class RunConfig(_Strict):
    data: DataConfig
    model: ModelSection = ModelSection()
    objective: ObjectiveConfig
    optim: OptimConfig = OptimConfig()
    train: TrainSection = TrainSection()

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.data.valid_split is not None and self.data.valid_split == self.data.train_split:
            raise ValueError("data.valid_split must differ from data.train_split")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


@user_error
class ConfigError(ValueError):
    pass


def _format_validation(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        got = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {e.get('input')!r})"
        lines.append(f"  {key}: {msg}{got}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.subkey=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        parts, value = parse_override(item)
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: '{p}' is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def shipped_configs() -> dict[str, Traversable]:
    """The YAML presets shipped inside the package (``medgrain/configs/``), by name.

    Read through importlib.resources, as open_clip reads its model configs, so an installed wheel
    finds them as well as a source checkout does.
    """
    folder = resources.files("medgrain") / "configs"
    return {e.name.removesuffix(".yaml"): e for e in folder.iterdir() if e.name.endswith(".yaml")}


def resolve_config_path(name_or_path: str | Path) -> Path | Traversable:
    """A path to a YAML file, or the name of a shipped preset (with or without ``.yaml``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = shipped_configs()
    found = shipped.get(p.name.removesuffix(".yaml"))
    if found is None:
        names = ", ".join(sorted(shipped)) or "none"
        raise ConfigError(f"config not found: {name_or_path} (shipped presets: {names})")
    return found


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML file (or a dict), apply ``key=value`` overrides, validate."""
    if isinstance(source, dict):
        data, where = dict(source), "(dict)"
    else:
        path = resolve_config_path(source)
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02X} at offset {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    data = apply_overrides(data, overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, where)) from None
