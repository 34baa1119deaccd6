"""NAFS — contextual non-local alignment over full-scale representations (Gao et al., 2021), top to bottom.

Documentation: docs/nafs.md. Both modalities become one *set of units* spanning several scales:
- image (§2.1): a staircase ResNet — the global branch, a branch that cuts layer2's map into `part2` stripes, shuffles
  them, runs its own layer3/layer4 copies and un-shuffles, and a branch doing the same with `part3` stripes of the
  global branch's layer3 map through its own layer4 copy. Units: [global, part2 stripes, part3 stripes];
- text (§2.2): the [CLS] output (projected, the global feature t), one [CLS] feature per sub-sentence (locality:
  separate encoder passes per sub-sentence, as the code; or one pass with block attention, as Fig. 2), and every word;
- contextual non-local attention (§2.3, `nafs_scoring.cnl_scores`): every image unit attends over all text units of
  all scales at once; S_loc = mean over image units of cos(value, attended text).
Loss (§3): CMPM + CMPC on the global pair + 0.1 · CONT (KL matching on the batch's S_loc). Test score (§5):
S_glob + S_loc, then re-ranking by visual neighbours (RVN) reported as its own row.

Ablation switches: `nafs.scales` (global / single / full), `nafs.locality` (none = no sub-sentence units) and
`nafs.alignment` (per_scale: global↔global, coarse stripes↔sub-sentences, fine stripes↔words, each its own attention).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from tireid_core.data.pairs import text_input
from tireid_core.distributed import gather_with_grad
from tireid_core.losses import cmpc_loss, cmpm_loss, id_loss, local_matching_loss
from tireid_core.methods import Method, MethodModel, TextNeeds
from tireid_core.metrics import cosine_similarity
from tireid_core.models.backbones import Backbone, create_backbone
from tireid_core.models.nafs_scoring import cnl_scores, cnl_weights, l2_normalize, rvn_rerank, visual_similarity
from tireid_core.models.text_encoders import create_bert, create_text_encoder
from tireid_core.params import ParamsError, RunParams


@dataclass
class NAFSParams:
    """NAFS switches (docs/nafs.md). Defaults follow the paper where it speaks, else the official code (§7)."""

    scales: Literal["global", "single", "full"] = "full"  # global only; + branch-2 stripes; + branch-3 (staircase)
    part2: int = 3  # stripes of branch 2 (from layer2); paper Fig. 2 draws 2
    part3: int = 2  # stripes of branch 3 (from layer3); paper Fig. 2 draws 4
    shuffle: bool = True  # permute stripes during training (identity at test)
    n_sep: int = 2  # sub-sentence units per caption
    locality: Literal["separate_passes", "masked_single_pass", "none"] = "separate_passes"
    alignment: Literal["cnl", "per_scale"] = "cnl"  # one attention over all scales, or within scale pairs
    unit_norm: Literal["joint", "per_token"] = "joint"  # text key/value LayerNorm over the whole unit block (code)
    # Which text units CNL sees (docs/nafs.md §7): "intended" = the caption's wordpieces and its present sub-sentences
    # (zeroed elsewhere); "official" = the official code's block: [SEP] and one padding output count as words, the
    # LayerNorm sees a fixed block over every position, sub-sentences split and tokenised the official way.
    text_units: Literal["intended", "official"] = "intended"
    # > 0: BatchNorm statistics over groups of this many samples, as each GPU replica of the official DataParallel
    # runs saw (batch / GPUs); running statistics follow the first group, as DataParallel keeps replica 0's.
    bn_group_size: int = 0
    temperature: float = 20.0  # λ of the CNL softmax over text units
    leaky_slope: float = 0.1
    cont_weight: float = 0.1  # λ_cont of the local matching term
    cont_scale: float = 20.0  # the CONT softmax scale on S_loc
    cmpm_q_norm: Literal["l1", "l2"] = "l1"  # CMPM paper (l1) or official code (l2), for CMPM and CONT
    cmpc: bool = True
    # Not in NAFS: an ID loss on the global features (classifier shared by both modalities). The paper starts from
    # ImageNet/BERT weights; from random init CMPM + CMPC sit at the uniform-prediction plateau, so the CPU demo uses
    # this as its stand-in for pretrained features. 0 = the paper's loss.
    id_weight: float = 0.0
    rvn_mode: Literal["off", "intended", "official"] = "intended"
    rvn_k: int = 5
    rvn_weight: float = 1.0


@dataclass
class NAFSRunParams(RunParams):
    nafs: NAFSParams = field(default_factory=NAFSParams)

    def check(self, key: str) -> None:
        n = self.nafs
        for name in ("part2", "part3", "n_sep", "rvn_k"):
            if getattr(n, name) <= 0:
                raise ParamsError(f"{key}.nafs.{name}: must be positive, got {getattr(n, name)!r}")
        if n.bn_group_size < 0:
            raise ParamsError(f"{key}.nafs.bn_group_size: 0 (off) or a group size, got {n.bn_group_size!r}")
        if n.text_units == "official" and (n.locality != "separate_passes" or n.unit_norm != "joint"):
            raise ParamsError(f"{key}.nafs.text_units: official units come from separate passes with the joint "
                              f"LayerNorm (locality: separate_passes, unit_norm: joint), got {n.locality}, {n.unit_norm}")
        if n.alignment == "per_scale" and (n.scales != "full" or n.locality == "none"):
            raise ParamsError(f"{key}.nafs.alignment: per_scale pairs image scales with text scales and needs "
                              "scales: full and a locality mode other than none")
        if self.model.text_encoder not in ("transformer", "bert"):
            raise ParamsError(f"{key}.model.text_encoder: NAFS uses BERT or the small transformer, got "
                              f"{self.model.text_encoder!r}")


# ---------------------------------------------------------------------------------------------------- image side


def stripe_sizes(rows: int, parts: int) -> list[int]:
    """Rows per horizontal stripe: equal stripes, the last takes the remainder (docs/nafs.md §2.1)."""
    if rows < parts:
        raise ValueError(f"cannot cut a feature map of {rows} rows into {parts} stripes")
    base = rows // parts
    return [base] * (parts - 1) + [rows - base * (parts - 1)]


def shuffled_stripes(x: torch.Tensor, parts: int, layers: nn.Module, perm: torch.Tensor) -> list[torch.Tensor]:
    """Cut x into stripes, stack them in `perm` order, run `layers`, cut the output and undo the permutation.

    Convolutions see the borders between *shuffled* neighbours, so during training no stripe can lean on the content
    that really lies above or below it. Returns the output stripes in the original top-to-bottom order.
    """
    sizes = stripe_sizes(x.shape[2], parts)
    stripes = torch.split(x, sizes, dim=2)
    y = layers(torch.cat([stripes[i] for i in perm.tolist()], dim=2))
    if (y.shape[2] * sizes[0]) % x.shape[2] or any((s * y.shape[2]) % x.shape[2] for s in sizes):
        raise ValueError(f"stripes of {sizes} rows do not map onto whole rows of the {y.shape[2]}-row output")
    out_sizes = [s * y.shape[2] // x.shape[2] for s in sizes]
    out = torch.split(y, [out_sizes[i] for i in perm.tolist()], dim=2)
    inverse = torch.argsort(perm)
    return [out[i] for i in inverse.tolist()]


class Staircase(nn.Module):
    """SfeNet (docs/nafs.md §2.1) built from one backbone; branch copies start from the backbone's (pretrained) weights."""

    def __init__(self, backbone: Backbone, scales: str, part2: int, part3: int, shuffle: bool):
        super().__init__()
        self.backbone = backbone  # stem, layer1, layer2 shared; layer3 + layer4 are the global branch
        self.scales, self.part2, self.part3, self.shuffle = scales, part2, part3, shuffle
        self.shuffle_rng = torch.Generator()  # reseeded every epoch by NAFS.start_epoch
        if scales in ("single", "full"):
            self.branch2 = nn.Sequential(copy.deepcopy(backbone.layer3), copy.deepcopy(backbone.layer4))
        if scales == "full":
            self.branch3 = copy.deepcopy(backbone.layer4)

    @property
    def n_stripes(self) -> int:
        return {"global": 0, "single": self.part2, "full": self.part2 + self.part3}[self.scales]

    def _perm(self, parts: int, device) -> torch.Tensor:
        """A fresh permutation per training step, shared by the batch (and by every DDP rank: the stream is the model's
        own, so other random draws, whose number can depend on the local batch size, do not shift it); the identity
        at test time."""
        if self.training and self.shuffle:
            return torch.randperm(parts, generator=self.shuffle_rng).to(device)
        return torch.arange(parts, device=device)

    def draw_perms(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's stripe permutations of both branches, drawn up front (for a step run in several pieces)."""
        return self._perm(self.part2, device), self._perm(self.part3, device)

    def forward(self, images: torch.Tensor, perms: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(global B×C, stripes B×S×C), average-pooled; S = part2 (+ part3), top to bottom per branch. `perms`: the
        branches' stripe permutations (default: drawn here, one per branch)."""
        b = self.backbone
        x2 = b.layer2(b.layer1(b.stem(images)))
        x3 = b.layer3(x2)
        global_feat = b.layer4(x3).mean((2, 3))
        stripes = []
        if self.scales in ("single", "full"):
            perm = perms[0] if perms else self._perm(self.part2, images.device)
            stripes += shuffled_stripes(x2, self.part2, self.branch2, perm)
        if self.scales == "full":
            perm = perms[1] if perms else self._perm(self.part3, images.device)
            stripes += shuffled_stripes(x3, self.part3, self.branch3, perm)
        pooled = [s.mean((2, 3)) for s in stripes]
        return global_feat, torch.stack(pooled, 1) if pooled else global_feat.new_zeros(len(images), 0, global_feat.shape[1])


class NeckBN(nn.BatchNorm1d):
    """BatchNorm1d with its bias frozen at zero (BNNeck style, docs/nafs.md §2.1); a training batch of one uses the
    running statistics instead of failing (the official code crashes there, §7 item 11)."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=self.training and x.shape[0] > 1, momentum=self.momentum, eps=self.eps)


# ---------------------------------------------------------------------------------------------------- text side


def piece_sequences(ids: torch.Tensor, pieces: torch.Tensor, n_sep: int, cls_id: int, sep_id: int):
    """The sub-sentences as their own sequences "[CLS] piece [SEP]", n_sep·B rows (all captions' piece 0, then piece 1…).

    Tokens of piece k are taken from the full caption's tokenisation (the same wordpieces as tokenising the piece
    alone, since word-level tokenisers never join across punctuation). Returns ids, mask and `present` (n_sep·B),
    False where a caption has fewer than k + 1 sub-sentences.
    """
    b, length = ids.shape
    rows, masks, present = [], [], []
    position = torch.arange(length, device=ids.device).expand(b, -1)
    for k in range(n_sep):
        chosen = pieces == k
        count = chosen.sum(1)
        order = torch.argsort(torch.where(chosen, position, position + length), dim=1, stable=True)
        words = ids.gather(1, order)  # chosen tokens first, in caption order
        seq = torch.zeros(b, length + 2, dtype=ids.dtype, device=ids.device)
        seq[:, 0] = cls_id
        seq[:, 1:length + 1] = torch.where(position < count[:, None], words, torch.zeros_like(words))
        seq.scatter_(1, (count + 1)[:, None], sep_id)
        rows.append(seq)
        masks.append(torch.arange(length + 2, device=ids.device)[None] < (count + 2)[:, None])
        present.append(count > 0)
    seq, mask = torch.cat(rows), torch.cat(masks)
    width = int(mask.sum(1).max())  # drop padding columns shared by all rows
    return seq[:, :width], mask[:, :width], torch.cat(present)


def single_pass_inputs(ids: torch.Tensor, mask: torch.Tensor, pieces: torch.Tensor, n_sep: int, cls_id: int):
    """Fig. 2's locality constraint in one pass: n_sep extra [CLS] tokens appended after the (padded) caption.

    Extra token k sees itself and the tokens of sub-sentence k only; the caption's tokens see the caption (never the
    extra tokens, so word features equal a plain pass); padding sees itself. Only what the extra token *reads* is
    local: from the second layer on, the words it reads already carry context from the whole caption, so the
    separate passes of the official code (the default) are the strictly local form. The extras take position 0, like the
    caption's own [CLS] (the paper gives no position scheme; this is the project's choice). Returns ids, mask (real
    tokens incl. extras of present pieces), attention (B × L' × L'), positions.
    """
    b, length = ids.shape
    total = length + n_sep
    ext_ids = torch.cat([ids, torch.full((b, n_sep), cls_id, dtype=ids.dtype, device=ids.device)], 1)
    present = torch.stack([(pieces == k).any(1) for k in range(n_sep)], 1)
    ext_mask = torch.cat([mask, present], 1)
    attention = torch.zeros(b, total, total, dtype=torch.bool, device=ids.device)
    attention[:, :length, :length] = mask[:, None, :] & mask[:, :, None]
    for k in range(n_sep):
        attention[:, length + k, :length] = pieces == k
    attention |= torch.eye(total, dtype=torch.bool, device=ids.device)  # every row keeps one key
    positions = torch.cat([torch.arange(length, device=ids.device).expand(b, -1),
                           torch.zeros(b, n_sep, dtype=torch.long, device=ids.device)], 1)
    return ext_ids, ext_mask, attention, positions


# ---------------------------------------------------------------------------------------------------- the model


class NAFS(MethodModel):
    # Captions as [CLS] words [SEP] (BERT's layout, also with a word vocabulary) and each token's sub-sentence index.
    text_needs = TextNeeds(cls_sep=True, pieces=True)

    def __init__(self, params: NAFSRunParams, vocab_size: int, num_classes: int, tokenizer):
        """`tokenizer` gives [CLS] and [SEP] (sub-sentence sequences are built from them)."""
        super().__init__()
        m, n = params.model, params.nafs
        self.n = n
        self.official_units = n.text_units == "official" and n.scales != "global"
        if self.official_units:  # the official block reads BERT's outputs at padded positions up to max_words
            self.text_needs = TextNeeds(cls_sep=True, pieces=True, full_width=True, official_pieces=n.n_sep)
        self.cls_id, self.sep_id = int(tokenizer.cls_id), int(tokenizer.sep_id)
        self.max_words = params.data.max_words
        widths = tuple(m.backbone_widths) if m.backbone_widths else None
        backbone = create_backbone(m.image_backbone, pretrained=m.pretrained, last_stride=m.last_stride, widths=widths)
        self.image_net = Staircase(backbone, n.scales, n.part2, n.part3, n.shuffle)
        if m.text_encoder == "bert":
            self.text_encoder = create_bert(m)
        else:
            self.text_encoder = create_text_encoder("transformer", vocab_size=vocab_size, dim=m.text_hidden,
                                                    layers=m.text_layers, heads=m.text_heads,
                                                    max_len=params.data.max_words, dropout=m.text_dropout)
        d = self.text_encoder.out_dim
        if m.feature_dim != d:
            raise ValueError(f"nafs.model.feature_dim ({m.feature_dim}) must equal the text encoder's hidden size ({d}): "
                             "raw text outputs and the projected global features share one unit set (docs/nafs.md §2.2)")
        channels = backbone.channels["layer4"]
        self.dim = d
        # Global heads: 1×1 conv (a linear map on the pooled vector) + BN neck, for image and text.
        self.image_global = nn.Linear(channels, d)
        self.image_bn = NeckBN(d)
        self.text_global = nn.Linear(d, d)
        self.text_bn = NeckBN(d)
        self.class_weights = nn.Parameter(torch.empty(d, num_classes))  # CMPC's W, columns normalised in the loss
        nn.init.xavier_uniform_(self.class_weights)
        if n.id_weight:
            self.id_head = nn.Linear(d, num_classes)  # demo stand-in for pretrained features (NAFSParams.id_weight)
        self.local = n.scales != "global"
        if self.local:
            stripes = self.image_net.n_stripes
            self.stripe_embed = nn.ModuleList(nn.Linear(channels, d) for _ in range(stripes))
            self.image_query = nn.ModuleList(nn.Linear(d, d) for _ in range(stripes + 1))  # [global, stripes]
            self.image_value = nn.ModuleList(nn.Linear(d, d) for _ in range(stripes + 1))
            self.n_sub = n.n_sep if n.locality != "none" else 0
            # [global, sub-sentences, words at positions 1..]; the official block stops one position earlier
            self.n_units = 1 + self.n_sub + (self.max_words - (2 if self.official_units else 1))
            self.text_key = nn.Linear(d, d)
            self.text_value = nn.Linear(d, d)
            shape = (self.n_units, d) if n.unit_norm == "joint" else (d,)
            self.key_norm, self.value_norm = nn.LayerNorm(shape), nn.LayerNorm(shape)

    # ------------------------------------------------------------------ optimiser groups (docs/nafs.md §4)
    def param_groups(self, params) -> list[dict]:
        """Heads and W at the base lr without weight decay; the image network at lr·backbone_lr_mult with weight
        decay; the text encoder at lr·backbone_lr_mult without weight decay."""
        tp = params.train
        image = list(self.image_net.parameters())
        text = list(self.text_encoder.parameters())
        taken = {id(p) for p in image + text}
        heads = [p for p in self.parameters() if id(p) not in taken and p.requires_grad]
        slow = tp.lr * tp.backbone_lr_mult
        return [{"params": heads, "lr": tp.lr, "weight_decay": 0.0},
                {"params": image, "lr": slow, "weight_decay": tp.weight_decay},
                {"params": text, "lr": slow, "weight_decay": 0.0}]

    # ------------------------------------------------------------------ features
    def image_features(self, images: torch.Tensor, perms: tuple | None = None) -> dict[str, torch.Tensor]:
        global_feat, stripes = self.image_net(images, perms)
        f = self.image_bn(self.image_global(global_feat))
        out = {"global": f}
        if self.local:
            embedded = [f] + [head(stripes[:, k]) for k, head in enumerate(self.stripe_embed)]
            out["query"] = torch.stack([q(x) for q, x in zip(self.image_query, embedded)], 1)  # B×R×d
            out["value"] = torch.stack([v(x) for v, x in zip(self.image_value, embedded)], 1)
        return out

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor, pieces: torch.Tensor | None = None,
                      sub_ids: torch.Tensor | None = None, sub_mask: torch.Tensor | None = None):
        if self.official_units:
            if sub_ids is None or sub_mask is None:
                raise ValueError("nafs.text_units=official needs the batch's sub_ids and sub_mask (the collate makes them "
                                 "when the model's text_needs ask for official pieces)")
            return self.official_text_features(ids, mask.bool(), sub_ids, sub_mask.bool())
        mask = mask.bool()
        b, length = ids.shape
        n = self.n
        if self.local and n.locality == "masked_single_pass":
            ext = single_pass_inputs(ids, mask, pieces, n.n_sep, self.cls_id)
            hidden_all = self.text_encoder(ext[0], ext[1], attention=ext[2], positions=ext[3])
            hidden, subs = hidden_all[:, :length], hidden_all[:, length:]
            sub_valid = ext[1][:, length:]
        else:
            hidden = self.text_encoder(ids, mask)
            if self.local and n.locality == "separate_passes":
                seq, seq_mask, present = piece_sequences(ids, pieces, n.n_sep, self.cls_id, self.sep_id)
                subs = self.text_encoder(seq, seq_mask)[:, 0].view(n.n_sep, b, -1).transpose(0, 1)  # B×n_sep×d
                sub_valid = present.view(n.n_sep, b).t()
        t = self.text_bn(self.text_global(hidden[:, 0]))
        out = {"global": t}
        if self.local:
            words = hidden[:, 1:]
            word_valid = mask[:, 1:] & (ids[:, 1:] != self.sep_id)  # valid wordpieces only (docs/nafs.md §7 item 4)
            units = [t[:, None]]
            valid = [torch.ones(b, 1, dtype=torch.bool, device=ids.device)]
            if self.n_sub:
                units.append(subs)
                valid.append(sub_valid)
            units.append(words)
            valid.append(word_valid)
            units, valid = torch.cat(units, 1), torch.cat(valid, 1)
            pad = self.n_units - units.shape[1]  # a fixed block, so the joint LayerNorm never depends on the batch
            units = F.pad(units * valid[..., None], (0, 0, 0, pad))
            valid = F.pad(valid, (0, pad))
            out["key"] = self.key_norm(self.text_key(units))
            out["value"] = self.value_norm(self.text_value(units))
            out["unit_mask"] = valid
        return out

    def official_text_features(self, ids: torch.Tensor, mask: torch.Tensor, sub_ids: torch.Tensor,
                               sub_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The official code's text units (docs/nafs.md §7): the block [global, n_sep sub-sentence [CLS] outputs,
        encoder outputs at positions 1..max_words−2] goes through the key/value layers and the joint LayerNorm whole,
        padding outputs included; a caption of T tokens ([CLS] … [SEP]) then uses its first 1 + n_sep + T units
        (the official `text_length` = T + 3 with n_sep = 2): its wordpieces, [SEP] and one padding output."""
        b, length = ids.shape
        if length != self.max_words:
            raise ValueError(f"official text units need captions padded to max_words={self.max_words}, got width "
                             f"{length} (the collate keeps full width when the model asks for it)")
        hidden = self.text_encoder(ids, mask)
        subs = self.text_encoder(sub_ids, sub_mask)[:, 0].view(b, self.n.n_sep, -1)  # caption-major rows
        t = self.text_bn(self.text_global(hidden[:, 0]))
        units = torch.cat([t[:, None], subs, hidden[:, 1:length - 1]], 1)
        n_used = 1 + self.n.n_sep + mask.sum(1)
        valid = torch.arange(self.n_units, device=ids.device)[None] < n_used[:, None]
        return {"global": t, "key": self.key_norm(self.text_key(units)), "value": self.value_norm(self.text_value(units)),
                "unit_mask": valid}

    # ------------------------------------------------------------------ unit layout (read by the analyses)
    def text_unit_slices(self) -> dict[str, slice]:
        """Where each kind of text unit sits in the unit block [global, sub-sentences (none without locality), words
        at positions 1.. of the caption]."""
        return {"global": slice(0, 1), "sub_sentences": slice(1, 1 + self.n_sub), "words": slice(1 + self.n_sub, None)}

    def image_unit_slices(self) -> dict[str, slice]:
        """Where each scale sits among the image units [whole image, branch-2 stripes, branch-3 stripes]."""
        p2 = self.n.part2 if self.n.scales != "global" else 0
        p3 = self.n.part3 if self.n.scales == "full" else 0
        return {"whole": slice(0, 1), "branch_2": slice(1, 1 + p2), "branch_3": slice(1 + p2, 1 + p2 + p3)}

    # ------------------------------------------------------------------ scores
    def unit_groups(self) -> list[tuple[slice, torch.Tensor | None]]:
        """Per-scale alignment: (image unit slice, text unit selector) pairs; one group over everything for CNL."""
        if self.n.alignment == "cnl":
            return [(slice(None), None)]
        p2 = self.n.part2
        text_scale = torch.zeros(self.n_units, dtype=torch.long)
        text_scale[1:1 + self.n_sub] = 1
        text_scale[1 + self.n_sub:] = 2
        return [(slice(0, 1), text_scale == 0),                   # global ↔ global
                (slice(1 + p2, None), text_scale == 1),           # coarse stripes (branch 3) ↔ sub-sentences
                (slice(1, 1 + p2), text_scale == 2)]              # fine stripes (branch 2) ↔ words

    def local_scores(self, txt: dict, img: dict) -> torch.Tensor:
        """S_loc, texts × images (docs/nafs.md §2.3); per-scale alignment averages the groups weighted by image units."""
        n, r = self.n, img["query"].shape[1]
        total = 0.0
        for image_units, text_units in self.unit_groups():
            keys, values, valid = txt["key"], txt["value"], txt["unit_mask"]
            if text_units is not None:
                text_units = text_units.to(keys.device)
                keys, values, valid = keys[:, text_units], values[:, text_units], valid[:, text_units]
                valid = valid.clone()
                valid[:, 0] |= ~valid.any(1)  # a caption without units of this scale: one (zero) unit stands in
            q, v = img["query"][:, image_units], img["value"][:, image_units]
            score = cnl_scores(keys, valid, q, text_values=values, image_values=v,
                               temperature=n.temperature, leaky_slope=n.leaky_slope)
            total = total + score * (q.shape[1] / r)
        return total

    # ------------------------------------------------------------------ the model contract
    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """global B×d; with local units also query and value B×R×d (R = 1 + stripes)."""
        return self.image_features(images)

    def encode_texts(self, text: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """global B×d; with local units also key and value B×U×d and unit_mask B×U (bool)."""
        return self.text_features(text["ids"], text["mask"], text.get("pieces"), text.get("sub_ids"),
                                  text.get("sub_mask"))

    def similarities(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """"final" = S_glob + S_loc (docs/nafs.md §5), then "global", "local" alone. Re-ranking is a test-time step
        (`rerank`): the training run never reads the `nafs.rvn_*` settings, so changing them retrains nothing."""
        img, txt = image_feats, text_feats
        s_glob = cosine_similarity(txt["global"], img["global"])
        out = {"final": s_glob}
        if self.local:
            s_loc = self.local_scores(txt, img)
            out = {"final": s_glob + s_loc, "global": s_glob, "local": s_loc}
        return out

    def rerank(self, scores: dict[str, torch.Tensor], image_feats: dict) -> dict[str, torch.Tensor]:
        """`scores` plus "rvn" = "final" re-ranked by visual neighbours with the current `nafs.rvn_*` settings
        (docs/nafs.md §5); unchanged when `rvn_mode` is off. RVN reads the gallery's own image-image similarities (a
        transductive step), so it is scored from a finished run's test features, not inside training."""
        if self.n.rvn_mode == "off":
            return dict(scores)
        return {**scores, "rvn": rvn_rerank(scores["final"], visual_similarity(image_feats["global"]), k=self.n.rvn_k,
                                            weight=self.n.rvn_weight, mode=self.n.rvn_mode)}

    # ------------------------------------------------------------------ training
    def start_epoch(self, epoch: int) -> None:
        """The stripe shuffle draws from the model's own stream, seeded here from the (just reseeded) global RNG."""
        super().start_epoch(epoch)
        self.image_net.shuffle_rng.manual_seed(int(torch.randint(2**62, ())))

    def features_in_bn_groups(self, batch: dict) -> tuple[dict, dict]:
        """Image and text features of the batch computed group by group (`nafs.bn_group_size` samples each), so every
        BatchNorm normalises with its group's statistics, as on each GPU of the official DataParallel runs. The stripe
        shuffle is drawn once for the step, and the running statistics keep the first group's update only (DataParallel
        keeps replica 0's buffers)."""
        g, k = self.n.bn_group_size, self.n.n_sep
        perms = self.image_net.draw_perms(batch["image"].device)
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        text = text_input(batch)
        images, texts, kept = [], [], None
        for start in range(0, len(batch["image"]), g):
            rows = slice(start, start + g)
            part = {key: (v[start * k:(start + g) * k] if key.startswith("sub_") else v[rows]) for key, v in text.items()}
            images.append(self.image_features(batch["image"][rows], perms))
            texts.append(self.encode_texts(part))
            if kept is None:
                kept = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, kept):
                m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)
        join = lambda parts: {key: torch.cat([p[key] for p in parts]) for key in parts[0]}  # noqa: E731
        return join(images), join(texts)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Weighted terms; CMPM, CMPC and CONT see the batch gathered over ranks, the ID stand-in the local batch."""
        n = self.n
        if n.bn_group_size and len(batch["image"]) > n.bn_group_size:
            img, txt = self.features_in_bn_groups(batch)
        else:
            img, txt = self.image_features(batch["image"]), self.encode_texts(text_input(batch))
        labels = batch["label"]
        all_img = {k: gather_with_grad(v) for k, v in img.items()}
        all_txt = {k: gather_with_grad(v) for k, v in txt.items()}
        all_labels = gather_with_grad(labels)
        terms = {"cmpm": cmpm_loss(all_img["global"], all_txt["global"], all_labels, q_norm=n.cmpm_q_norm)}
        if n.cmpc:
            terms["cmpc"] = cmpc_loss(all_img["global"], all_txt["global"], all_labels, self.class_weights)
        if n.id_weight:
            terms["id"] = n.id_weight * (id_loss(self.id_head(img["global"]), labels)
                                         + id_loss(self.id_head(txt["global"]), labels))
        if self.local and n.cont_weight:
            s_loc = self.local_scores(all_txt, all_img)  # texts × images
            terms["cont"] = n.cont_weight * local_matching_loss(s_loc.t(), all_labels, temperature=n.cont_scale,
                                                                q_norm=n.cmpm_q_norm)
        terms["loss"] = terms["cmpm"] + terms.get("cmpc", 0.0) + terms.get("cont", 0.0) + terms.get("id", 0.0)
        return terms


# ---------------------------------------------------------------------------------------------------- analysis


@torch.no_grad()
def cnl_attention(model: NAFS, text_feats: dict, image_feats: dict, text: int = 0, image: int = 0) -> torch.Tensor:
    """The CNL weights a_rw (R × U, zero on masked units) of text `text` over image `image` of the feature dicts:
    which text units each image unit attends to (the paper's Fig. 4)."""
    valid = text_feats["unit_mask"][text]
    queries = l2_normalize(image_feats["query"][image])
    keys = l2_normalize(text_feats["key"][text, valid])
    out = queries.new_zeros(queries.shape[0], valid.numel())
    out[:, valid] = cnl_weights(queries, keys, temperature=model.n.temperature, leaky_slope=model.n.leaky_slope)
    return out


# Test-time settings: read only when a finished run is re-scored (`NAFS.rerank`), so the training stage ignores them.
METHOD = Method("nafs", params=NAFSRunParams, model=NAFS,
                test_time=("nafs.rvn_mode", "nafs.rvn_k", "nafs.rvn_weight"))
