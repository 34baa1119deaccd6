"""LCR²S, stage 1: the "richer self" teacher (Yan et al., ACM MM 2023), readable top to bottom.

Documentation: docs/lcr2s.md. No official code exists and the paper body was not available, so everything here is
the project's reconstruction; every choice is a parameter (section ``lcr2s`` of the method's params, §9 of the docs).

Encoders (shared with the student, `tireid_core.models.lcr2s`, which imports them from here):
- image: ResNet → last map (12×4 = 48 region vectors at 384×128) → global max (or mean) pool;
- text: BERT (frozen by default) → TextCNN, TIPCB's text head (1×1 conv + BN + ReLU, then residual bottleneck blocks
  with 1×3 convolutions along the tokens) → global max over the real tokens.
Teacher: each training image is fused with K other images of its identity, each caption with K captions of other
images of its identity (the support sets drawn from the whole training set by `tireid_core.data.pairs.PairDataset`),
by multi-head attentional fusion (MHAF): the sample queries [sample; supports], residual + LayerNorm, FFN,
residual + LayerNorm. One MHAF per modality. Loss: the base loss (CMPM, or ID + compound ranking) on the fused pair.
The fused features are the student's distillation targets. At test time a teacher needs identity labels to build
support sets, so `teacher_oracle_scores` is an explicitly named *oracle* diagnostic; the run's own "final" score is
the teacher applied to a single input (MHAF over the sample alone), which needs no labels.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from tireid_core.data.pairs import draw_supports, sample_generator
from tireid_core.distributed import gather_with_grad
from tireid_core.io import load_checkpoint, load_model_state
from tireid_core.losses import cmpm_loss, compound_ranking_loss, id_loss
from tireid_core.methods import Method, MethodModel
from tireid_core.metrics import cosine_similarity
from tireid_core.models.backbones import create_backbone
from tireid_core.models.text_encoders import create_bert, pool_tokens
from tireid_core.params import ParamsError, RunParams, from_dict, read_yaml


@dataclass
class LCR2SParams:
    """What teacher and student share (section ``lcr2s``); all reconstruction (docs/lcr2s.md §9).

    The support size K is the core's support-set size: ``data.support_images`` = ``data.support_captions`` = K, drawn
    with ``data.support_policy: duplicate`` (K other images without replacement while they last, then with
    replacement); `empty_support` says what an identity with no other image gets.
    """

    pool: Literal["max", "avg"] = "max"  # global feature from the regions / real tokens (TIPCB: max)
    bert_frozen: bool = True  # TIPCB: BERT in eval mode without gradients; only the TextCNN trains
    text_cnn: list[int] = field(default_factory=lambda: [1024, 2048])  # 1×1 conv width, then the blocks' width
    text_cnn_blocks: int = 3  # residual 1×3 bottleneck blocks (width = blocks' width / 4), as TIPCB's branch
    dim: int = 0  # 0: no projection, d = the backbone's channels (must equal text_cnn[1]); > 0: Linear to dim
    fusion: Literal["mhaf", "mean"] = "mhaf"  # mean: the parameter-free ablation
    mhaf_heads: int = 8
    mhaf_dropout: float = 0.1  # attention weights and both residual branches
    mhaf_ffn_mult: int = 2  # FFN d → mult·d → d, GELU
    share_mhaf: bool = False  # one MHAF for both modalities instead of one each
    # an identity without another image: "self_aug" its support is the sample under a second random augmentation
    # (the data's own fallback), "duplicate" the identical sample, "skip" masked out of MHAF and of the base loss
    empty_support: Literal["self_aug", "duplicate", "skip"] = "self_aug"
    base_loss: Literal["cmpm", "id_cr"] = "cmpm"  # TIPCB lineage (CMPM) or SSAN/MANet (ID + compound ranking)
    cmpm_q_norm: Literal["l1", "l2"] = "l1"  # CMPM's identity targets: l1 (the CMPM paper); TIPCB's code uses l2
    # Not in TIPCB or the spec: an ID loss (one classifier shared by both modalities) added to CMPM, as the baseline
    # has. 0 = CMPM alone; > 0 is a demo stand-in for what long training on pretrained weights gives (docs §10).
    cmpm_id_weight: float = 0.0
    id_weight: float = 1.0  # id_cr: ID loss with one classifier shared by both modalities
    cr_margin: float = 0.2  # id_cr: compound ranking loss α1
    cr_beta: float = 0.1  # id_cr: weight of its weak term (the weak caption: the first support caption)
    cr_alpha2_start_epoch: int = 5  # id_cr: adaptive α2 from this (0-based) epoch on, as SSAN


@dataclass
class TeacherParams(LCR2SParams):
    teacher_single_view_loss: bool = False  # also the base loss on the un-fused (single-view) features


def check_lcr2s(params: RunParams, key: str, needs_supports: bool) -> None:
    """Checks shared by teacher and student (`key` = the section name)."""
    p, d = params.lcr2s, params.data
    if params.model.text_encoder != "bert":
        raise ParamsError(f"{key}.model.text_encoder: LCR²S uses BERT + TextCNN, got {params.model.text_encoder!r}")
    if len(p.text_cnn) != 2 or min(p.text_cnn) <= 0 or p.text_cnn[1] % 4:
        raise ParamsError(f"{key}.lcr2s.text_cnn: two positive widths [1×1 conv, blocks], the second divisible by 4 "
                          f"(the bottleneck width), got {p.text_cnn!r}")
    for name in ("text_cnn_blocks", "mhaf_heads", "mhaf_ffn_mult"):
        if getattr(p, name) <= 0:
            raise ParamsError(f"{key}.lcr2s.{name}: must be positive, got {getattr(p, name)!r}")
    if p.dim < 0 or (p.dim or p.text_cnn[1]) % p.mhaf_heads:
        raise ParamsError(f"{key}.lcr2s.dim: the feature width ({p.dim or p.text_cnn[1]}) must be divisible by "
                          f"lcr2s.mhaf_heads ({p.mhaf_heads}); dim 0 means no projection")
    if not 0.0 <= p.mhaf_dropout < 1.0:
        raise ParamsError(f"{key}.lcr2s.mhaf_dropout: must be in [0, 1), got {p.mhaf_dropout!r}")
    for name in ("id_weight", "cr_margin", "cr_beta", "cmpm_id_weight"):
        if getattr(p, name) < 0:
            raise ParamsError(f"{key}.lcr2s.{name}: must be >= 0, got {getattr(p, name)!r}")
    if d.support_images != d.support_captions:
        raise ParamsError(f"{key}.data.support_captions: K captions and K images per sample, so it must equal "
                          f"data.support_images ({d.support_images}), got {d.support_captions}")
    if needs_supports and d.support_images < 1:
        raise ParamsError(f"{key}.data.support_images: the support size K must be at least 1, got {d.support_images}")
    if d.support_images and d.support_policy != "duplicate":
        raise ParamsError(f"{key}.data.support_policy: LCR²S draws with replacement when an identity has fewer than K "
                          f"other images (lcr2s.empty_support decides what an identity with none gets), so it must be "
                          f"'duplicate', got {d.support_policy!r}")


@dataclass
class LCR2STeacherRunParams(RunParams):
    lcr2s: TeacherParams = field(default_factory=TeacherParams)

    def check(self, key: str) -> None:
        check_lcr2s(self, key, needs_supports=True)


# ---------------------------------------------------------------------------------------------------- text head


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the real tokens only (B × L × C with a B × L mask): statistics never see padding, and padding
    stays exactly zero, so a caption's features do not depend on how much padding its batch has."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        normed = super().forward(x[mask])
        out = normed.new_zeros(*mask.shape, normed.shape[-1])
        out[mask] = normed
        return out


class TextBottleneck(nn.Module):
    """TIPCB's residual bottleneck on a token sequence: 1×1 reduce → 1×3 conv along the tokens → 1×1 expand, each with
    BN; ReLU after the residual sum (a 1×1 projection + BN on the shortcut when the width changes)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        width = d_out // 4
        self.reduce, self.bn1 = nn.Linear(d_in, width, bias=False), TokenBatchNorm(width)
        self.conv, self.bn2 = nn.Conv1d(width, width, 3, padding=1, bias=False), TokenBatchNorm(width)
        self.expand, self.bn3 = nn.Linear(width, d_out, bias=False), TokenBatchNorm(d_out)
        self.shortcut = nn.Linear(d_in, d_out, bias=False) if d_in != d_out else None
        self.bn_shortcut = TokenBatchNorm(d_out) if d_in != d_out else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.reduce(x), mask))
        h = F.relu(self.bn2(self.conv(h.transpose(1, 2)).transpose(1, 2), mask))  # padding is 0: zero-padded conv
        h = self.bn3(self.expand(h), mask)
        skip = x if self.shortcut is None else self.bn_shortcut(self.shortcut(x), mask)
        return F.relu(h + skip)


