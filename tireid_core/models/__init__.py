"""Shared backbones, text encoders and one module per paper, behind a small name → constructor registry.

A builder gets the run's params, its tokenizer (vocabulary size, special-token ids) and the number of training
identities.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn


def _word_vocab_size(tokenizer) -> int:
    """Rows of a word-embedding table; 0 for Hugging Face tokenizers, whose encoders bring their own."""
    from tireid_core.data.tokenizers import WordTokenizer

    return tokenizer.vocab_size if isinstance(tokenizer, WordTokenizer) else 0


def _build_baseline(params, tokenizer, num_classes: int) -> nn.Module:
    from tireid_core.models.baseline import Baseline

    return Baseline(params.model, _word_vocab_size(tokenizer), num_classes)


def _build_ssan(params, tokenizer, num_classes: int) -> nn.Module:
    from tireid_core.models.ssan import SSAN

    return SSAN(params, _word_vocab_size(tokenizer), num_classes)


def _build_nafs(params, tokenizer, num_classes: int) -> nn.Module:
    from tireid_core.models.nafs import NAFS

    if getattr(tokenizer, "cls_id", None) is None:
        raise ValueError("nafs.data.cls_sep_tokens must be true with a word vocabulary: NAFS reads [CLS] outputs")
    return NAFS(params, _word_vocab_size(tokenizer), num_classes, tokenizer.cls_id, tokenizer.sep_id)


MODELS: dict[str, Callable] = {"baseline": _build_baseline, "ssan": _build_ssan, "nafs": _build_nafs}


def model_builder(method: str) -> Callable:
    if method not in MODELS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[method]
