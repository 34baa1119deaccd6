"""Seeding, devices and tensor layout: the small pieces the training loop and the evaluation share."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={spec!r} but CUDA is not available on this machine")
    return device


def image_batch(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Images on the device, in NHWC when the run asks for it (train.channels_last; the model is converted in fit)."""
    images = images.to(device)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def to_device(batch: dict, device: torch.device, channels_last: bool = False) -> dict:
    """Every tensor of a batch on `device`; 4-D image batches in the run's layout."""
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value) and value.dim() == 4 and value.is_floating_point():
            out[key] = image_batch(value, device, channels_last)
        elif torch.is_tensor(value):
            out[key] = value.to(device, non_blocking=True)
        else:
            out[key] = value
    return out
