"""The baseline every paper compares against: one global image and one global text feature.

Image: backbone → last feature map → global pooling → linear projection.
Text: per-token encoder → pooling over real tokens → linear projection.
Training: an identity loss with one classifier shared by both modalities, plus CMPM.
Test-time similarity: cosine of the two global features.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from tireid_core.distributed import gather_with_grad
from tireid_core.losses import cmpm_loss, id_loss
from tireid_core.methods import Method, MethodModel
from tireid_core.metrics import cosine_similarity
from tireid_core.models.backbones import create_backbone
from tireid_core.models.text_encoders import create_bert, create_text_encoder, pool_tokens
from tireid_core.params import ModelParams, RunParams


@dataclass
class BaselineParams:
    """Loss weights of the baseline (section ``baseline.baseline``)."""

    id_weight: float = 1.0
    cmpm_weight: float = 1.0
    cmpm_q_norm: Literal["l1", "l2"] = "l1"


@dataclass
class BaselineRunParams(RunParams):
    baseline: BaselineParams = field(default_factory=BaselineParams)


def build_text_encoder(p: ModelParams, vocab_size: int, max_len: int) -> nn.Module:
    """The generic text encoders by name: a word Bi-LSTM, a small transformer or BERT."""
    if p.text_encoder == "bilstm":
        return create_text_encoder(
            "bilstm", vocab_size=vocab_size, embed_dim=p.word_embed_dim, hidden=p.text_hidden, dropout=p.text_dropout
        )
    if p.text_encoder == "transformer":
        return create_text_encoder(
            "transformer", vocab_size=vocab_size, dim=p.text_hidden, layers=p.text_layers, heads=p.text_heads,
            max_len=max_len, dropout=p.text_dropout,
        )
    return create_bert(p)


class Baseline(MethodModel):
    def __init__(self, params: BaselineRunParams, vocab_size: int, num_classes: int, tokenizer=None):
        super().__init__()
        p = params.model
        self.loss = params.baseline
        self.pooling = p.pooling
        widths = tuple(p.backbone_widths) if p.backbone_widths else None
        self.backbone = create_backbone(
            p.image_backbone, pretrained=p.pretrained, last_stride=p.last_stride, widths=widths
        )
        self.image_proj = nn.Linear(self.backbone.channels["layer4"], p.feature_dim)
        self.text_encoder = build_text_encoder(p, vocab_size, params.data.max_words)
        self.text_proj = nn.Linear(self.text_encoder.out_dim, p.feature_dim)
        self.classifier = nn.Linear(p.feature_dim, num_classes)  # shared by both modalities
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.backbone(images)["layer4"]
        pooled = fmap.amax((2, 3)) if self.pooling == "max" else fmap.mean((2, 3))
        return {"global": self.image_proj(pooled)}

    def encode_texts(self, text: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask = text["mask"]
        return {"global": self.text_proj(pool_tokens(self.text_encoder(text["ids"], mask), mask, self.pooling))}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Training losses for one (local) batch; CMPM sees the batch gathered over ranks."""
        img = self.encode_images(batch["image"])["global"]
        txt = self.encode_texts(batch)["global"]
        labels, w = batch["label"], self.loss
        terms = {}
        if w.id_weight:
            terms["id"] = w.id_weight * (id_loss(self.classifier(img), labels) + id_loss(self.classifier(txt), labels))
        if w.cmpm_weight:
            all_img, all_txt, all_labels = gather_with_grad(img), gather_with_grad(txt), gather_with_grad(labels)
            terms["cmpm"] = w.cmpm_weight * cmpm_loss(all_img, all_txt, all_labels, q_norm=w.cmpm_q_norm)
        terms["loss"] = sum(terms.values())
        return terms

    @staticmethod
    def similarities(image_feats: dict, text_feats: dict) -> dict[str, torch.Tensor]:
        """Text-to-image score matrices by name; "final" is what model selection uses."""
        return {"final": cosine_similarity(text_feats["global"], image_feats["global"])}


METHOD = Method("baseline", params=BaselineRunParams, model=Baseline)
