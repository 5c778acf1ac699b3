import numpy as np
import pytest
import torch
from _images import dicom_dataset, dicom_without_pixels
from PIL import Image

from medgrain.data.imageio import ImageReadError, read_image, read_mask

GREY = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20


def write_dicom(path, pixels, photometric="MONOCHROME2", signed=False, **attributes):
    ds = dicom_dataset()
    ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=pixels.dtype.itemsize * 8)
    for name, value in attributes.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_png_grey_rgb_alpha_and_16_bit(tmp_path):
    Image.fromarray(GREY).save(tmp_path / "grey.png")
    out = read_image(tmp_path / "grey.png")
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 4)
    assert torch.equal(out[0], torch.from_numpy(GREY))

    rgba = np.dstack([GREY, GREY, GREY, np.full_like(GREY, 7)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert read_image(tmp_path / "rgba.png").shape == (3, 3, 4)
    Image.fromarray(np.dstack([GREY, GREY]), "LA").save(tmp_path / "la.png")
    assert torch.equal(read_image(tmp_path / "la.png")[0], torch.from_numpy(GREY))

    deep = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == torch.float32 and out.shape == (1, 2, 2)
    torch.testing.assert_close(out[0], torch.from_numpy(deep / 65535.0).float())


def test_jpeg_rgb(tmp_path):
    Image.fromarray(np.full((8, 6, 3), 128, np.uint8)).save(tmp_path / "x.jpg")
    out = read_image(tmp_path / "x.jpg")
    assert out.dtype == torch.uint8 and out.shape == (3, 8, 6)
    assert (out.int() - 128).abs().max() <= 2


def test_npz_keys_layouts_and_scaling(tmp_path):
    np.savez(tmp_path / "u16.npz", other=np.zeros((2, 2)), image=np.array([[0, 65535]], dtype=np.uint16))
    torch.testing.assert_close(read_image(tmp_path / "u16.npz"), torch.tensor([[[0.0, 1.0]]]))
    hwc = np.zeros((2, 3, 3), np.uint8)
    hwc[..., 1] = 255
    np.savez(tmp_path / "hwc.npz", hwc)  # no 'image' key: the first array
    out = read_image(tmp_path / "hwc.npz")
    assert out.shape == (3, 2, 3) and out.dtype == torch.float32 and out[1].eq(1).all() and out[0].eq(0).all()
    np.savez(tmp_path / "unit.npz", image=np.array([[0.25, 0.5]], np.float32))  # already in [0, 1]: kept
    torch.testing.assert_close(read_image(tmp_path / "unit.npz"), torch.tensor([[[0.25, 0.5]]]))
    np.savez(tmp_path / "hu.npz", image=np.array([[-1000, 0, 1000]], np.int16))  # signed: min-max
    torch.testing.assert_close(read_image(tmp_path / "hu.npz"), torch.tensor([[[0.0, 0.5, 1.0]]]))
    np.savez(tmp_path / "chw.npz", image=np.zeros((4, 5, 6)))
    with pytest.raises(ImageReadError, match=r"chw\.npz.*shape \(4, 5, 6\)"):
        read_image(tmp_path / "chw.npz")


def test_dicom_rescale_window_and_monochrome1(tmp_path):
    stored = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    # slope 2, intercept -100 -> [[-100, 100], [300, 500]]; window centre 200, width 401 -> [-0.5, 400.5]
    path = write_dicom(tmp_path / "w.dcm", stored, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=200, WindowWidth=401)
    values = stored * 2.0 - 100
    expected = np.clip((values - 199.5) / 400 + 0.5, 0, 1)
    out = read_image(path)
    assert out.dtype == torch.float32 and out.shape == (1, 2, 2)
    torch.testing.assert_close(out[0], torch.from_numpy(expected).float())

    # MONOCHROME1 without a window: min-max of the rescaled values, then inverted
    path = write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", RescaleSlope=1, RescaleIntercept=0)
    torch.testing.assert_close(read_image(path)[0], torch.tensor([[1.0, 2 / 3], [1 / 3, 0.0]]))


def test_dicom_found_by_magic_and_multi_valued_window(tmp_path):
    stored = np.array([[10, 20, 30]], dtype=np.uint16)
    path = write_dicom(tmp_path / "scan", stored, WindowCenter=[20, 99], WindowWidth=[11, 5])
    torch.testing.assert_close(read_image(path)[0], torch.from_numpy(np.clip((stored - 19.5) / 10 + 0.5, 0, 1)).float())


def test_dicom_linear_exact_window_and_colour(tmp_path):
    stored = np.array([[0, 50, 100]], dtype=np.uint16)
    path = write_dicom(tmp_path / "e.dcm", stored, WindowCenter=50, WindowWidth=100, VOILUTFunction="LINEAR_EXACT")
    torch.testing.assert_close(read_image(path)[0], torch.tensor([[0.0, 0.5, 1.0]]))
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 255
    out = read_image(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    assert out.shape == (3, 2, 3) and out[0].eq(1).all() and out[1:].eq(0).all()


def test_mask_bool_and_size_check(tmp_path):
    Image.fromarray((GREY > 100).astype(np.uint8) * 255).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png", size=(3, 4))
    assert mask.dtype == torch.bool and torch.equal(mask, torch.from_numpy(GREY > 100))
    with pytest.raises(ImageReadError, match=r"m\.png.*mask is 3x4 .* image is 5x5"):
        read_mask(tmp_path / "m.png", size=(5, 5))


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("missing.png", None, "No such file"),
        ("empty.png", b"", "file is empty"),
        ("bad.png", b"\x89PNG\r\n\x1a\n broken", "corrupt or unsupported image data"),
        ("bad.jpg", b"not an image at all", "corrupt or unsupported image data"),
        ("bad.npz", b"PK\x03\x04 truncated", "not a readable npz"),
        ("bad.dcm", b"\0" * 128 + b"DICM" + b"\0" * 10, "not a readable DICOM"),
    ],
)
def test_missing_or_corrupt_file_names_path_and_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(path)
    assert str(path) in str(info.value) and info.value.path == str(path)


def _png_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _with_ihdr_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with the header claiming another size (and a valid header CRC, so only the
    pixel data disagrees with it)."""
    import struct
    import zlib

    data = bytearray(png)
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_corrupt_png_is_an_error_not_a_crash(tmp_path):
    # torchvision's PNG decoder segfaulted on both: data that ends early, and a header claiming more
    # pixels than the data holds
    png = _png_bytes((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64))
    (tmp_path / "short.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "claims.png").write_bytes(_with_ihdr_size(png, 1024, 1024))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "x.jpg")
    (tmp_path / "short.jpg").write_bytes((tmp_path / "x.jpg").read_bytes()[:600])
    for name in ("short.png", "claims.png", "short.jpg"):
        with pytest.raises(ImageReadError, match="corrupt or unsupported image data") as info:
            read_image(tmp_path / name)
        assert name in str(info.value)


def test_pixel_limit_refuses_before_decoding(tmp_path, monkeypatch):
    from medgrain.data.imageio import DEFAULT_MAX_IMAGE_PIXELS, MAX_PIXELS_ENV

    assert DEFAULT_MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS  # PIL's own threshold
    png = _png_bytes(np.zeros((8, 8), np.uint8))
    (tmp_path / "huge.png").write_bytes(_with_ihdr_size(png, 16384, 16384))  # 268 Mpixel in a few bytes
    with pytest.raises(ImageReadError, match=r"16384x16384 .*268\.4 Mpixel.*limit of 89\.5 Mpixel.*max_image_pixels"):
        read_image(tmp_path / "huge.png")
    (tmp_path / "ok.png").write_bytes(png)
    with pytest.raises(ImageReadError, match=r"8x8 \(WxH\) = 0\.0 Mpixel"):
        read_image(tmp_path / "ok.png", max_pixels=63)
    assert read_image(tmp_path / "ok.png", max_pixels=64).shape == (1, 8, 8)
    monkeypatch.setenv(MAX_PIXELS_ENV, "10")
    with pytest.raises(ImageReadError, match="limit of 0.0 Mpixel"):
        read_image(tmp_path / "ok.png")
    np.savez_compressed(tmp_path / "big.npz", image=np.zeros((4, 5), np.uint8))
    with pytest.raises(ImageReadError, match=r"big\.npz: image is 5x4"):
        read_image(tmp_path / "big.npz")
    path = write_dicom(tmp_path / "big.dcm", np.zeros((4, 5), np.uint16))
    with pytest.raises(ImageReadError, match=r"big\.dcm: image is 5x4"):
        read_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "many")
    with pytest.raises(ValueError, match="MEDGRAIN_MAX_IMAGE_PIXELS='many'"):
        read_image(tmp_path / "ok.png")


def test_limit_above_pils_own_is_honoured(tmp_path):
    # PIL alone refuses beyond twice its threshold; a raised medgrain limit must reach the decoder
    png = _png_bytes(np.zeros((8, 8), np.uint8))
    (tmp_path / "huge.png").write_bytes(_with_ihdr_size(png, 20000, 10000))
    with pytest.raises(ImageReadError, match="corrupt or unsupported image data"):
        read_image(tmp_path / "huge.png", max_pixels=300_000_000)


def test_non_finite_npz_and_dicom_without_pixels(tmp_path):
    for value in (np.nan, np.inf):
        np.savez(tmp_path / "nan.npz", image=np.array([[0.0, value]], np.float32))
        with pytest.raises(ImageReadError, match=r"nan\.npz: array has NaN or infinite values"):
            read_image(tmp_path / "nan.npz")
    dicom_without_pixels(tmp_path / "report.dcm")
    with pytest.raises(ImageReadError, match=r"report\.dcm: not a readable DICOM: it holds no pixel data"):
        read_image(tmp_path / "report.dcm")
