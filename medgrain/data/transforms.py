"""Image preprocessing, with torchvision.transforms.v2; presets named after their use.

Every preset takes the image as read by ``medgrain.data.imageio`` (uint8 or float32, 1 or 3 channels)
and returns float32 with ``in_chans`` channels normalised by ``mean``/``std``. Called on a dict (or
tuple) holding a ``tv_tensors.Image`` with ``tv_tensors.Mask`` and ``tv_tensors.BoundingBoxes``, the
geometric steps move masks (nearest neighbour) and boxes with the image; colour steps touch only the
image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

# CLIP's statistics: the default for towers pretrained with CLIP and for random towers.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class PreprocessConfig:
    """What a checkpoint needs to turn a file into the tensor its image tower expects."""

    image_size: int = 224
    mean: tuple[float, ...] = field(default=CLIP_MEAN)
    std: tuple[float, ...] = field(default=CLIP_STD)
    in_chans: int = 3

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        return cls(
            image_size=int(d["image_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            in_chans=int(d.get("in_chans", 3)),
        )


def _check(cfg: PreprocessConfig) -> None:
    if cfg.in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {cfg.in_chans}")
    if len(cfg.mean) != cfg.in_chans or len(cfg.std) != cfg.in_chans:
        raise ValueError(
            f"mean {tuple(cfg.mean)} and std {tuple(cfg.std)} need one value per input channel (in_chans={cfg.in_chans})"
        )
    if cfg.image_size < 1:
        raise ValueError(f"image_size must be positive, got {cfg.image_size}")


class MatchChannels(v2.Transform):
    """Give images the tower's channel count: alpha is dropped, grey is repeated to RGB, RGB is
    reduced to luminance. Masks and boxes pass through."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, in_chans: int):
        super().__init__()
        self.in_chans = in_chans

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        channels = inpt.shape[-3]
        if channels in (2, 4):  # grey or RGB with alpha, as PIL images passed in directly can be
            inpt, channels = tv_tensors.wrap(inpt[..., : channels - 1, :, :], like=inpt), channels - 1
        if channels == self.in_chans:
            return inpt
        if channels == 1:
            out = inpt.repeat_interleave(self.in_chans, dim=-3)
        elif channels == 3 and self.in_chans == 1:
            out = v2.functional.rgb_to_grayscale(inpt.as_subclass(torch.Tensor), num_output_channels=1)
        else:
            raise ValueError(f"cannot turn a {channels}-channel image into {self.in_chans} channels")
        return tv_tensors.wrap(out, like=inpt)


def _to_float() -> v2.Transform:
    # converts only images, masks stay integer: uint8 is scaled to [0, 1], float is kept
    return v2.ToDtype(torch.float32, scale=True)


def _normalise(cfg: PreprocessConfig) -> list[v2.Transform]:
    return [MatchChannels(cfg.in_chans), v2.Normalize(list(cfg.mean), list(cfg.std))]


def _augment(cfg: PreprocessConfig, horizontal_flip: float) -> v2.Compose:
    _check(cfg)
    if not 0.0 <= horizontal_flip <= 1.0:
        raise ValueError(f"horizontal_flip is a probability, got {horizontal_flip}")
    flip = [v2.RandomHorizontalFlip(horizontal_flip)] if horizontal_flip > 0 else []
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(cfg.image_size, scale=(0.8, 1.0), antialias=True),
            *flip,
            v2.RandomRotation(10),
            _to_float(),
            v2.ColorJitter(brightness=0.2, contrast=0.2),  # on [0, 1] floats: the same for 8- and 16-bit sources
            *_normalise(cfg),
        ]
    )


def pretrain_transform(cfg: PreprocessConfig, horizontal_flip: float = 0.0) -> v2.Compose:
    """Augmentation for image-text pretraining: random resized crop (scale 0.8-1), rotation up to 10
    degrees, brightness/contrast jitter of 0.2.

    No horizontal flip by default: chest X-ray texts name laterality ("left pleural effusion"), and a
    flipped image would contradict its own text. Pass ``horizontal_flip=0.5`` for data whose texts do not.
    """
    return _augment(cfg, horizontal_flip)


def segmentation_train_transform(cfg: PreprocessConfig, horizontal_flip: float = 0.5) -> v2.Compose:
    """Training augmentation for segmentation and detection: the pretraining crop and rotation applied
    jointly to image, masks and boxes; the brightness/contrast jitter changes the image only. Flipping
    is on by default because masks and boxes flip with the image and finding names carry no side.
    Boxes may be cropped to nothing; ``ImageTextDataset`` drops those."""
    return _augment(cfg, horizontal_flip)


def eval_transform(cfg: PreprocessConfig) -> v2.Compose:
    """Deterministic: resize the shorter side to image_size, then crop the centre square."""
    _check(cfg)
    return v2.Compose(
        [v2.ToImage(), v2.Resize(cfg.image_size, antialias=True), v2.CenterCrop(cfg.image_size), _to_float(), *_normalise(cfg)]
    )
