"""Image transforms: one place that decides input size, augmentation and normalisation."""
from __future__ import annotations

import torch
from torchvision import transforms as T

from tireid_core.data.datasets import read_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the statistics OpenAI's CLIP was trained with
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "half": ((0.5,) * 3, (0.5,) * 3),
                  "clip": (CLIP_MEAN, CLIP_STD)}


def normalization_stats(normalize: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of a `data.normalize` setting: ImageNet statistics, 0.5 / 0.5 ("half") or CLIP's."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {sorted(NORMALIZATIONS)}, got {normalize!r}")
    return NORMALIZATIONS[normalize]


def build_image_transform(height: int, width: int, *, train: bool, hflip: bool = True,
                          normalize: str = "imagenet") -> T.Compose:
    """Resize to (height, width) with bicubic interpolation; flip only when training.

    normalize="imagenet" uses ImageNet statistics (torchvision weights); "half" uses 0.5/0.5 as SSAN's code does;
    "clip" uses CLIP's own statistics (CLIP weights, IRRA-lineage code).
    """
    mean, std = normalization_stats(normalize)
    steps = [T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC)]
    if train and hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class ImageLoader:
    """Path -> image tensor: decode, resize and normalise, then flip at random when training.

    `cache` (a dict, shared by the loaders of one run) keeps each decoded, resized and normalised tensor, so small
    datasets (SimPEDES demo: about 15 MB) are decoded once instead of every epoch. The flip comes after the cache and
    draws the same random number as torchvision's RandomHorizontalFlip, so cached and uncached runs are identical.
    """

    def __init__(self, height: int, width: int, *, train: bool, hflip: bool = True, normalize: str = "imagenet",
                 cache: dict | None = None):
        self.prepare = build_image_transform(height, width, train=False, normalize=normalize)
        self.flip = train and hflip
        self.key = (height, width, normalize)
        self.cache = cache

    def __call__(self, path) -> torch.Tensor:
        key = (str(path), self.key)
        image = self.cache.get(key) if self.cache is not None else None
        if image is None:
            image = self.prepare(read_image(path))
            if self.cache is not None:
                self.cache[key] = image
        if self.flip and torch.rand(1) < 0.5:
            image = image.flip(-1)
        return image
