"""Reading images and masks from PNG, JPEG, NPZ and DICOM into (C, H, W) tensors.

PNG/JPEG stay uint8 (transforms scale them once); 16-bit PNG, NPZ and DICOM come back as float32 in
[0, 1], because their intensity ranges differ per file and must be brought to one scale here, where the
file's own metadata (dtype, DICOM rescale and window) is still at hand.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image, UnidentifiedImageError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from ..errors import user_error

DICOM_SUFFIXES = (".dcm", ".dicom")


@user_error
class ImageReadError(OSError):
    """An image or mask that is missing, corrupt or not in a supported layout."""

    def __init__(self, path: str | Path, reason: str, kind: str = "unreadable image"):
        self.path, self.reason = str(path), reason
        self.kind = kind  # the short reason a skip is counted under
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self):  # rebuilt whole from a DataLoader worker, kind included
        return type(self), (self.path, self.reason, self.kind)


# PIL's own decompression-bomb warning threshold (Image.MAX_IMAGE_PIXELS): about 9,459 x 9,459, twice
# the largest MIMIC-CXR radiographs' 4,000 x 4,000 twice over.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
MAX_PIXELS_ENV = "MEDGRAIN_MAX_IMAGE_PIXELS"


def max_image_pixels(limit: int | None = None) -> int:
    """The pixel limit in force: ``limit`` if given, else ``$MEDGRAIN_MAX_IMAGE_PIXELS``, else the default."""
    if limit is not None:
        return int(limit)
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r} is not a number of pixels") from None
    if value < 1:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r} must be at least 1")
    return value


def check_pixels(path: str | Path, height: int, width: int, limit: int | None = None) -> None:
    """Refuse, before decoding, an image whose header promises more than the pixel limit: a 261 KB PNG
    can claim 16,384 x 16,384 pixels and take gigabytes once decoded."""
    limit = max_image_pixels(limit)
    if height * width > limit:
        raise ImageReadError(
            path, f"image is {width}x{height} (WxH) = {height * width / 1e6:.1f} Mpixel, more than the limit of "
                  f"{limit / 1e6:.1f} Mpixel; if it is genuine, raise the limit (pretrain: data.max_image_pixels=N; "
                  f"evaluate: --max-image-pixels N; anywhere: {MAX_PIXELS_ENV}=N)", "image over the pixel limit")


def read_image(path: str | Path, max_pixels: int | None = None) -> torch.Tensor:
    """Read an image as a (C, H, W) tensor with C = 1 or 3.

    - PNG/JPEG (and anything else PIL decodes): uint8; an alpha channel is dropped; a 16-bit grey PNG
      becomes float32 divided by 65535.
    - ``.npz``: the array under key ``image``, else the first array; (H, W) or (H, W, C) with C in
      {1, 3}; float32 in [0, 1] (see ``_to_unit_range`` for how).
    - DICOM (``.dcm``/``.dicom`` or the ``DICM`` magic): Modality LUT, then VOI window (else min-max),
      MONOCHROME1 inverted; float32 in [0, 1], 1 channel (3 for colour DICOMs, e.g. fundus photographs).

    An image whose header claims more than ``max_pixels`` pixels (default: ``max_image_pixels()``) is
    refused before it is decoded. Every failure is an ``ImageReadError`` naming the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(path, e.strerror or str(e), "image file unreadable") from None
    return decode_image_bytes(data, path, max_pixels)


def decode_image_bytes(data: bytes, path: str | Path, max_pixels: int | None = None) -> torch.Tensor:
    """``read_image`` on bytes already in memory (a WebDataset shard's member); ``path`` names the
    source in errors and its suffix chooses the decoder, as for a file."""
    path = Path(path)
    suffix = path.suffix.lower()
    max_pixels = max_image_pixels(max_pixels)  # a bad $MEDGRAIN_MAX_IMAGE_PIXELS is its own error, not the image's
    if not data:
        raise ImageReadError(path, "file is empty", "empty image file")
    if suffix == ".npz":
        return _read_npz(path, data, max_pixels)
    if suffix in DICOM_SUFFIXES or data[128:132] == b"DICM":
        return _read_dicom(path, data, max_pixels)
    return _decode(path, data, max_pixels)


def read_mask(path: str | Path, size: tuple[int, int] | None = None, max_pixels: int | None = None) -> torch.Tensor:
    """Read a mask as bool (H, W): a pixel is in the mask when any channel is non-zero.

    ``size=(H, W)`` checks that the mask matches its image; a mask is never resized, since a mismatch
    means the annotation belongs to a different image or crop.
    """
    return check_mask(read_image(path, max_pixels), path, size)


