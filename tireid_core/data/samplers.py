"""Batch orders as plain lists of index lists, a pure function of (seed, epoch).

Because the order depends only on (seed, epoch), a resumed run sees exactly the batches the
interrupted one would have, and every DDP rank can compute the same global batch and take its slice.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


def random_batches(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = True) -> list[list[int]]:
    """Shuffle all n items and cut into batches (IRRA/NAFS style: no identity sampler)."""
    order = _rng(seed, epoch).permutation(n).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def identity_batches(pids: list[int], ids_per_batch: int, per_id: int, seed: int, epoch: int) -> list[list[int]]:
    """P identities × K items per batch (items sampled with replacement when an id has fewer than K)."""
    rng = _rng(seed, epoch)
    by_id: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(pids):
        by_id[p].append(i)
    ids = sorted(by_id)
    order = rng.permutation(len(ids))
    batches = []
    for start in range(0, len(ids) - ids_per_batch + 1, ids_per_batch):
        batch = []
        for j in order[start : start + ids_per_batch]:
            items = by_id[ids[j]]
            take = rng.choice(len(items), size=per_id, replace=len(items) < per_id)
            batch.extend(items[t] for t in take)
        batches.append(batch)
    return batches


def rank_slice(batch: list[int], rank: int, world_size: int) -> list[int]:
    """The part of a global batch that one DDP rank computes."""
    return batch[rank::world_size]
