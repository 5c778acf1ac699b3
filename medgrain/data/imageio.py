"""Reading images and masks from PNG, JPEG, NPZ and DICOM into (C, H, W) tensors.

PNG/JPEG stay uint8 (transforms scale them once); 16-bit PNG, NPZ and DICOM come back as float32 in
[0, 1], because their intensity ranges differ per file and must be brought to one scale here, where the
file's own metadata (dtype, DICOM rescale and window) is still at hand.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from torchvision.io import ImageReadMode, decode_image

DICOM_SUFFIXES = (".dcm", ".dicom")


class ImageReadError(OSError):
    """An image or mask that is missing, corrupt or not in a supported layout."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def read_image(path: str | Path) -> torch.Tensor:
    """Read an image as a (C, H, W) tensor with C = 1 or 3.

    - PNG/JPEG (and anything else torchvision decodes): uint8; an alpha channel is dropped; a 16-bit
      PNG becomes float32 divided by 65535.
    - ``.npz``: the array under key ``image``, else the first array; (H, W) or (H, W, C) with C in
      {1, 3}; float32 in [0, 1] (see ``_to_unit_range`` for how).
    - DICOM (``.dcm``/``.dicom`` or the ``DICM`` magic): Modality LUT, then VOI window (else min-max),
      MONOCHROME1 inverted; float32 in [0, 1], 1 channel (3 for colour DICOMs, e.g. fundus photographs).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(path, e.strerror or str(e)) from None
    return decode_image_bytes(data, path)


def decode_image_bytes(data: bytes, path: str | Path) -> torch.Tensor:
    """``read_image`` on bytes already in memory (a WebDataset shard's member); ``path`` names the
    source in errors and its suffix chooses the decoder, as for a file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not data:
        raise ImageReadError(path, "file is empty")
    if suffix == ".npz":
        return _read_npz(path, data)
    if suffix in DICOM_SUFFIXES or data[128:132] == b"DICM":
        return _read_dicom(path, data)
    return _decode(path, data)


def read_mask(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Read a mask as bool (H, W): a pixel is in the mask when any channel is non-zero.

    ``size=(H, W)`` checks that the mask matches its image; a mask is never resized, since a mismatch
    means the annotation belongs to a different image or crop.
    """
    return check_mask(read_image(path), path, size)


def check_mask(image: torch.Tensor, path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A decoded mask image as bool (H, W), checked against its image's size (see ``read_mask``)."""
    mask = image.ne(0).any(dim=0)
    if size is not None and tuple(mask.shape) != tuple(size):
        raise ImageReadError(path, f"mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image is {size[0]}x{size[1]}")
    return mask


def _decode(path: Path, data: bytes) -> torch.Tensor:
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        image = decode_image(buffer, mode=ImageReadMode.UNCHANGED)
        if image.shape[0] == 4:  # RGBA, or CMYK JPEG: let the decoder convert properly
            image = decode_image(buffer, mode=ImageReadMode.RGB)
    except RuntimeError as e:
        # torchvision prefixes the C++ source location; keep only its reason
        detail = re.sub(r"^[^,]*, \S+:\d+, ", "", str(e)).strip()
        raise ImageReadError(path, f"corrupt or unsupported image data ({detail})") from None
    if image.shape[0] == 2:  # grey + alpha
        image = image[:1]
    if image.dtype == torch.uint16:
        image = image.to(torch.float32) / 65535.0
    return image


def _read_npz(path: Path, data: bytes) -> torch.Tensor:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if not npz.files:
                raise ImageReadError(path, "npz holds no arrays")
            key = "image" if "image" in npz.files else npz.files[0]
            array = npz[key]
    except ImageReadError:
        raise
    except Exception as e:  # zipfile, pickle refusal, truncated data: all "not a readable npz"
        raise ImageReadError(path, f"not a readable npz ({e})") from None
    if array.ndim == 3 and array.shape[-1] in (1, 3):
        array = np.moveaxis(array, -1, 0)
    elif array.ndim == 2:
        array = array[None]
    else:
        raise ImageReadError(path, f"array '{key}' has shape {array.shape}; expected (H, W) or (H, W, C) with C 1 or 3")
    return torch.from_numpy(_to_unit_range(path, array))


def _to_unit_range(path: Path, array: np.ndarray) -> np.ndarray:
    """Unsigned integers are divided by their dtype's maximum, so that intensities stay comparable
    between files; floats already in [0, 1] are kept; other floats and signed integers (e.g. CT
    Hounsfield units) are min-max scaled per image, a constant image becoming zeros."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.unsignedinteger):
        return (array.astype(np.float64) / np.iinfo(array.dtype).max).astype(np.float32)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageReadError(path, f"unsupported dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ImageReadError(path, "array has NaN or infinite values")
    lo, hi = array.min(), array.max()
    if np.issubdtype(array.dtype, np.floating) and lo >= 0 and hi <= 1:
        return array.astype(np.float32)
    return _min_max(array)


def _min_max(array: np.ndarray) -> np.ndarray:
    lo, hi = array.min(), array.max()
    if hi == lo:
        return np.zeros(array.shape, np.float32)
    return ((array - lo) / (hi - lo)).astype(np.float32)


def _read_dicom(path: Path, data: bytes) -> torch.Tensor:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ImageReadError(path, f"multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported")
        pixels = ds.pixel_array
    except ImageReadError:
        raise
    except Exception as e:  # pydicom raises many types; missing pixel data or decoders are the usual
        raise ImageReadError(path, f"not a readable DICOM ({e})") from None
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        # colour (e.g. fundus photographs): no modality or VOI LUT applies; scale by the stored bits
        rgb = pixels.astype(np.float64) / (2 ** int(ds.get("BitsStored", 8)) - 1)
        return torch.from_numpy(np.moveaxis(rgb, -1, 0).astype(np.float32))
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        try:
            image = _window(values, center, width, ds.get("VOILUTFunction", "LINEAR"))
        except ValueError as e:
            raise ImageReadError(path, str(e)) from None
    else:
        image = _min_max(values)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # high values are dark in MONOCHROME1
        image = 1.0 - image
    return torch.from_numpy(image.astype(np.float32)[None])


def _first(value) -> float:
    """Window attributes may hold several windows (a multi-valued element); the first is the default."""
    return float(value[0]) if isinstance(value, (list, tuple, MultiValue)) else float(value)


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI windowing as DICOM PS3.3 C.11.2.1.2 defines it, mapped to [0, 1]."""
    function = str(function).upper()
    if width <= 0 or (function == "LINEAR" and width < 1):
        raise ValueError(f"window width {width} is invalid for VOI LUT function {function}")
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    # LINEAR, the default, with the standard's half-pixel offsets (as viewers display it)
    if width == 1:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