def check_mask(image: torch.Tensor, path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A decoded mask image as bool (H, W), checked against its image's size (see ``read_mask``)."""
    mask = image.ne(0).any(dim=0)
    if size is not None and tuple(mask.shape) != tuple(size):
        raise ImageReadError(path, f"mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image is {size[0]}x{size[1]}",
                             "mask size differs from its image")
    return mask


# PIL modes -> what read_image returns: grey stays 1 channel, everything else becomes RGB (alpha dropped).
_GREY_MODES = {"1": "L", "L": "L", "LA": "L", "La": "L"}
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_bomb_lock = threading.Lock()


def _decode(path: Path, data: bytes, max_pixels: int | None) -> torch.Tensor:
    """Decode with PIL, which checks the compressed stream against the header and raises on a file that
    ends early or holds fewer pixels than it claims (torchvision's PNG decoder segfaults on those)."""
    try:
        with _bomb_lock, warnings.catch_warnings():
            # medgrain's own limit replaces PIL's decompression-bomb check, which would refuse a raised limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = pil_limit
        check_pixels(path, image.height, image.width, max_pixels)
        image.load()
        return _pil_to_tensor(path, image)
    except ImageReadError:
        raise
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, EOFError, struct.error...
        detail = "not an image format medgrain reads" if isinstance(e, UnidentifiedImageError) else str(e)
        raise ImageReadError(path, f"corrupt or unsupported image data ({detail})", "corrupt image data") from None


def _pil_to_tensor(path: Path, image: Image.Image) -> torch.Tensor:
    if image.mode in _DEEP_MODES:
        array = np.asarray(image).astype(np.float32) / 65535.0
        return torch.from_numpy(np.ascontiguousarray(array))[None]
    if image.mode in ("I", "F"):  # 32-bit integer or float (TIFF): no fixed range, brought to [0, 1]
        return torch.from_numpy(_to_unit_range(path, np.asarray(image))[None])
    image = image.convert(_GREY_MODES.get(image.mode, "RGB"))
    array = np.array(image)  # a copy: PIL's buffer is read-only
    array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(array))


def _read_npz(path: Path, data: bytes, max_pixels: int | None) -> torch.Tensor:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if not npz.files:
                raise ImageReadError(path, "npz holds no arrays")
            key = "image" if "image" in npz.files else npz.files[0]
            _check_npy_header(path, npz, key, max_pixels)
            array = npz[key]
    except ImageReadError:
        raise
    except Exception as e:  # zipfile, pickle refusal, truncated data: all "not a readable npz"
        raise ImageReadError(path, f"not a readable npz ({e})", "corrupt image data") from None
    if array.ndim == 3 and array.shape[-1] in (1, 3):
        array = np.moveaxis(array, -1, 0)
    elif array.ndim == 2:
        array = array[None]
    else:
        raise ImageReadError(path, f"array '{key}' has shape {array.shape}; expected (H, W) or (H, W, C) with C 1 or 3")
    return torch.from_numpy(_to_unit_range(path, array))


def _check_npy_header(path: Path, npz, key: str, max_pixels: int | None) -> None:
    """The pixel limit, from the array's .npy header, before the (compressed) array is inflated."""
    with npz.zip.open(f"{key}.npy") as member:
        major, _ = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(member)
    if len(shape) >= 2:
        check_pixels(path, int(shape[0]), int(shape[1]), max_pixels)


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
        raise ImageReadError(path, "array has NaN or infinite values", "non-finite pixel values")
    lo, hi = array.min(), array.max()
    if np.issubdtype(array.dtype, np.floating) and lo >= 0 and hi <= 1:
        return array.astype(np.float32)
    return _min_max(array)


def _min_max(array: np.ndarray) -> np.ndarray:
    lo, hi = array.min(), array.max()
    if hi == lo:
        return np.zeros(array.shape, np.float32)
    return ((array - lo) / (hi - lo)).astype(np.float32)


def _read_dicom(path: Path, data: bytes, max_pixels: int | None) -> torch.Tensor:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ImageReadError(path, f"multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported")
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise ImageReadError(path, "not a readable DICOM: it holds no pixel data (a report or structured document?)",
                                 "DICOM without pixel data")
        check_pixels(path, int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), max_pixels)
        pixels = ds.pixel_array
    except ImageReadError:
        raise
    except Exception as e:  # pydicom raises many types; missing pixel data or decoders are the usual
        raise ImageReadError(path, f"not a readable DICOM ({e})", "corrupt image data") from None
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        # colour (e.g. fundus photographs): no modality or VOI LUT applies; scale by the stored bits
        rgb = pixels.astype(np.float64) / (2 ** int(ds.get("BitsStored", 8)) - 1)
        return torch.from_numpy(np.moveaxis(rgb, -1, 0).astype(np.float32))
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if not np.isfinite(values).all():  # float pixel data, or a rescale slope of inf
        raise ImageReadError(path, "pixel data has NaN or infinite values", "non-finite pixel values")
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
