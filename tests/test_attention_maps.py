"""Word-to-image attention maps: shapes, mass, words, the PNG, and the errors a user can meet."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torchvision.io import decode_png, read_file, write_png

from medgrain.models import create_model, get_tokenizer, load_pretrained, save_pretrained
from medgrain.models.attention_maps import (
    attention_command,
    save_attention_png,
    spread_over_pixels,
    word_attention_maps,
)

TEXT = "Moderate left-sided pleural effusion, with cardiomegaly."


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_pretrained(create_model("tiny-mgca"), get_tokenizer("tiny-mgca"), tmp_path_factory.mktemp("ckpt") / "tiny-mgca")


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_pretrained(checkpoint)


def write_image(path, height, width, channels=1):
    torch.manual_seed(1)
    write_png(torch.randint(0, 256, (channels, height, width), dtype=torch.uint8), str(path))
    return path


def test_maps_have_the_image_size_and_sum_to_one(loaded, tmp_path):
    image = write_image(tmp_path / "cxr.png", 64, 64)
    maps = word_attention_maps(loaded.model, loaded.tokenizer, image, TEXT, loaded.transform)
    assert maps.maps.shape == (len(maps.words), 64, 64)
    assert (maps.maps >= 0).all()
    np.testing.assert_allclose(maps.maps.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert maps.grid == (4, 4)  # 64 px, ResNet-18 layer3 (stride 16)
    assert maps.image.shape == (64, 64) and 0 <= maps.image.min() and maps.image.max() <= 1


def test_words_are_the_texts_words_without_punctuation(loaded, tmp_path):
    image = write_image(tmp_path / "cxr.png", 64, 64)
    maps = word_attention_maps(loaded.model, loaded.tokenizer, image, TEXT)
    # BERT splits at punctuation too ("left-sided" is left, -, sided); punctuation-only words are dropped,
    # and each word keeps the text's own casing although the tokenizer is uncased.
    assert maps.words == re.findall(r"\w+", TEXT)
    assert maps.words[0] == "Moderate"


def test_non_square_image_maps_cover_the_centre_crop_the_model_saw(loaded, tmp_path):
    image = write_image(tmp_path / "wide.png", 48, 80, channels=3)
    maps = word_attention_maps(loaded.model, loaded.tokenizer, image, "small effusion")
    assert maps.maps.shape == (2, 48, 80) and maps.image.shape == (48, 80, 3)
    np.testing.assert_allclose(maps.maps.sum(axis=(1, 2)), 1.0, atol=1e-5)
    left, right = maps.maps[:, :, :16], maps.maps[:, :, 64:]  # outside the centre 48 x 48 square
    assert left.sum() == 0 and right.sum() == 0


def test_a_tensor_image_works_like_its_file(loaded, tmp_path):
    image = write_image(tmp_path / "cxr.png", 64, 64)
    from_file = word_attention_maps(loaded.model, loaded.tokenizer, image, TEXT)
    tensor = decode_png(read_file(str(image)))
    from_tensor = word_attention_maps(loaded.model, loaded.tokenizer, tensor, TEXT)
    np.testing.assert_allclose(from_file.maps, from_tensor.maps)


def test_cnn_tower_maps_come_from_its_token_grid(tmp_path):
    torch.manual_seed(0)
    model, tokenizer = create_model("tiny"), get_tokenizer("tiny")
    image = write_image(tmp_path / "cxr.png", 64, 64)
    maps = word_attention_maps(model, tokenizer, image, "small left effusion")
    assert maps.grid == (4, 4)  # ResNet-18 layer3 at 64 px: stride 16
    assert maps.maps.shape == (3, 64, 64)
    np.testing.assert_allclose(maps.maps.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_each_patch_keeps_its_mass_when_the_grid_does_not_divide_the_image():
    attention = np.random.default_rng(0).dirichlet(np.ones(9)).reshape(3, 3)
    pixels = spread_over_pixels(attention, 10)  # rows of 4, 3 and 3 pixels
    blocks = [(0, 4), (4, 7), (7, 10)]
    for i, (r0, r1) in enumerate(blocks):
        for j, (c0, c1) in enumerate(blocks):
            assert pixels[r0:r1, c0:c1].sum() == pytest.approx(attention[i, j])
    assert pixels.sum() == pytest.approx(1.0)


def test_png_is_written_and_decodes(loaded, tmp_path):
    image = write_image(tmp_path / "cxr.png", 64, 64)
    maps = word_attention_maps(loaded.model, loaded.tokenizer, image, TEXT)
    out = save_attention_png(maps, tmp_path / "figs" / "attention.png", max_words=3)
    decoded = decode_png(read_file(str(out)))
    assert decoded.shape[0] in (3, 4) and decoded.shape[1] > 100 and decoded.shape[2] > 100


def test_attention_command_writes_the_png(checkpoint, tmp_path):
    image = write_image(tmp_path / "cxr.png", 64, 64)
    out = attention_command(checkpoint, image, TEXT, tmp_path / "out.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_without_token_heads_is_a_clear_error(tmp_path):
    model, tokenizer = create_model("tiny-vit", token_heads=False), get_tokenizer("tiny-vit")
    image = write_image(tmp_path / "cxr.png", 64, 64)
    with pytest.raises(ValueError, match="token heads"):
        word_attention_maps(model, tokenizer, image, TEXT)


def test_punctuation_only_text_and_truncation_are_reported(loaded, tmp_path):
    image = write_image(tmp_path / "cxr.png", 64, 64)
    with pytest.raises(ValueError, match="only punctuation"):
        word_attention_maps(loaded.model, loaded.tokenizer, image, "... !")
    long_text = " ".join(["effusion"] * 100)  # more than the tiny tokenizer's 64 tokens
    with pytest.warns(UserWarning, match="max_length"):
        maps = word_attention_maps(loaded.model, loaded.tokenizer, image, long_text)
    assert 0 < len(maps.words) < 100
