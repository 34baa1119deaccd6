"""Experiment assembly: from validated parameters to data, tokenizer and model, for either task.

- text-image retrieval (``Method.task == "text_image"``): caption pairs, random batches (IRRA/NAFS style), captions
  as queries against each split image once;
- image ReID (``"image_reid"``): identity-balanced batches (P identities × K images), query images against the gallery
  with same-identity-same-camera exclusion; optionally a val split held out from the training identities
  (``data.val_ids``) and per-sample training targets from the model (``train_targets``, SAN's texture).
The training loop (`engine.fit`) and the evaluation (`evaluation.evaluate`) only see an `Experiment`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch.nn as nn
from torch.utils.data import Dataset

from tireid_core.data.datasets import load_reid_dataset, load_text_image_dataset, relabel, verify_images
from tireid_core.data.pairs import (CaptionCollate, PairDataset, ReIDTrainDataset, drop_short_identities,
                                    reid_collate, support_images_needed)
from tireid_core.data.records import ReIDImage, TextImageDataset
from tireid_core.data.samplers import identity_batches, random_batches
from tireid_core.data.tokenizers import HFTokenizer, WordTokenizer, WordVocab, word_tokens
from tireid_core.data.transforms import ImageLoader
from tireid_core.methods import Method, get_method
from tireid_core.params import RunParams
from tireid_core.runtime import seed_everything


@dataclass
class TextImageEvalSet:
    """A retrieval split: captions are the queries, each image of the split once is the gallery."""

    split: str
    image_paths: list[Path]
    image_pids: list[int]
    captions: list[str]
    caption_pids: list[int]
    caption_image: list[int]  # index into image_paths of the caption's own image
    caption_refs: list[tuple[int, int]]  # (index into dataset.images, caption index): links queries to annotations


@dataclass
class ReIDEvalSet:
    """An image-ReID test: query images against gallery images."""

    split: str
    query: list[ReIDImage]
    gallery: list[ReIDImage]


def reid_val_split(train: list[ReIDImage], n_ids: int, key: str) -> tuple[list[ReIDImage], ReIDEvalSet]:
    """Hold out `n_ids` training identities (evenly spaced over the sorted ids, so the choice depends on no seed) as a
    val query/gallery split. Each held-out identity gives one query, its first image whose camera another of its
    images does not share (the protocol excludes same-camera matches), and the rest of its images to the gallery; an
    identity seen by one camera only goes to the gallery alone. Returns the remaining training images and the split."""
    by_id: dict[int, list[ReIDImage]] = {}
    for im in train:
        by_id.setdefault(im.pid, []).append(im)
    pids = sorted(by_id)
    if n_ids >= len(pids) - 1:
        raise ValueError(f"{key}: {n_ids} val identities leave fewer than 2 of the {len(pids)} training identities")
    held = {pids[i * len(pids) // n_ids] for i in range(n_ids)}
    query, gallery = [], []
    for pid in sorted(held):
        images = by_id[pid]
        first = next((im for im in images if any(o.camid != im.camid for o in images)), None)
        query += [first] if first is not None else []
        gallery += [im for im in images if im is not first]
    if not query:
        raise ValueError(f"{key}: none of the {n_ids} val identities has images from two cameras")
    return [im for im in train if im.pid not in held], ReIDEvalSet("val", query, gallery)


def build_eval_set(dataset: TextImageDataset, split: str) -> TextImageEvalSet:
    indices = [i for i, e in enumerate(dataset.images) if e.split == split]
    if not indices:
        raise ValueError(f"dataset {dataset.name!r} at {dataset.root} has no {split!r} split")
    entries = [dataset.images[i] for i in indices]
    caps, cap_pids, cap_img, refs = [], [], [], []
    for i, (global_index, e) in enumerate(zip(indices, entries)):
        for j, c in enumerate(e.captions):
            caps.append(c)
            cap_pids.append(e.pid)
            cap_img.append(i)
            refs.append((global_index, j))
    return TextImageEvalSet(split, [e.path for e in entries], [e.pid for e in entries], caps, cap_pids, cap_img, refs)


def drop_wordless_captions(pairs: list) -> list:
    """Training pairs whose caption has at least one word; the others (empty, punctuation-only, zero-width characters)
    would train on an empty text, so they are dropped and counted in a warning that names a few."""
    kept = [p for p in pairs if word_tokens(p.caption)]
    if len(kept) < len(pairs):
        bad = [p for p in pairs if not word_tokens(p.caption)]
        examples = ", ".join(f"{p.path.name} {p.caption!r}" for p in bad[:5])
        warnings.warn(f"dropping {len(bad)} training caption(s) without any word (e.g. {examples})", stacklevel=2)
    return kept


def build_tokenizer(params: RunParams, train_captions: list[str], cls_sep: bool):
    """Word vocabulary from training captions (Bi-LSTM / small transformer), or the tokenizer saved with a BERT or
    CLIP checkpoint."""
    m = params.model
    if m.text_encoder in ("bert", "clip"):
        return HFTokenizer(m.text_model)
    vocab = WordVocab.build([word_tokens(c) for c in train_captions], min_count=m.word_min_count)
    return WordTokenizer(vocab, cls_sep=cls_sep)


@dataclass
class Experiment:
    """Everything a run needs: params, data, tokenizer (text tasks) and the model."""

    params: RunParams
    method: Method
    dataset: object  # TextImageDataset or ReIDDataset
    train_set: Dataset
    train_pids: list[int]  # raw identity of each training item (identity-balanced batches)
    val_set: TextImageEvalSet | ReIDEvalSet | None
    test_set: TextImageEvalSet | ReIDEvalSet
    tokenizer: object | None
    num_classes: int
    model: nn.Module
    run_dir: Path
    image_cache: dict | None = None  # shared by training and evaluation loaders (data.cache_images)

    @property
    def text_image(self) -> bool:
        return self.method.task == "text_image"

    def collate(self) -> Callable:
        """The one tokenisation used for training batches and evaluation queries alike."""
        if not self.text_image:
            return reid_collate
        needs = self.model.text_needs
        return CaptionCollate(self.tokenizer, self.params.data.max_words, needs.pieces, needs.full_width,
                              needs.official_pieces)

    def train_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches, a pure function of (seed, epoch)."""
        tp = self.params.train
        if self.text_image:
            return random_batches(len(self.train_set), tp.batch_size, tp.seed, epoch)
        p = self.params.data.ids_per_batch
        return identity_batches(self.train_pids, p, tp.batch_size // p, tp.seed, epoch)

    def image_loader(self, train: bool) -> ImageLoader:
        return _image_loader(self.params, train, self.image_cache)


def _image_loader(params: RunParams, train: bool, cache: dict | None) -> ImageLoader:
    d = params.data
    return ImageLoader(d.height, d.width, train=train, hflip=d.hflip, normalize=d.normalize, cache=cache)


def build_experiment(params: RunParams, method: Method | None = None) -> Experiment:
    """Load the dataset, build the tokenizer and the model; seeds first so init is reproducible."""
    method = method or get_method(params.method)
    seed_everything(params.train.seed)
    d = params.data
    image_cache = {} if d.cache_images else None
    loader = _image_loader(params, True, image_cache)
    if method.task == "image_reid":
        dataset = load_reid_dataset(d.dataset, Path(d.root))
        if params.train.batch_size % d.ids_per_batch:
            raise ValueError(f"{params.method}.train.batch_size ({params.train.batch_size}) must be a multiple of "
                             f"{params.method}.data.ids_per_batch ({d.ids_per_batch}): P identities x K images")
        train_images, val_set = dataset.train, None
        if d.val_ids:
            train_images, val_set = reid_val_split(dataset.train, d.val_ids, f"{params.method}.data.val_ids")
        label_of_pid = relabel(im.pid for im in train_images)
        train_set = ReIDTrainDataset(train_images, loader, label_of_pid)
        train_pids = [im.pid for im in train_images]
        test_set = ReIDEvalSet("test", dataset.query, dataset.gallery)
        tokenizer = None
        paths = [im.path for im in (*dataset.train, *dataset.query, *dataset.gallery)]
    else:
        dataset = load_text_image_dataset(d.dataset, Path(d.root))
        train_pairs = drop_wordless_captions(dataset.pairs("train"))
        if not train_pairs:
            raise ValueError(f"dataset {d.dataset!r} at {d.root} has no training pairs")
        if (d.support_captions or d.support_images) and d.support_policy == "skip":
            train_pairs = drop_short_identities(train_pairs, support_images_needed(d.support_captions,
                                                                                   d.support_images))
        label_of_pid = {pid: i for i, pid in enumerate(sorted({p.pid for p in train_pairs}))}
        train_set = PairDataset(train_pairs, loader, label_of_pid, d.support_captions, d.support_images,
                                d.support_policy)
        train_pids = [p.pid for p in train_pairs]
        has_val = any(e.split == "val" for e in dataset.images)
        val_set = build_eval_set(dataset, "val") if has_val else None
        test_set = build_eval_set(dataset, "test")
        tokenizer = build_tokenizer(params, [p.caption for p in train_pairs], method.model.text_needs.cls_sep)
        paths = [p.path for p in train_pairs] + [p for s in (val_set, test_set) if s is not None for p in s.image_paths]
    verify_images(paths, f"{d.dataset} at {d.root}")
    vocab_size = tokenizer.vocab_size if isinstance(tokenizer, WordTokenizer) else 0  # HF encoders bring their own
    model = method.model(params, vocab_size, len(label_of_pid), tokenizer)
    if isinstance(train_set, ReIDTrainDataset) and hasattr(model, "train_targets"):
        train_set.targets = model.train_targets(train_set.images)  # per-sample targets (SAN's texture), or None
    return Experiment(params=params, method=method, dataset=dataset, train_set=train_set, train_pids=train_pids,
                      val_set=val_set, test_set=test_set, tokenizer=tokenizer, num_classes=len(label_of_pid),
                      model=model, run_dir=Path(params.out_dir), image_cache=image_cache)
