"""LCR²S, stage 2: the single-input student distilled from the frozen teacher (Yan et al., ACM MM 2023).

Documentation: docs/lcr2s.md. The teacher (stage 1, `tireid_core.models.lcr2s_teacher`, whose encoders, fusion blocks
and base loss this module imports) fuses every sample with K same-identity supports; the student sees one image or
one caption and has to *reason* its way towards that richer feature:
- reasoner `view_queries` (default): K learnable view queries cross-attend to the sample's local features (48 image
  regions, or the caption's real tokens) and become K "imagined views" ŝ_1..ŝ_K; a fusion block of the teacher's
  structure fuses [f; ŝ_1..ŝ_K] into the student feature f̃. `self_attention`: one transformer layer over the local
  features, then pooling. `none`: f̃ = f, the plain global feature.
- loss: L_S = L_base(f̃_img, f̃_txt) + λ_f·[KD_f(f̃_img, x̃_img) + KD_f(f̃_txt, x̃_txt)] + λ_r·(1/B²)‖R^S − R^T‖²_F
  with the teacher's fused features x̃ of the same batch and support sets (`tireid_core.losses.feature_kd_loss`,
  `relation_kd_loss`). The teacher runs in eval mode without gradients: its BatchNorm statistics and dropout stay
  fixed while the student trains.
- test: the student alone, one input, cosine of f̃ ("final"; "global" is the pooled f before reasoning).
The student starts from the pretrained backbones, not from the teacher's weights. Which teacher row it distils
from: `lcr2s.teacher_row` (Method.reads: the run folder comes from the lcr2s_teacher section).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from tireid_core.data.pairs import text_input
from tireid_core.distributed import gather_with_grad
from tireid_core.losses import feature_kd_loss, relation_kd_loss
from tireid_core.methods import Method
from tireid_core.models.lcr2s_teacher import LCR2SBase, LCR2SParams, build_fusion, check_lcr2s, load_teacher
from tireid_core.models.text_encoders import pool_tokens
from tireid_core.params import ParamsError, RunParams


@dataclass
class StudentParams(LCR2SParams):
    """The student's part of section ``lcr2s`` (the shared part: `LCR2SParams`); all reconstruction."""

    reasoner: Literal["view_queries", "self_attention", "none"] = "view_queries"
    lambda_f: float = 1.0  # feature distillation weight (0: off)
    lambda_r: float = 1.0  # relation distillation weight (0: off)
    kd_normalise: bool = True  # feature KD on L2-normalised features
    relation: Literal["cosine", "softmax_t"] = "cosine"  # R_ij = cos, or a row softmax of cos / relation_temperature
    relation_temperature: float = 0.1
    teacher_row: str = "full"  # the row of lcr2s_teacher_rows whose finished run is distilled


@dataclass
class LCR2SRunParams(RunParams):
    lcr2s: StudentParams = field(default_factory=StudentParams)

    def check(self, key: str) -> None:
        s = self.lcr2s
        distils = s.lambda_f > 0 or s.lambda_r > 0
        # supports feed the teacher's targets, the K view queries, and id_cr's weak caption
        check_lcr2s(self, key, needs_supports=distils or s.reasoner == "view_queries" or s.base_loss == "id_cr")
        for name in ("lambda_f", "lambda_r"):
            if not getattr(s, name) >= 0:
                raise ParamsError(f"{key}.lcr2s.{name}: must be >= 0, got {getattr(s, name)!r}")
        if not s.relation_temperature > 0:
            raise ParamsError(f"{key}.lcr2s.relation_temperature: must be positive, got {s.relation_temperature!r}")
        if distils and not s.teacher_row:
            raise ParamsError(f"{key}.lcr2s.teacher_row: name the lcr2s_teacher row to distil from")


