"""WebDataset shards of a manifest, read back with map-style random access.

Millions of small files are slow on shared file systems; a few hundred tar files are not. ``write_shards``
packs a manifest into WebDataset tar shards (written with ``webdataset.ShardWriter``): per record an
image member (the original bytes, or re-encoded as PNG at a chosen size), its masks, and a ``json``
member with the whole record (texts, labels, report, findings with boxes). Beside the shards:

- ``manifest.jsonl``: the records, with ``image`` and ``findings[].mask`` naming shard members instead
  of files: the manifest-level description every other stage reads as it reads any manifest;
- ``index.json``: for every member, its shard, byte offset and size.

``read_shards(DIR)`` returns a ``ShardedManifest``: a ``Manifest`` whose images are read by seeking into
the shard at the indexed offset. Access stays map-style (record ``i`` at any time), so the trainer's
sampler, its exact mid-epoch resume and its per-rank sharding work unchanged, and the same run on files
or on shards sees the same bytes, hence the same batches and losses. (webdataset 1.x no longer ships
``wids``, its indexed reader; this index is the small equivalent.) The shards stay plain WebDataset:
``webdataset.WebDataset(sorted(DIR.glob("shard-*.tar")))`` streams them, as open_clip's loader does.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write
from .imageio import ImageReadError, check_mask, decode_image_bytes, read_image
from .manifest import Manifest, ManifestError, OnError, read_manifest, write_manifest

log = logging.getLogger(__name__)

FORMAT = "medgrain-shards/1"
INDEX, MANIFEST, PATTERN = "index.json", "manifest.jsonl", "shard-%06d.tar"


def write_shards(manifest: str | Path, out: str | Path, *, shard_size: int = 1000, resize: int | None = None,
                 on_error: OnError = "raise") -> Path:
    """Pack ``manifest`` into shards of ``shard_size`` records under ``out``; returns ``out/manifest.jsonl``.

    ``resize=PX`` re-encodes each image as 8-bit PNG with its shorter side PX (masks and boxes follow);
    otherwise the image files' bytes are stored unchanged, so decoding gives exactly what the files give.
    """
    import webdataset as wds

    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    source = read_manifest(manifest, on_error=on_error)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("shard-*.tar")) or (out / INDEX).exists():
        raise FileExistsError(f"{out} already holds shards; choose an empty folder")
    records = []
    with wds.ShardWriter(str(out / PATTERN), maxcount=shard_size, verbose=0) as writer:
        for i, record in enumerate(source.records):
            sample, rec = _sample(source, record.model_dump(mode="json"), f"{i:09d}", resize)
            writer.write(sample)
            records.append(rec)
    shards = sorted(out.glob("shard-*.tar"))
    index = {"format": FORMAT, "source": str(Path(manifest).resolve()), "resize": resize,
             "shards": [s.name for s in shards], "members": _member_offsets(shards)}
    atomic_write(out / INDEX, json.dumps(index))  # the index appears whole or not at all
    return write_manifest(records, out / MANIFEST)


def _sample(source: Manifest, rec: dict[str, Any], key: str, resize: int | None) -> tuple[dict, dict]:
    """One WebDataset sample (``__key__`` plus members) and the record pointing at its members."""
    sample: dict[str, Any] = {"__key__": key}
    scale = None
    if rec["image"] is not None:
        path = source.resolve(rec["image"])
        ext, data, scale = _image_member(path, resize)
        sample[ext] = data
        rec["image"] = f"{key}.{ext}"
    for j, finding in enumerate(rec["findings"]):
        if finding.get("mask"):
            ext, data = _mask_member(source.resolve(finding["mask"]), scale)
            sample[f"mask{j}.{ext}"] = data
            finding["mask"] = f"{key}.mask{j}.{ext}"
        if finding.get("box") and scale:
            sx, sy = scale
            x0, y0, x1, y1 = finding["box"]
            finding["box"] = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
    sample["json"] = json.dumps(rec, ensure_ascii=False).encode("utf-8")
    return sample, rec


def _suffix(path: Path) -> str:
    return path.suffix.lower().lstrip(".") or "bin"


def _image_member(path: Path, resize: int | None) -> tuple[str, bytes, tuple[float, float] | None]:
    if resize is None:
        try:
            return _suffix(path), path.read_bytes(), None
        except OSError as e:
            raise ImageReadError(path, e.strerror or str(e)) from None
    from torchvision.io import encode_png
    from torchvision.transforms.v2 import functional as F

    image = read_image(path)
    height, width = image.shape[-2:]
    resized = F.resize(image, [resize], antialias=True)
    if resized.dtype != torch.uint8:  # float images in [0, 1] (16-bit PNG, NPZ, DICOM)
        resized = (resized.clamp(0, 1) * 255).round().to(torch.uint8)
    new_h, new_w = resized.shape[-2:]
    return "png", encode_png(resized).numpy().tobytes(), (new_w / width, new_h / height)


def _mask_member(path: Path, scale: tuple[float, float] | None) -> tuple[str, bytes]:
    if scale is None:
        try:
            return _suffix(path), path.read_bytes()
        except OSError as e:
            raise ImageReadError(path, e.strerror or str(e)) from None
    from torchvision.io import encode_png
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    mask = read_image(path).ne(0).any(dim=0, keepdim=True).to(torch.uint8) * 255
    height, width = mask.shape[-2:]
    size = [round(height * scale[1]), round(width * scale[0])]
    return "png", encode_png(F.resize(mask, size, interpolation=InterpolationMode.NEAREST)).numpy().tobytes()


def _member_offsets(shards: list[Path]) -> dict[str, list[int]]:
    """Member name -> [shard number, byte offset of its data, size]: what random access needs."""
    members: dict[str, list[int]] = {}
    for number, shard in enumerate(shards):
        with tarfile.open(shard) as tar:
            for info in tar:
                if info.isfile():
                    members[info.name] = [number, info.offset_data, info.size]
    return members


class ShardReader:
    """Reads one member's bytes by seeking into its shard. Open files are per process (a DataLoader
    worker forked from the main process reopens them), so workers never share a file position."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / INDEX
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} not found: {self.root} is not a folder written by `medgrain shard`") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ManifestError(path, None, None, f"not a shard index ({e})") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise ManifestError(path, None, "format", f"expected {FORMAT!r}, got {index.get('format') if isinstance(index, dict) else index!r}")
        self.shards = [self.root / name for name in index["shards"]]
        self.members: dict[str, list[int]] = index["members"]
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()

    def __contains__(self, name: str) -> bool:
        return name in self.members

    def location(self, name: str) -> str:
        """Where a member is, for messages: ``shard-000003.tar#000003012.png``."""
        number = self.members[name][0] if name in self.members else None
        return f"{self.shards[number]}#{name}" if number is not None else f"{self.root}#{name}"

    def read(self, name: str) -> bytes:
        if name not in self.members:
            raise ImageReadError(self.location(name), "no such member in the shard index")
        number, offset, size = self.members[name]
        f = self._file(number)
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise ImageReadError(self.location(name), f"shard is truncated: {len(data)} of {size} bytes")
        return data

    def _file(self, number: int):
        if self._pid != os.getpid():  # forked into a worker: the parent's handles are not ours
            self._files, self._pid = {}, os.getpid()
        if number not in self._files:
            try:
                self._files[number] = open(self.shards[number], "rb")  # noqa: SIM115 - kept open for reuse
            except OSError as e:
                raise ImageReadError(self.shards[number], e.strerror or str(e)) from None
        return self._files[number]

    def __getstate__(self) -> dict[str, Any]:  # spawned workers get the index, not open files
        return {**self.__dict__, "_files": {}}


@dataclass
class ShardedManifest(Manifest):
    """A manifest whose images and masks are members of WebDataset shards (see ``read_shards``)."""

    reader: ShardReader | None = field(default=None, repr=False)

    def has_file(self, relative: str) -> bool:
        return relative in self.reader

    def read_image(self, relative: str, max_pixels: int | None = None) -> torch.Tensor:
        return decode_image_bytes(self.reader.read(relative), self.reader.location(relative), max_pixels)

    def read_mask(self, relative: str, size: tuple[int, int] | None = None, max_pixels: int | None = None) -> torch.Tensor:
        location = self.reader.location(relative)
        return check_mask(decode_image_bytes(self.reader.read(relative), location, max_pixels), location, size)


def read_shards(root: str | Path, on_error: OnError = "raise") -> ShardedManifest:
    """The ``ShardedManifest`` of a folder written by ``write_shards``."""
    reader = ShardReader(root)
    plain = read_manifest(Path(root) / MANIFEST, on_error=on_error)
    return ShardedManifest(plain.path, plain.records, plain.skipped, reader=reader)
