"""Torch datasets over caption pairs and images, and the collate that tokenises a batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from tireid_core.data.datasets import read_image
from tireid_core.data.records import CaptionPair


class PairDataset(Dataset):
    """(image, caption, label) items; labels are dense train ids (raw pid kept for evaluation)."""

    def __init__(self, pairs: list[CaptionPair], transform, label_of_pid: dict[int, int] | None = None):
        self.pairs = pairs
        self.transform = transform
        self.label_of_pid = label_of_pid

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        p = self.pairs[i]
        label = self.label_of_pid[p.pid] if self.label_of_pid is not None else -1
        return {"image": self.transform(read_image(p.path)), "caption": p.caption, "label": label, "pid": p.pid, "index": i}


class ImageDataset(Dataset):
    """Unique gallery images (each test image once)."""

    def __init__(self, paths: list, transform):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(read_image(self.paths[i]))


@dataclass
class CaptionCollate:
    """Stack images and tokenise captions of a batch with the run's tokenizer."""

    tokenizer: object
    max_words: int

    def __call__(self, items: list[dict]) -> dict:
        ids, mask = self.tokenizer.encode_batch([it["caption"] for it in items], self.max_words)
        return {
            "image": torch.stack([it["image"] for it in items]),
            "ids": ids,
            "mask": mask,
            "label": torch.tensor([it["label"] for it in items]),
            "pid": torch.tensor([it["pid"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
        }
