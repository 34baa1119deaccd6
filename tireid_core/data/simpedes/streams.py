"""Seeded random sub-streams: the generator's only source of randomness.

Every draw comes from `np.random.default_rng([seed, TAG, *keys])`, one sub-stream per purpose and identity /
image / caption, so one identity's draws never depend on how many draws another one made.
"""
from __future__ import annotations

import numpy as np

# Stream tags: each purpose gets its own family of sub-streams.
T_ID, T_TEX, T_PLAN, T_IMG, T_CAP, T_STYLE, T_CAM, T_NOISE, T_EXTRA = range(1, 10)


def stream(seed: int, tag: int, *keys: int) -> np.random.Generator:
    """An independent generator for (seed, purpose, keys): order-independent by construction."""
    return np.random.default_rng([int(seed), tag, *map(int, keys)])


def pick(rng, values, probs=None):
    """One of `values`, optionally with (unnormalised) probabilities."""
    if probs is not None:
        probs = np.asarray(probs, float) / np.sum(probs)  # tables hold rounded probabilities
    return values[int(rng.choice(len(values), p=probs))]
