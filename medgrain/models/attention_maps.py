"""Word-to-image attention maps: where each word of a text looks in an image.

For every word w of the text and the patch tokens p of the image (both from the model's token
heads, L2-normalised), the map is MGCA's word->patch attention, the one its token alignment uses
to build each word's image context:

    a_w = softmax_m(w . p_m / temperature)        over the h x w patch grid

A CNN tower works the same way through its token grid (ResNet layer3).

Words are the fast tokenizer's pre-tokenised words, merged from their word pieces with the word
ids (``model.text_tokens``); each word's string is cut from the text with ``word_to_chars``, so it
keeps the text's casing. BERT-style tokenizers split at whitespace *and* punctuation: "left-sided
effusion." is the words ``left``, ``-``, ``sided``, ``effusion``, ``.``; words made only of
punctuation are left out of the result (each word's map depends on that word alone, so leaving
some out changes no other map). Words past the tokenizer's ``max_length`` are never seen by the
model and are left out with a warning.

Up-sampling keeps the attention a distribution: each patch's mass is spread evenly over the pixels
the patch covers (nearest neighbour, divided by the patch's pixel count), so every map sums to 1
over the image. The patch grid covers what the model saw: with the checkpoint's eval transform
(shorter side resized, centre square cropped) that is the centre square of the image; pixels
outside it get 0.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medgrain.data.imageio import read_image

PUNCTUATION_ONLY = re.compile(r"^[^\w]+$")


@dataclass
class AttentionMaps:
    words: list[str]
    maps: np.ndarray  # (W, H, W_img) float64, each map sums to 1
    image: np.ndarray  # (H, W_img) or (H, W_img, 3) float32 in [0, 1], for display
    grid: tuple[int, int]  # the patch grid the maps were computed on

    def select(self, indices: list[int]) -> AttentionMaps:
        return AttentionMaps([self.words[i] for i in indices], self.maps[list(indices)], self.image, self.grid)


def _display_image(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) as read_image returns it -> (H, W) or (H, W, 3) float in [0, 1]."""
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    x = x.clamp(0, 1).numpy()
    return x[0] if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1)