class ViewQueryReasoner(nn.Module):
    """K learnable view queries cross-attend (h heads) to the local features: K imagined views; then `fusion` (an
    MHAF of the teacher's structure, or the mean) fuses [f; ŝ_1..ŝ_K] as the teacher fuses real supports."""

    def __init__(self, dim: int, views: int, heads: int, dropout: float, fusion: nn.Module):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(views, dim) * 0.02)
        self.cross = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.fusion = fusion

    def views(self, local: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(views B × K × d, attention B × K × N of each query over the local features)."""
        queries = self.queries.expand(len(local), -1, -1)
        return self.cross(queries, local, local, key_padding_mask=None if mask is None else ~mask, need_weights=True)

    def forward(self, f: torch.Tensor, local: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.fusion(f, self.views(local, mask)[0])[0]


class SelfAttentionReasoner(nn.Module):
    """One transformer layer over the local features (post-norm, FFN mult·d with GELU), then the run's pooling."""

    def __init__(self, dim: int, heads: int, dropout: float, ffn_mult: int, pool: str):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ffn_mult * dim, dropout=dropout,
                                                activation="gelu", batch_first=True)
        self.pool = pool

    def forward(self, f: torch.Tensor, local: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(local.shape[:2], dtype=torch.bool, device=local.device)
        return pool_tokens(self.layer(local, src_key_padding_mask=~mask), mask, self.pool)


def build_reasoner(s: StudentParams, dim: int, views: int) -> nn.Module | None:
    if s.reasoner == "view_queries":
        return ViewQueryReasoner(dim, views, s.mhaf_heads, s.mhaf_dropout, build_fusion(s, dim))
    if s.reasoner == "self_attention":
        return SelfAttentionReasoner(dim, s.mhaf_heads, s.mhaf_dropout, s.mhaf_ffn_mult, s.pool)
    return None


class LCR2S(LCR2SBase):
    output = "reasoned"

    def __init__(self, params: LCR2SRunParams, vocab_size: int, num_classes: int, tokenizer=None,
                 teacher: nn.Module | None = None):
        """`teacher`: a frozen teacher to distil from (tests, benchmarks); default: the finished run of
        ``lcr2s.teacher_row``, loaded only when a distillation weight is above 0."""
        super().__init__(params, num_classes)
        s = self.p
        views = params.data.support_images  # K imagined views for K real supports
        self.reason_image = build_reasoner(s, self.dim, views)
        self.reason_text = build_reasoner(s, self.dim, views)
        self.distils = s.lambda_f > 0 or s.lambda_r > 0
        if self.distils:
            if teacher is None:
                run = Path(params.reads["lcr2s_teacher"]) / s.teacher_row
                teacher = load_teacher(run, num_classes, params.model.text_model)
            if teacher.dim != self.dim:
                raise ValueError(f"lcr2s: the teacher's feature width ({teacher.dim}) differs from the student's "
                                 f"({self.dim}); feature distillation needs the same d")
            self.teacher = teacher.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.distils:
            self.teacher.eval()  # fixed targets: BatchNorm statistics and dropout of the teacher never change
        return self

    def _reason(self, reasoner, f: torch.Tensor, local: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return f if reasoner is None else reasoner(f, local, mask)

    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """"global" (pooled f) and "reasoned" (f̃, the test feature), both B × d."""
        f, regions = self.image_local(images)
        return {"global": f, "reasoned": self._reason(self.reason_image, f, regions, None)}

    def encode_texts(self, text: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        f, tokens, mask = self.text_local(text["ids"], text["mask"])
        return {"global": f, "reasoned": self._reason(self.reason_text, f, tokens, mask)}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Base loss on f̃ (gathered over ranks), feature KD per sample (a local mean, like an ID loss), relation KD on
        the gathered batch (docs/lcr2s.md §3.2)."""
        s = self.p
        img = self.encode_images(batch["image"])["reasoned"]
        txt = self.encode_texts(batch)["reasoned"]
        weak = None
        if s.base_loss == "id_cr":  # the weak caption: each sample's first support caption, through the student
            support = text_input(batch, "support_")
            k = len(support["ids"]) // len(img)
            weak = self.encode_texts({"ids": support["ids"][::k], "mask": support["mask"][::k]})["reasoned"]
        terms = self.base_terms(img, txt, batch["label"], weak)
        if self.distils:
            with torch.no_grad():
                target = self.teacher.enriched(batch)
            if s.lambda_f:
                terms["kd_feature"] = s.lambda_f * (
                    feature_kd_loss(img, target["image"], normalise=s.kd_normalise) +
                    feature_kd_loss(txt, target["text"], normalise=s.kd_normalise))
            if s.lambda_r:
                terms["kd_relation"] = s.lambda_r * relation_kd_loss(
                    gather_with_grad(img), gather_with_grad(txt), gather_with_grad(target["image"]),
                    gather_with_grad(target["text"]), relation=s.relation, temperature=s.relation_temperature)
        terms["loss"] = sum(terms.values())
        return terms


METHOD = Method("lcr2s", params=LCR2SRunParams, model=LCR2S, reads=("lcr2s_teacher",))


# ---------------------------------------------------------------------------------------------------- analysis helpers

# SimPEDES attributes that one view shows and another hides, from the generator's atlas layout
# (tireid_core/data/simpedes/atlas.py and body.py): a ponytail is painted on the back of the head and torso only, so
# a front image shows the same hair as short hair; a logo is painted on the torso's front only.
VIEW_SPECIFIC_ATTRIBUTES = {
    "ponytail": {"attribute": "hair_style", "value": "ponytail", "shown_by": "back", "hidden_from": "front"},
    "logo": {"attribute": "upper_pattern", "value": "logo", "shown_by": "front", "hidden_from": "back"},
}


def image_ground_truth(root: str | Path, evalset) -> list[dict]:
    """Per gallery image of `evalset`: {"view", "attributes"} from SimPEDES's meta.json (the generator's ground
    truth: the image's view, its identity's attribute values)."""
    root = Path(root)
    meta = json.loads((root / "meta.json").read_text())
    attributes = {ident["id"]: ident["attributes"] for ident in meta["identities"]}
    by_path = {im["file_path"]: im for im in meta["images"]}
    out = []
    for path in evalset.image_paths:
        entry = by_path[Path(path).relative_to(root / "imgs").as_posix()]
        out.append({"view": entry["view"], "attributes": attributes[entry["id"]]})
    return out


def view_probe(train_feats: torch.Tensor, train_truth: list[dict], test_feats: torch.Tensor, test_truth: list[dict],
               name: str, view: str, seed: int = 0) -> dict:
    """A linear probe for the binary attribute `name` of VIEW_SPECIFIC_ATTRIBUTES, fitted on the training split's
    images of `view` and scored on the test split's images of `view` (unseen identities).

    Features are L2-normalised, then standardised; logistic regression with balanced class weights and C = 1 (fixed
    in advance, nothing tuned on test). Returns {"labels", "scores"} of the test images (for `stats` intervals) and
    the counts. With `view` = the attribute's hidden_from view, a score above chance means the feature carries an
    attribute its own pixels do not show (inferred from correlated attributes, or imagined from other views).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    spec = VIEW_SPECIFIC_ATTRIBUTES[name]

    def subset(feats, truth):
        rows = [i for i, t in enumerate(truth) if t["view"] == view]
        x = torch.nn.functional.normalize(feats[rows].float(), dim=1).numpy()
        y = [int(truth[i]["attributes"][spec["attribute"]] == spec["value"]) for i in rows]
        return x, y

    x_train, y_train = subset(train_feats, train_truth)
    x_test, y_test = subset(test_feats, test_truth)
    if len(set(y_train)) < 2 or len(set(y_test)) < 2:
        raise ValueError(f"probe {name!r} on {view} images needs both classes in train and test "
                         f"(train positives {sum(y_train)}/{len(y_train)}, test {sum(y_test)}/{len(y_test)})")
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000, random_state=seed)
    probe.fit(scaler.transform(x_train), y_train)
    scores = probe.decision_function(scaler.transform(x_test))
    return {"labels": y_test, "scores": scores.tolist(), "n_train": len(y_train), "n_test": len(y_test),
            "test_positives": sum(y_test)}


def reconstruction_choices(teacher: RunParams, student: RunParams):
    """The reconstructed choices (docs/lcr2s.md §9) with the values a teacher run and a student run used: a table the
    notebooks print as "our choice" (none of them comes from LCR²S's paper or code)."""
    import pandas as pd

    t, s, d = teacher.lcr2s, student.lcr2s, student.data
    rows = [
        ("image encoder", "ResNet, global max or avg pool over the last map's regions", f"{teacher.model.image_backbone}, pool {t.pool}"),
        ("text encoder", "BERT (frozen or fine-tuned) + TIPCB's TextCNN", f"BERT frozen: {t.bert_frozen}, TextCNN {t.text_cnn}, {t.text_cnn_blocks} blocks"),
        ("feature width d", "backbone channels (no projection) or a Linear to lcr2s.dim after pooling",
         f"{t.dim or t.text_cnn[1]} (projection: {bool(t.dim)})"),
        ("support size K", "images and captions per sample", f"teacher {teacher.data.support_images}, student {d.support_images}"),
        ("support draw", "whole training set by identity; captions of other images; with replacement when short",
         f"data.support_policy {teacher.data.support_policy}, drawn per sample and epoch"),
        ("empty support pool", "self_aug | duplicate | skip", t.empty_support),
        ("fusion", "MHAF (h heads, FFN mult·d, GELU, 2 × residual + LayerNorm) or mean",
         f"{t.fusion}, {t.mhaf_heads} heads, FFN ×{t.mhaf_ffn_mult}, dropout {t.mhaf_dropout}, shared: {t.share_mhaf}"),
        ("base loss", "cmpm (targets l1 | l2, optional ID term) | id_cr", f"teacher {t.base_loss}, student {s.base_loss}"
         + (f"; CMPM targets {t.cmpm_q_norm}, ID term weight teacher {t.cmpm_id_weight:g}, student "
            f"{s.cmpm_id_weight:g}" if "cmpm" in (t.base_loss, s.base_loss) else "")),
        ("teacher's extra single-view loss", "on or off", t.teacher_single_view_loss),
        ("student reasoner", "view_queries | self_attention | none", s.reasoner),
        ("distillation weights", "λ_f, λ_r", f"λ_f {s.lambda_f:g}, λ_r {s.lambda_r:g}"),
        ("feature KD", "MSE on L2-normalised features (summed over d, mean over samples) or raw", f"normalised: {s.kd_normalise}"),
        ("relation matrix", "cosine, or softmax of cosine / T; (1/B²)‖R^S − R^T‖²_F", f"{s.relation}" + (f", T {s.relation_temperature:g}" if s.relation == "softmax_t" else "")),
        ("teacher in stage 2", "eval mode, no gradient, supports drawn for each student batch", "always (not a parameter)"),
        ("student initialisation", "pretrained backbones, not the teacher's weights", "always (not a parameter)"),
        ("teacher row distilled", "a row of lcr2s_teacher_rows", s.teacher_row),
    ]
    return pd.DataFrame(rows, columns=["our choice", "options", "this run"]).set_index("our choice")