class TextCNN(nn.Module):
    """TIPCB's text head over BERT's tokens (one branch, as LCR²S's global text feature needs): 1×1 conv d_in→mid + BN
    + ReLU, then `blocks` bottlenecks to `out` channels. B × L × d_in → B × L × out, zero at padding."""

    def __init__(self, d_in: int, mid: int, out: int, blocks: int):
        super().__init__()
        self.stem, self.bn = nn.Linear(d_in, mid, bias=False), TokenBatchNorm(mid)
        self.blocks = nn.ModuleList([TextBottleneck(mid, out)] + [TextBottleneck(out, out) for _ in range(blocks - 1)])
        for m in self.modules():  # TIPCB's init: Kaiming (fan_out) convolutions, BN weight 1 and bias 0
            if isinstance(m, (nn.Linear, nn.Conv1d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(tokens), mask))
        for block in self.blocks:
            x = block(x, mask)
        return x


# ---------------------------------------------------------------------------------------------------- fusion


class MHAF(nn.Module):
    """Multi-head attentional fusion: the sample x queries X = [x; s_1..s_K] (h heads), residual + LayerNorm, FFN
    (d → mult·d → d, GELU), residual + LayerNorm. The sample is part of X, so the fused feature keeps its own
    evidence, and with no supports (K = 0, or all masked) it attends to itself only."""

    def __init__(self, dim: int, heads: int, dropout: float, ffn_mult: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_mult * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, supports: torch.Tensor,
                ignore: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: B × d, supports: B × K × d, ignore: B × K (True = leave that support out). Returns the fused B × d and
        the attention of x over [x; s_1..s_K] (B × (K+1), averaged over heads)."""
        keys = torch.cat([x[:, None], supports], 1)
        mask = None if ignore is None else torch.cat([ignore.new_zeros(len(x), 1), ignore.bool()], 1)
        attended, weights = self.attention(x[:, None], keys, keys, key_padding_mask=mask, need_weights=True)
        h = self.norm1(x + self.dropout(attended[:, 0]))
        return self.norm2(h + self.dropout(self.ffn(h))), weights[:, 0]


class MeanFusion(nn.Module):
    """The fusion ablation: the plain mean of [x; s_1..s_K] (left-out supports excluded), no parameters."""

    def forward(self, x: torch.Tensor, supports: torch.Tensor,
                ignore: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        keys = torch.cat([x[:, None], supports], 1)
        keep = torch.ones(keys.shape[:2], dtype=keys.dtype, device=keys.device)
        if ignore is not None:
            keep[:, 1:] = (~ignore.bool()).to(keys.dtype)
        weights = keep / keep.sum(1, keepdim=True)
        return (weights[..., None] * keys).sum(1), weights


def build_fusion(p: LCR2SParams, dim: int) -> nn.Module:
    return MHAF(dim, p.mhaf_heads, p.mhaf_dropout, p.mhaf_ffn_mult) if p.fusion == "mhaf" else MeanFusion()


# ---------------------------------------------------------------------------------------------------- shared model


def stack_texts(texts: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate tokenised caption batches ({"ids", "mask"}, possibly of different widths) into one batch."""
    width = max(t["ids"].shape[1] for t in texts)
    ids = torch.cat([F.pad(t["ids"], (0, width - t["ids"].shape[1])) for t in texts])
    mask = torch.cat([F.pad(t["mask"].long(), (0, width - t["mask"].shape[1])) for t in texts])
    return ids, mask.bool()


class LCR2SBase(MethodModel):
    """What teacher and student share: the two encoders (regions and tokens, their pooled global features), the base
    loss, a frozen BERT that stays in eval mode, and the two scores ("global" and the model's own `output`)."""

    output = ""  # the feature the model ends with: "fused" (teacher) or "reasoned" (student)

    def __init__(self, params: RunParams, num_classes: int):
        super().__init__()
        m, p = params.model, params.lcr2s
        self.p = p
        self.mining = torch.Generator()  # compound ranking loss: reseeded every epoch by start_epoch
        widths = tuple(m.backbone_widths) if m.backbone_widths else None
        self.backbone = create_backbone(m.image_backbone, pretrained=m.pretrained, last_stride=m.last_stride,
                                        widths=widths)
        self.text_encoder = create_bert(m)
        if p.bert_frozen:
            self.text_encoder.requires_grad_(False)
        mid, out = p.text_cnn
        self.text_cnn = TextCNN(self.text_encoder.out_dim, mid, out, p.text_cnn_blocks)
        channels = self.backbone.channels["layer4"]
        if p.dim:
            self.image_proj, self.text_proj = nn.Linear(channels, p.dim), nn.Linear(out, p.dim)
        elif channels != out:
            raise ValueError(f"{params.method}.lcr2s.text_cnn[1] ({out}) must equal the image backbone's channels "
                             f"({channels}) without a projection (lcr2s.dim: 0)")
        self.dim = p.dim or channels
        if p.base_loss == "id_cr" or p.cmpm_id_weight:
            self.classifier = nn.Linear(self.dim, num_classes)  # shared by both modalities
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.p.bert_frozen:
            self.text_encoder.eval()  # no dropout in a frozen encoder
        return self

    def start_epoch(self, epoch: int) -> None:
        """Semi-hard mining (id_cr) draws from the model's own stream, seeded from the (just reseeded) global RNG, so
        every DDP rank mines the gathered batch alike."""
        super().start_epoch(epoch)
        self.mining = torch.Generator().manual_seed(int(torch.randint(2**62, ())))

    def image_local(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global B × d, regions B × HW × d): every cell of the last map is a region vector."""
        regions = self.backbone(images)["layer4"].flatten(2).transpose(1, 2)
        pooled = regions.amax(1) if self.p.pool == "max" else regions.mean(1)
        if self.p.dim:
            return self.image_proj(pooled), self.image_proj(regions)
        return pooled, regions

    def text_local(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(global B × d, tokens B × L × d, mask): TextCNN over BERT's tokens (BERT without gradients when frozen)."""
        mask = mask.bool()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.p.bert_frozen):
            words = self.text_encoder(ids, mask)
        tokens = self.text_cnn(words * mask[..., None].to(words.dtype), mask)
        pooled = pool_tokens(tokens, mask, self.p.pool)
        if self.p.dim:
            return self.text_proj(pooled), self.text_proj(tokens) * mask[..., None].to(tokens.dtype), mask
        return pooled, tokens, mask

    def base_terms(self, img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, weak: torch.Tensor | None = None,
                   keep: torch.Tensor | None = None, prefix: str = "") -> dict[str, torch.Tensor]:
        """The base loss on a pair of feature batches, computed on the batch gathered over DDP ranks (the ID term
        too, so `keep`, the anchors that count, selects the same rows on every rank)."""
        p = self.p
        img, txt, labels = gather_with_grad(img), gather_with_grad(txt), gather_with_grad(labels)
        weak = gather_with_grad(weak) if weak is not None else None
        if keep is not None:
            keep = gather_with_grad(keep)
            img, txt, labels = img[keep], txt[keep], labels[keep]
            weak = weak[keep] if weak is not None else None
            if len(labels) < 2:  # nothing to match: zeros that keep the graph, under the usual names
                zero = (img.sum() + txt.sum()) * 0.0
                names = ("cmpm", *(("id",) if p.cmpm_id_weight else ())) if p.base_loss == "cmpm" else ("id", "cr")
                return {f"{prefix}{name}": zero for name in names}
        if p.base_loss == "cmpm":
            terms = {f"{prefix}cmpm": cmpm_loss(img, txt, labels, q_norm=p.cmpm_q_norm)}
            if p.cmpm_id_weight:
                terms[f"{prefix}id"] = p.cmpm_id_weight * self._id_terms(img, txt, labels)
            return terms
        return {f"{prefix}id": p.id_weight * self._id_terms(img, txt, labels),
                f"{prefix}cr": compound_ranking_loss(img, txt, weak, labels, epoch=self.epoch, alpha1=p.cr_margin,
                                                     beta=p.cr_beta, alpha2_start_epoch=p.cr_alpha2_start_epoch,
                                                     generator=self.mining)}

    def _id_terms(self, img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return id_loss(self.classifier(img), labels) + id_loss(self.classifier(txt), labels)

    def similarities(self, image_feats: dict, text_feats: dict) -> dict[str, torch.Tensor]:
        """Cosine of the pooled single-view features ("global") and of the model's output features ("final")."""
        return {"global": cosine_similarity(text_feats["global"], image_feats["global"]),
                "final": cosine_similarity(text_feats[self.output], image_feats[self.output])}


# ---------------------------------------------------------------------------------------------------- the teacher


class LCR2STeacher(LCR2SBase):
    output = "fused"

    def __init__(self, params: LCR2STeacherRunParams, vocab_size: int, num_classes: int, tokenizer=None):
        super().__init__(params, num_classes)
        self.fuse_image = build_fusion(self.p, self.dim)
        self.fuse_text = self.fuse_image if self.p.share_mhaf else build_fusion(self.p, self.dim)

    def _alone(self, fusion: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return fusion(x, x[:, None][:, :0])[0]

    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Single input, no labels: "global" (the pooled feature, what an oracle fuses) and "fused" (MHAF over the
        sample alone: the teacher as a single-input model)."""
        x = self.image_local(images)[0]
        return {"global": x, "fused": self._alone(self.fuse_image, x)}

    def encode_texts(self, text: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.text_local(text["ids"], text["mask"])[0]
        return {"global": x, "fused": self._alone(self.fuse_text, x)}

    def enriched(self, batch: dict, weak: bool = False) -> dict[str, torch.Tensor]:
        """The fused ("richer self") features of a training batch with its support sets, and what they came from.

        One encoder pass per modality over the B samples and their B·K supports. Returns "image", "text" (fused,
        B × d), "image_single", "text_single" (un-fused), "image_weights", "text_weights" (attention on [sample;
        supports]), "keep" (anchors with a support pool; all True unless empty_support is "skip") and, with `weak`,
        "weak" (the first support caption fused with the others and the sample's caption: id_cr's weak caption).
        """
        images, supports = batch["image"], batch["support_images"]
        b, k = supports.shape[:2]
        image_self, text_self = batch["support_images_self"].bool(), batch["support_captions_self"].bool()
        if self.p.empty_support == "duplicate":  # the identical sample, not a second augmentation of it
            supports = torch.where(image_self[..., None, None, None], images[:, None], supports)
        stacked = torch.cat([images, supports.flatten(0, 1)])
        if images.is_contiguous(memory_format=torch.channels_last):
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        img = self.image_local(stacked)[0]
        ids, mask = stack_texts([{"ids": batch["ids"], "mask": batch["mask"]},
                                 {"ids": batch["support_ids"], "mask": batch["support_mask"]}])
        txt = self.text_local(ids, mask)[0]
        x_img, s_img = img[:b], img[b:].reshape(b, k, -1)
        x_txt, s_txt = txt[:b], txt[b:].reshape(b, k, -1)
        skip = self.p.empty_support == "skip"
        fused_img, w_img = self.fuse_image(x_img, s_img, image_self if skip else None)
        fused_txt, w_txt = self.fuse_text(x_txt, s_txt, text_self if skip else None)
        out = {"image": fused_img, "text": fused_txt, "image_single": x_img, "text_single": x_txt,
               "image_weights": w_img, "text_weights": w_txt,
               "keep": ~(image_self.any(1) | text_self.any(1)) if skip else torch.ones_like(image_self[:, 0])}
        if weak:
            others = torch.cat([x_txt[:, None], s_txt[:, 1:]], 1)
            out["weak"] = self.fuse_text(s_txt[:, 0], others, None)[0]
            out["weak_single"] = s_txt[:, 0]
        return out

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """L_T = L_base(x̃_img, x̃_txt) on the fused pair (+ L_base on the single-view pair when asked)."""
        e = self.enriched(batch, weak=self.p.base_loss == "id_cr")
        keep = e["keep"] if self.p.empty_support == "skip" else None
        terms = self.base_terms(e["image"], e["text"], batch["label"], e.get("weak"), keep)
        if self.p.teacher_single_view_loss:
            terms.update(self.base_terms(e["image_single"], e["text_single"], batch["label"], e.get("weak_single"),
                                         keep, prefix="single_"))
        terms["loss"] = sum(terms.values())
        return terms


METHOD = Method("lcr2s_teacher", params=LCR2STeacherRunParams, model=LCR2STeacher)


# ---------------------------------------------------------------------------------------------------- loading


def load_teacher(run_dir: str | Path, num_classes: int, text_model: str) -> LCR2STeacher:
    """The selected checkpoint of a finished teacher run, frozen (eval mode, no gradients).

    The architecture comes from the run's params.resolved.yaml; the BERT folder or hub name from `text_model` (the
    student's: both read the student's tokenised batches), and no pretrained weights are loaded: the checkpoint holds
    them all.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        raise FileNotFoundError(
            f"{run_dir}: no finished LCR²S teacher run. The student distils from it: train it first with "
            f"`python -m tireid_core.train lcr2s_teacher --row {run_dir.name}` (DVC stage "
            f"train_lcr2s_teacher@{run_dir.name}), or point lcr2s.lcr2s.teacher_row at another row")
    params = from_dict(LCR2STeacherRunParams, read_yaml(run_dir / "params.resolved.yaml"), "lcr2s_teacher")
    params.model.pretrained, params.model.text_pretrained, params.model.text_model = False, False, text_model
    teacher = LCR2STeacher(params, 0, num_classes)
    path = run_dir / "checkpoints" / "best.pt"
    load_model_state(teacher, load_checkpoint(path), path)
    return teacher.requires_grad_(False).eval()


# ---------------------------------------------------------------------------------------------------- analysis helpers


def support_indices(pids: list[int], groups: list[int], k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """K supports per item of an evaluation split, drawn as training draws them: other items of the same identity
    from *other* groups (images: each image is its own group; captions: the caption's image), without replacement
    while they last, then with replacement (`draw_supports`, policy duplicate, one seeded stream per item). Returns
    (indices N × K, is_self N × K): an item whose identity has no other group gets itself, flagged."""
    by_pid: dict[int, list[int]] = defaultdict(list)
    for i, pid in enumerate(pids):
        by_pid[pid].append(i)
    index, flags = [], []
    for i, pid in enumerate(pids):
        candidates = [j for j in by_pid[pid] if groups[j] != groups[i]]
        picks = draw_supports(candidates, k, "duplicate", sample_generator(seed, 0, i))
        index.append([i if j is None else j for j in picks])
        flags.append([j is None for j in picks])
    return torch.tensor(index, dtype=torch.long).reshape(len(pids), k), torch.tensor(flags).reshape(len(pids), k)


@torch.no_grad()
def fuse_with_supports(fusion: nn.Module, feats: torch.Tensor, index: torch.Tensor, is_self: torch.Tensor,
                       skip: bool, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(fused N × d, attention N × (K+1)): every row of `feats` (pre-fusion "global" features) fused with the rows
    `index` names, in chunks; `skip` masks the self-fallback supports out, as empty_support: skip does in training."""
    device = next(iter(fusion.parameters()), feats).device
    fused, weights = [], []
    for start in range(0, len(feats), chunk):
        rows = slice(start, start + chunk)
        x = feats[rows].to(device)
        f, w = fusion(x, feats[index[rows]].to(device), is_self[rows].to(device) if skip else None)
        fused.append(f.cpu())
        weights.append(w.cpu())
    return torch.cat(fused), torch.cat(weights)


def teacher_oracle_features(model: LCR2STeacher, gallery: dict, queries: dict, evalset, k: int,
                            seed: int = 0) -> tuple[dict, dict]:
    """ORACLE: the teacher's fused features of an evaluation split whose support sets are built from that split's
    identity labels (every image with K other images of its identity, every caption with K captions of other images
    of its identity). Test labels are what retrieval must find, so these features are an upper-bound diagnostic of
    what the richer self knows, never a result. `gallery` / `queries`: the run's saved single-input features."""
    skip = model.p.empty_support == "skip"
    image_index, image_self = support_indices(evalset.image_pids, list(range(len(evalset.image_pids))), k, seed)
    text_index, text_self = support_indices(evalset.caption_pids, evalset.caption_image, k, seed)
    was_training = model.training
    model.eval()
    fused_img, w_img = fuse_with_supports(model.fuse_image, gallery["global"], image_index, image_self, skip)
    fused_txt, w_txt = fuse_with_supports(model.fuse_text, queries["global"], text_index, text_self, skip)
    model.train(was_training)
    return {"oracle": fused_img, "weights": w_img}, {"oracle": fused_txt, "weights": w_txt}


def teacher_oracle_scores(model: LCR2STeacher, gallery: dict, queries: dict, evalset, k: int,
                          seed: int = 0) -> torch.Tensor:
    """ORACLE score matrix (texts × images) of `teacher_oracle_features`: uses the split's identity labels."""
    g, q = teacher_oracle_features(model, gallery, queries, evalset, k, seed)
    return cosine_similarity(q["oracle"], g["oracle"])


def teacher_oracle_metrics(exp, gallery: dict, queries: dict, k: int, seed: int = 0) -> dict:
    """ORACLE test metrics of a teacher run's selected model (`exp` from `FinishedRun.experiment()`, features from
    `FinishedRun.features()`) with K supports per test item built from the test identity labels: R@1/5/10, mAP, mINP
    and the 95 % bootstrap intervals of R@1 and mAP, plus "per_query" (for paired comparisons). Never a result."""
    from tireid_core.evaluation import bootstrap_ci95, score_metrics, summary

    scores = teacher_oracle_scores(exp.model, gallery, queries, exp.test_set, k, seed)
    metrics = score_metrics(exp, exp.test_set, {"oracle": scores}, per_query_for="oracle")["oracle"]
    per_query = metrics.pop("per_query")
    ci = bootstrap_ci95(per_query)
    return {**summary(metrics), "R@1 95% CI": "–".join(f"{v:.1f}" for v in ci["R@1"]),
            "mAP 95% CI": "–".join(f"{v:.1f}" for v in ci["mAP"]), "per_query": per_query}


def support_set_figure(train_set, index: int, k_shown: int | None = None):
    """One training sample (left) and the support sets it is fused with this epoch: its K support images, and its own
    caption above the K support captions (`PairDataset.support_picks`, the draw training uses)."""
    import textwrap

    import matplotlib.pyplot as plt

    from tireid_core.data.datasets import read_image

    caption_picks, image_picks = train_set.support_picks(index)
    sample = train_set.pairs[index]
    images = [sample] + [train_set.pairs[j] if j is not None else sample for j in image_picks[:k_shown]]
    fig, axes = plt.subplots(1, len(images) + 1, figsize=(1.6 * len(images) + 5.5, 3.2),
                             gridspec_kw={"width_ratios": [1] * len(images) + [3.5]})
    for ax, pair, title in zip(axes, images, ["sample"] + [f"support {i + 1}" for i in range(len(images) - 1)]):
        ax.imshow(read_image(pair.path))
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    lines = [f"sample: {sample.caption}"] + [
        f"support {i + 1}: {(train_set.pairs[j] if j is not None else sample).caption}"
        for i, j in enumerate(caption_picks)]
    axes[-1].axis("off")
    axes[-1].text(0, 1, "\n\n".join("\n".join(textwrap.wrap(t, 60)) for t in lines), fontsize=7, va="top")
    fig.suptitle(f"identity {sample.pid}: a training sample and its support sets", fontsize=9)
    fig.tight_layout()
    return fig
