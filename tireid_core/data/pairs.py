"""Torch datasets over caption pairs and images, and the collate that tokenises a batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from tireid_core.data.records import CaptionPair


class PairDataset(Dataset):
    """(image, caption, label) items; labels are dense train ids (raw pid kept for evaluation).

    With `weak_caption=True` each item also carries a caption drawn uniformly from the captions of the
    *other images* of the same identity (SSAN's weak positive; never the same image's second caption).
    The draw uses torch's global RNG, which the engine reseeds every epoch, so runs and resumes repeat it.
    """

    def __init__(self, pairs: list[CaptionPair], load_image, label_of_pid: dict[int, int] | None = None,
                 weak_caption: bool = False):
        self.pairs = pairs
        self.load_image = load_image  # path -> tensor (data.transforms.ImageLoader)
        self.label_of_pid = label_of_pid
        self.weak_caption = weak_caption
        self.other_image_captions: list[list[int]] = []
        if weak_caption:
            by_pid: dict[int, list[int]] = {}
            for i, p in enumerate(pairs):
                by_pid.setdefault(p.pid, []).append(i)
            for i, p in enumerate(pairs):
                others = [j for j in by_pid[p.pid] if pairs[j].image_index != p.image_index]
                if not others:
                    raise ValueError(
                        f"identity {p.pid} has a single image ({p.path}); weak captions need another image of the "
                        "same identity (drop such identities first: engine.drop_single_image_ids)"
                    )
                self.other_image_captions.append(others)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        p = self.pairs[i]
        label = self.label_of_pid[p.pid] if self.label_of_pid is not None else -1
        item = {"image": self.load_image(p.path), "caption": p.caption, "label": label, "pid": p.pid, "index": i}
        if self.weak_caption:
            others = self.other_image_captions[i]
            item["weak_caption"] = self.pairs[others[int(torch.randint(len(others), ()))]].caption
        return item


class ImageDataset(Dataset):
    """Unique gallery images (each test image once)."""

    def __init__(self, paths: list, load_image):
        self.paths = paths
        self.load_image = load_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.load_image(self.paths[i])


def _trim(*tensors: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop padding columns beyond the batch's longest caption (every model masks padding, so only time changes)."""
    length = max(int(mask.sum(1).max()), 1)
    return tuple(t[:, :length] for t in tensors)


@dataclass
class CaptionCollate:
    """Stack images and tokenise captions of a batch with the run's tokenizer.

    `sub_sentences=True` adds `pieces`, each token's sub-sentence index (NAFS's locality-constrained text).
    """

    tokenizer: object
    max_words: int
    sub_sentences: bool = False

    def tokenize(self, captions: list, prefix: str = "") -> dict:
        """{"ids", "mask"[, "pieces"]} of the captions, trimmed to the longest; the keyword arguments of encode_texts."""
        if self.sub_sentences:
            ids, mask, pieces = self.tokenizer.encode_batch_pieces(captions, self.max_words)
            ids, mask, pieces = _trim(ids, mask, pieces, mask=mask)
            return {f"{prefix}ids": ids, f"{prefix}mask": mask, f"{prefix}pieces": pieces}
        ids, mask = self.tokenizer.encode_batch(captions, self.max_words)
        ids, mask = _trim(ids, mask, mask=mask)
        return {f"{prefix}ids": ids, f"{prefix}mask": mask}

    def __call__(self, items: list[dict]) -> dict:
        batch = {
            "image": torch.stack([it["image"] for it in items]),
            **self.tokenize([it["caption"] for it in items]),
            "label": torch.tensor([it["label"] for it in items]),
            "pid": torch.tensor([it["pid"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
        }
        if "weak_caption" in items[0]:
            batch.update(self.tokenize([it["weak_caption"] for it in items], prefix="weak_"))
        return batch
