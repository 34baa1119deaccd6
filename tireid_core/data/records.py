"""Plain records every loader returns, so models and metrics never see a file format.

Loaders return lists of these (torchreid style); nothing here reads files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")


class DatasetError(Exception):
    """A dataset on disk is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class ImageEntry:
    """One annotated image of a text-image dataset, in annotation-file order."""

    path: Path  # absolute path of the image file
    pid: int  # identity id exactly as stored in the annotation file
    split: str  # "train", "val" or "test"
    captions: tuple[str, ...]
    tokens: tuple[tuple[str, ...], ...] | None = None  # `processed_tokens`, when present
    file_path: str = ""  # the path as written in the annotation (relative to imgs/)


@dataclass(frozen=True)
class CaptionPair:
    """One (image, caption) training/eval unit in IRRA's flattened order."""

    image_index: int  # index into TextImageDataset.images
    pid: int
    path: Path
    caption: str
    tokens: tuple[str, ...] | None = None


@dataclass
class TextImageDataset:
    name: str
    root: Path
    images: list[ImageEntry] = field(default_factory=list)

    def split(self, name: str) -> list[ImageEntry]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return [e for e in self.images if e.split == name]

    def pairs(self, split: str) -> list[CaptionPair]:
        """Flatten a split to one pair per caption: JSON order, captions in list order (IRRA/RDE order)."""
        out = []
        for i, e in enumerate(self.images):
            if e.split != split:
                continue
            for j, c in enumerate(e.captions):
                toks = e.tokens[j] if e.tokens is not None else None
                out.append(CaptionPair(i, e.pid, e.path, c, toks))
        return out


@dataclass(frozen=True)
class ReIDImage:
    path: Path
    pid: int  # 0 = distractor; junk (-1) never reaches a record
    camid: int  # 0-based camera index


@dataclass
class ReIDDataset:
    name: str
    root: Path
    train: list[ReIDImage]
    query: list[ReIDImage]
    gallery: list[ReIDImage]