def _centre_square(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the square the eval transform keeps, in the image's own pixels."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def spread_over_pixels(patch_attention: np.ndarray, side: int) -> np.ndarray:
    """(h, w) attention over patches -> (side, side) over pixels, each patch's mass spread evenly over
    the pixels it covers (nearest neighbour, divided by the patch's pixel count): the sum is kept."""
    h, w = patch_attention.shape
    rows = np.minimum(np.arange(side) * h // side, h - 1)  # the patch row of each pixel row
    cols = np.minimum(np.arange(side) * w // side, w - 1)
    row_count, col_count = np.bincount(rows, minlength=h), np.bincount(cols, minlength=w)
    per_pixel = patch_attention / np.outer(row_count, col_count)
    return per_pixel[np.ix_(rows, cols)]


def _words(tokenizer, text: str, word_ids: torch.Tensor) -> tuple[list[int], list[str]]:
    """Ids and strings of the words the model saw, punctuation-only words left out."""
    encoding = tokenizer.hf(text, truncation=True, max_length=tokenizer.max_length)
    seen = [w for w in encoding.word_ids() if w is not None]
    if seen != [int(w) for w in word_ids[0] if w >= 0]:
        raise RuntimeError("the tokenizer's word ids changed between two calls on the same text")
    ids, strings = [], []
    for w in dict.fromkeys(seen):
        start, end = encoding.word_to_chars(w)
        word = text[start:end]
        if not PUNCTUATION_ONLY.match(word):
            ids.append(w)
            strings.append(word)
    last_char = encoding.word_to_chars(seen[-1])[1] if seen else 0
    if re.search(r"\w", text[last_char:]):
        warnings.warn(f"the text is longer than the tokenizer's max_length ({tokenizer.max_length} tokens); "
                      f"words after {text[:last_char][-30:]!r} are left out", stacklevel=3)
    return ids, strings


def word_attention_maps(model, tokenizer, image: torch.Tensor | str | Path, text: str, transform=None,
                        temperature: float = 0.1) -> AttentionMaps:
    """Each word's attention over the image (see the module docstring).

    ``image`` is a path, or a (C, H, W) tensor as ``medgrain.data.read_image`` returns it (uint8, or
    float in [0, 1]); ``transform`` turns it into the model's input (default: the eval transform of the
    model's own preprocessing; a custom one must keep its geometry: shorter side resized, centre crop).
    """
    if not getattr(model, "token_heads", False):
        raise ValueError("word attention maps need a model with token heads (MGCA's local alignment); this "
                         "checkpoint has none: build it with token_heads=True (e.g. presets tiny, tiny-mgca)")
    if not text.strip():
        raise ValueError("the text is empty")
    if transform is None:
        from medgrain.data.transforms import eval_transform

        if getattr(model, "config", None) is None:
            raise ValueError("the model carries no config to take its preprocessing from: pass transform=")
        transform = eval_transform(model.config.preprocess_config())
    raw = read_image(image) if isinstance(image, (str, Path)) else image
    if raw.ndim != 3:
        raise ValueError(f"expected an image tensor (C, H, W), got shape {tuple(raw.shape)}")

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # BatchNorm heads use their running statistics: one image is not a batch
    try:
        with torch.no_grad():
            pixels = transform(raw).unsqueeze(0).to(device)
            image_out = model.image_tokens(pixels)
            tokens = tokenizer(text)
            text_out = model.text_tokens({k: v.to(device) for k, v in tokens.items()})
    finally:
        model.train(was_training)
    if image_out["grid"] is None:
        raise RuntimeError("the image tower returned no patch grid (patch dropout?); maps need every patch")

    ids, words = _words(tokenizer, text, tokens["word_ids"])
    if not ids:
        raise ValueError(f"the text has no words, only punctuation: {text!r}")
    h, w = image_out["grid"]
    word_vectors = text_out["words"][0, ids].float()  # (W, E)
    patches = image_out["tokens"][0].float()  # (M, E)
    attention = torch.softmax((word_vectors @ patches.T).double() / temperature, dim=-1).cpu().numpy()

    height, width = raw.shape[-2:]
    top, left, side = _centre_square(height, width)
    maps = np.zeros((len(ids), height, width))
    for i, a in enumerate(attention):
        maps[i, top:top + side, left:left + side] = spread_over_pixels(a.reshape(h, w), side)
    return AttentionMaps(words, maps, _display_image(raw), (h, w))


def attention_figure(maps: AttentionMaps, max_words: int = 12, columns: int = 5, title: str | None = None):
    """A matplotlib figure: the image, then one panel per word (the first ``max_words``) with its map
    overlaid and the word as title.

    Each panel has its own colour scale (0 to that word's peak), since maps are compared by where
    they look, not by how peaked they are."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry to touch

    shown = min(len(maps.words), max_words)
    panels = shown + 1
    columns = min(columns, panels)
    rows = -(-panels // columns)
    fig = Figure(figsize=(2.3 * columns, 2.5 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    cmap = "gray" if maps.image.ndim == 2 else None
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(maps.image, cmap=cmap, vmin=0, vmax=1)
    axes.flat[0].set_title("image", fontsize=10)
    for i in range(shown):
        ax = axes.flat[i + 1]
        ax.imshow(maps.image, cmap=cmap, vmin=0, vmax=1)
        ax.imshow(maps.maps[i], cmap="inferno", alpha=0.55, vmin=0, vmax=float(maps.maps[i].max()) or 1.0)
        ax.set_title(maps.words[i], fontsize=10)
    heading = title or "word-to-image attention"
    if len(maps.words) > shown:
        heading += f" (first {shown} of {len(maps.words)} words)"
    fig.suptitle(heading, fontsize=11)
    return fig


def save_attention_png(maps: AttentionMaps, path: str | Path, max_words: int = 12, columns: int = 5,
                       title: str | None = None) -> Path:
    """Write ``attention_figure`` as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    attention_figure(maps, max_words, columns, title).savefig(path, dpi=110)
    return path


def attention_command(checkpoint: str | Path, image: str | Path, text: str, out: str | Path,
                      max_words: int = 12, temperature: float = 0.1) -> Path:
    """``medgrain attention --checkpoint C --image IMG --text "..." --out PNG``: writes the PNG."""
    from medgrain.models.factory import load_pretrained

    loaded = load_pretrained(checkpoint)
    maps = word_attention_maps(loaded.model, loaded.tokenizer, image, text, loaded.transform, temperature)
    return save_attention_png(maps, out, max_words=max_words, title=f"{Path(image).name}: word-to-image attention")
