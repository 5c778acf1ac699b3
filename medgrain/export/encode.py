"""``medgrain encode``: image and text embeddings of a manifest, for users' own pipelines.

The output is one file: safetensors (always available) or Parquet (with pyarrow). Every record with an image
gets its L2-normalised image embedding and one text embedding per granularity (and the report), with a
``present`` mask where a text is absent. Work is written batch by batch into ``OUT.parts/``; a run that stops
leaves those parts, and the next run skips every record already written (in the parts or in an existing
``OUT``), then merges everything into ``OUT``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from medgrain.io import atomic_write

log = logging.getLogger(__name__)

FORMATS = {".safetensors": "safetensors", ".parquet": "parquet"}


def output_format(out: Path) -> str:
    fmt = FORMATS.get(out.suffix)
    if fmt is None:
        raise ValueError(f"--out {out}: the file name must end in {' or '.join(FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError(f"--out {out}: Parquet needs pyarrow, which is not installed "
                             "(pip install pyarrow), or write .safetensors") from None
    return fmt


@torch.no_grad()
def embed_batch(model, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's image embeddings and, per text kind, embeddings (zeros where absent) and present masks."""
    n = len(batch["ids"])
    out = {"image": model.encode_image(batch["images"].to(device)).float().cpu()}
    kinds = dict(batch["texts"])
    present = dict(batch["present"])
    if "report" in batch:
        kinds["report"], present["report"] = batch["report"], batch["report_present"]
    for kind, tokens in kinds.items():
        embedding = torch.zeros(n, out["image"].shape[1])
        if tokens is not None:
            tokens = {k: v.to(device) for k, v in tokens.items()}
            embedding[present[kind]] = model.encode_text(tokens).float().cpu()
        out[f"text.{kind}"], out[f"present.{kind}"] = embedding, present[kind].clone()
    return out


def _read(path: Path) -> tuple[list[str], dict[str, torch.Tensor]]:
    """ids and tensors of a part or a finished output file."""
    if path.suffix == ".parquet":
        return _read_parquet(path)
    from safetensors import safe_open

    from medgrain.errors import loading

    with loading(path), safe_open(str(path), "pt") as f:
        ids = json.loads(f.metadata()["ids"])
        return ids, {k: f.get_tensor(k) for k in f.keys()}


def _write_safetensors(path: Path, ids: list[str], tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"ids": json.dumps(ids), **meta}))


def _write_parquet(path: Path, ids: list[str], tensors: dict[str, torch.Tensor]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, Any] = {"id": ids, "image": tensors["image"].tolist()}
    for key in sorted(k for k in tensors if k.startswith("text.")):
        kind = key[len("text."):]
        rows = tensors[key].tolist()
        columns[f"text_{kind}"] = [r if p else None for r, p in zip(rows, tensors[f"present.{kind}"].tolist())]
    atomic_write(path, lambda tmp: pq.write_table(pa.table(columns), tmp))


def _read_parquet(path: Path) -> tuple[list[str], dict[str, torch.Tensor]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pydict()
    ids = table.pop("id")
    tensors = {"image": torch.tensor(table.pop("image"))}
    width = tensors["image"].shape[1]
    for column, rows in table.items():
        kind = column[len("text_"):]
        tensors[f"present.{kind}"] = torch.tensor([r is not None for r in rows])
        tensors[f"text.{kind}"] = torch.tensor([r if r is not None else [0.0] * width for r in rows])
    return ids, tensors


def _merge(pieces: list[tuple[list[str], dict[str, torch.Tensor]]]) -> tuple[list[str], dict[str, torch.Tensor]]:
    ids = [i for piece_ids, _ in pieces for i in piece_ids]
    keys = pieces[0][1].keys()
    return ids, {k: torch.cat([tensors[k] for _, tensors in pieces]) for k in keys}


def encode(checkpoint: str | Path, data: str | Path, out: str | Path, split: str | None = None,
           batch_size: int = 64, workers: int = 0, device: str | None = None) -> Path:
    """Write the embeddings of ``data``'s records (``split``, or all) under ``checkpoint`` (anything
    ``medgrain.load_pretrained`` takes) to ``out``; resumes from ``out.parts`` and an existing ``out``."""
    from torch.utils.data import DataLoader, Subset

    from medgrain.data.dataset import Collator, ImageTextDataset
    from medgrain.evaluation.progress import progress
    from medgrain.models import load_pretrained

    out = Path(out)
    fmt = output_format(out)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded = load_pretrained(checkpoint, device=device)
    dataset = ImageTextDataset(data, split, loaded.transform)
    if dataset.text_only_left_out:
        log.warning("%s: %d record(s) without an image are not encoded", data, dataset.text_only_left_out)
    parts_dir = out.with_name(f"{out.name}.parts")
    parts = sorted(parts_dir.glob("part-*.safetensors")) if parts_dir.is_dir() else []
    pieces = ([_read(out)] if out.is_file() else []) + [_read(p) for p in parts]
    done = {i for ids, _ in pieces for i in ids}
    todo = [k for k, r in enumerate(dataset.records) if r.id not in done]
    if done:
        log.info("%s: %d record(s) already written, %d to encode", out, len(done), len(todo))
    collate = Collator(loaded.tokenizer, dataset.granularities, with_report=dataset.with_report)
    loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, num_workers=workers, collate_fn=collate)
    parts_dir.mkdir(parents=True, exist_ok=True)
    meta = {"checkpoint": str(checkpoint), "granularities": json.dumps(dataset.granularities)}
    for k, batch in enumerate(progress(loader, "encode", total=len(loader)), start=len(parts)):
        tensors = embed_batch(loaded.model, batch, device)
        path = parts_dir / f"part-{k:06d}.safetensors"
        _write_safetensors(path, batch["ids"], tensors, meta)
        pieces.append((batch["ids"], tensors))
    if not pieces:
        raise ValueError(f"{data}: no record to encode")
    ids, tensors = _merge(pieces)
    if fmt == "parquet":
        _write_parquet(out, ids, tensors)
    else:
        _write_safetensors(out, ids, tensors, meta)
    shutil.rmtree(parts_dir)
    return out
