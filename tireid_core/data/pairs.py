"""Torch datasets over training samples, support sets of the same identity, and the collates that batch them."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from tireid_core.data.records import CaptionPair, ReIDImage

SUPPORT_POLICIES = ("skip", "duplicate", "augment")


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The random stream of one training sample in one epoch: support draws depend on (seed, epoch, sample) only, so
    one process, any number of DDP ranks and a resumed run all draw the same support sets."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def draw_supports(candidates: list[int], k: int, policy: str, generator: torch.Generator) -> list[int | None]:
    """k picks from `candidates`: without replacement while they last; when fewer than k exist, `duplicate` draws the
    rest with replacement, `augment` (and `skip`, whose short identities were dropped) leaves None = the sample itself.
    """
    pool, picks = list(candidates), []
    for _ in range(min(k, len(pool))):
        picks.append(pool.pop(int(torch.randint(len(pool), (), generator=generator))))
    while len(picks) < k:
        if policy == "duplicate" and candidates:
            picks.append(candidates[int(torch.randint(len(candidates), (), generator=generator))])
        else:
            picks.append(None)
    return picks


def support_images_needed(support_captions: int, support_images: int) -> int:
    """Other images an identity needs under the `skip` policy: one for any caption support, K for K image supports."""
    return max(1 if support_captions else 0, support_images)


def drop_short_identities(pairs: list[CaptionPair], needed: int) -> list[CaptionPair]:
    """Remove training identities with fewer than `needed` other images (SSAN drops CUHK-PEDES ids 1369, 4116,
    6116, which have a single image). Says what it dropped."""
    images: dict[int, set] = {}
    for p in pairs:
        images.setdefault(p.pid, set()).add(p.image_index)
    short = sorted(pid for pid, imgs in images.items() if len(imgs) - 1 < needed)
    if short:
        warnings.warn(f"support sets: dropping {len(short)} training identities with fewer than {needed} other "
                      f"images: {short[:20]}", stacklevel=2)
    dropped = set(short)
    return [p for p in pairs if p.pid not in dropped]


class PairDataset(Dataset):
    """(image, caption, label) items; labels are dense train ids (raw pid kept for evaluation).

    Support sets: with `support_captions` = K each item also carries K captions drawn from the captions of the *other
    images* of its identity (never its own image's other captions); with `support_images` = K, K other images of its
    identity. SSAN's weak positive caption is K = 1 captions; LCR²S uses both. See `draw_supports` for the policy;
    ``support_captions_self`` / ``support_images_self`` (K booleans) mark the supports that fell back to the sample
    itself, so a model can treat them its own way (LCR²S: mask them, or use the identical image).
    """

    def __init__(self, pairs: list[CaptionPair], load_image, label_of_pid: dict[int, int] | None = None,
                 support_captions: int = 0, support_images: int = 0, support_policy: str = "skip"):
        if support_policy not in SUPPORT_POLICIES:
            raise ValueError(f"support_policy must be one of {SUPPORT_POLICIES}, got {support_policy!r}")
        self.pairs = pairs
        self.load_image = load_image  # path -> tensor (data.transforms.ImageLoader)
        self.label_of_pid = label_of_pid
        self.support_captions, self.support_images, self.policy = support_captions, support_images, support_policy
        self.other_captions: list[list[int]] = []  # per pair: pairs of other images of the same identity
        self.other_images: list[list[int]] = []  # per pair: one pair index per other image of the same identity
        needed = support_images_needed(support_captions, support_images)
        if support_captions or support_images:
            by_pid: dict[int, list[int]] = {}
            for i, p in enumerate(pairs):
                by_pid.setdefault(p.pid, []).append(i)
            for i, p in enumerate(pairs):
                others = [j for j in by_pid[p.pid] if pairs[j].image_index != p.image_index]
                if support_policy == "skip" and len({pairs[j].image_index for j in others}) < needed:
                    raise ValueError(
                        f"identity {p.pid} has too few other images for a support set ({p.path}); drop such "
                        "identities first (data.pairs.drop_short_identities) or use another data.support_policy")
                self.other_captions.append(others)
                first_of_image: dict[int, int] = {}
                for j in others:
                    first_of_image.setdefault(pairs[j].image_index, j)
                self.other_images.append(list(first_of_image.values()))

        self.seed, self.epoch = 0, 0

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Support draws of this epoch (see `sample_generator`)."""
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def support_picks(self, i: int) -> tuple[list[int | None], list[int | None]]:
        """Sample i's support sets this epoch as pair indices (captions, images); None = the sample itself."""
        generator = sample_generator(self.seed, self.epoch, i)
        captions = draw_supports(self.other_captions[i], self.support_captions, self.policy, generator)
        images = draw_supports(self.other_images[i], self.support_images, self.policy, generator)
        return captions, images

    def __getitem__(self, i: int) -> dict:
        p = self.pairs[i]
        label = self.label_of_pid[p.pid] if self.label_of_pid is not None else -1
        item = {"image": self.load_image(p.path), "caption": p.caption, "label": label, "pid": p.pid, "index": i}
        if not (self.support_captions or self.support_images):
            return item
        caption_picks, image_picks = self.support_picks(i)
        if self.support_captions:
            item["support_captions"] = [self.pairs[j].caption if j is not None else p.caption for j in caption_picks]
            item["support_captions_self"] = torch.tensor([j is None for j in caption_picks])
        if self.support_images:
            item["support_images"] = torch.stack(
                [self.load_image(self.pairs[j].path if j is not None else p.path) for j in image_picks])
            item["support_images_self"] = torch.tensor([j is None for j in image_picks])
        return item


class ImageDataset(Dataset):
    """Images by path (each gallery image once)."""

    def __init__(self, paths: list, load_image):
        self.paths = paths
        self.load_image = load_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.load_image(self.paths[i])


class ReIDTrainDataset(Dataset):
    """(image, label, camera) items of an image-ReID training split, plus the model's per-sample targets when it has
    any (`targets`: a function of the `ReIDImage` returning named tensors, e.g. SAN's texture)."""

    def __init__(self, images: list[ReIDImage], load_image, label_of_pid: dict[int, int], targets=None):
        self.images = images
        self.load_image = load_image
        self.label_of_pid = label_of_pid
        self.targets = targets

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Nothing is drawn per sample here (the same interface as `PairDataset`)."""

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        im = self.images[i]
        item = {"image": self.load_image(im.path), "label": self.label_of_pid[im.pid], "pid": im.pid,
                "camid": im.camid, "index": i}
        if self.targets is not None:
            item.update(self.targets(im))
        return item


TEXT_KEYS = ("ids", "mask", "pieces", "sub_ids", "sub_mask")


def _trim(*tensors: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop padding columns beyond the batch's longest caption (a model that masks padding only runs faster)."""
    length = max(int(mask.sum(1).max()), 1)
    return tuple(t[:, :length] for t in tensors)


@dataclass
class CaptionCollate:
    """Stack images and tokenise captions of a batch with the run's tokenizer.

    `pieces=True` adds `pieces`, each token's sub-sentence index (NAFS's locality-constrained text). Captions are
    trimmed to the batch's longest unless `full_width` (SSAN's official global max sees the zero padding up to
    max_words, so there the width changes the output). Support captions
    (K per sample) are tokenised as one (B·K)-row batch, sample-major, under the ``support_`` prefix; support images
    are stacked B × K × C × H × W, the self-fallback flags B × K.
    """

    tokenizer: object
    max_words: int
    pieces: bool = False
    full_width: bool = False
    official_pieces: int = 0

    def tokenize(self, captions: list, prefix: str = "") -> dict:
        """{"ids", "mask"[, "pieces"][, "sub_ids", "sub_mask"]} of the captions: the text input of encode_texts."""
        if self.pieces:
            tensors = self.tokenizer.encode_batch_pieces(captions, self.max_words)
            names = ("ids", "mask", "pieces")
        else:
            tensors = self.tokenizer.encode_batch(captions, self.max_words)
            names = ("ids", "mask")
        if not self.full_width:
            tensors = _trim(*tensors, mask=tensors[1])
        out = {f"{prefix}{name}": t for name, t in zip(names, tensors)}
        if self.official_pieces:
            sub_ids, sub_mask = self.tokenizer.encode_batch_official_pieces(captions, self.official_pieces,
                                                                            self.max_words)
            sub_ids, sub_mask = _trim(sub_ids, sub_mask, mask=sub_mask)
            out.update({f"{prefix}sub_ids": sub_ids, f"{prefix}sub_mask": sub_mask})
        return out

    def __call__(self, items: list[dict]) -> dict:
        batch = {
            "image": torch.stack([it["image"] for it in items]),
            **self.tokenize([it["caption"] for it in items]),
            "label": torch.tensor([it["label"] for it in items]),
            "pid": torch.tensor([it["pid"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
        }
        if "support_captions" in items[0]:
            batch.update(self.tokenize([c for it in items for c in it["support_captions"]], prefix="support_"))
        for key in ("support_captions_self", "support_images", "support_images_self"):
            if key in items[0]:
                batch[key] = torch.stack([it[key] for it in items])
        return batch


def text_input(batch: dict, prefix: str = "") -> dict:
    """The tokenised text of a batch (``ids``, ``mask``, and ``pieces``, ``sub_ids``, ``sub_mask`` when present) under
    `prefix`, unprefixed."""
    return {k[len(prefix):]: v for k, v in batch.items()
            if k.startswith(prefix) and k[len(prefix):] in TEXT_KEYS}


def reid_collate(items: list[dict]) -> dict:
    """Images and any per-sample target tensors stacked; labels, pids, cameras and indices as integer tensors."""
    numbers = ("label", "pid", "camid", "index")
    return {
        **{k: torch.stack([it[k] for it in items]) for k in items[0] if k not in numbers},
        **{k: torch.tensor([it[k] for it in items]) for k in numbers},
    }
