"""Shared backbones, text encoders and one module per paper, behind a small name → constructor registry."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn


def _build_baseline(params, vocab_size: int, num_classes: int) -> nn.Module:
    from tireid_core.models.baseline import Baseline

    return Baseline(params.model, vocab_size, num_classes)


def _build_ssan(params, vocab_size: int, num_classes: int) -> nn.Module:
    from tireid_core.models.ssan import SSAN

    return SSAN(params, vocab_size, num_classes)


MODELS: dict[str, Callable] = {"baseline": _build_baseline, "ssan": _build_ssan}


def model_builder(method: str) -> Callable:
    if method not in MODELS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[method]
