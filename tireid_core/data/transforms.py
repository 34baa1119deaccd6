"""Image transforms: one place that decides input size, augmentation and normalisation."""
from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_image_transform(height: int, width: int, *, train: bool, hflip: bool = True,
                          normalize: str = "imagenet") -> T.Compose:
    """Resize to (height, width) with bicubic interpolation; flip only when training.

    normalize="imagenet" uses ImageNet statistics (torchvision weights); "half" uses 0.5/0.5 as SSAN's code does.
    """
    if normalize not in ("imagenet", "half"):
        raise ValueError(f"normalize must be 'imagenet' or 'half', got {normalize!r}")
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalize == "imagenet" else ((0.5,) * 3, (0.5,) * 3)
    steps = [T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC)]
    if train and hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)
