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


def _build_nafs(params, vocab_size: int, num_classes: int) -> nn.Module:
    from tireid_core.models.nafs import NAFS

    if params.model.text_encoder == "bert":
        from tireid_core.data.tokenizers import HFTokenizer

        tokenizer = HFTokenizer(params.model.text_model)
        cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    else:  # word vocabulary + [CLS], [SEP] at the end (WordTokenizer with cls_sep)
        if not params.data.cls_sep_tokens:
            raise ValueError("nafs.data.cls_sep_tokens must be true with a word vocabulary: NAFS reads [CLS] outputs")
        cls_id, sep_id = vocab_size - 2, vocab_size - 1
    return NAFS(params, vocab_size, num_classes, cls_id, sep_id)


MODELS: dict[str, Callable] = {"baseline": _build_baseline, "ssan": _build_ssan, "nafs": _build_nafs}


def model_builder(method: str) -> Callable:
    if method not in MODELS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[method]
