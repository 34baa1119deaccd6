"""SSAN — Semantically Self-Aligned Network (Ding et al., 2021), readable top to bottom.

Documentation: docs/ssan.md. A dual encoder with three kinds of features per modality:
- global (v_g, t_g): max-pooled backbone map / max over Bi-LSTM word features, through one projection W_g shared
  by image and text;
- part (v_l^k, t_l^k; PFL + WAM): K horizontal stripes of the image map; on the text side the word attention module
  gates every word per part with an independent sigmoid and max-pools the gated words. Stripe k and text part k share
  the projection W_l^k and the ID classifier, which is what "self-aligns" words to stripes without part labels;
- relation (v_n^k, t_n^k; MV-NLN / PRL): a non-local module over the K parts (each part attends to the others, never
  to itself), shared by both modalities.
Losses: ID = ID_g + 0.5·(ID_l + ID_n) with classifiers shared across modalities, plus the compound ranking loss
CR = CR_g + 0.5·(CR_l + CR_n) (tireid_core.losses.compound_ranking_loss). Test score: S_g + S_l + S_n.

Switches for the ablation (`ssan.part_features`, `ssan.relation`, `ssan.weak_term`) and the official-code quirks
(`ssan.inplace_part_act`, `ssan.global_pool_includes_padding`, ...) are parameters; see docs/ssan.md §7.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from tireid_core.data.pairs import text_input
from tireid_core.distributed import gather_with_grad
from tireid_core.losses import compound_ranking_loss, id_loss
from tireid_core.methods import Method, MethodModel, TextNeeds
from tireid_core.metrics import cosine_similarity
from tireid_core.models.backbones import create_backbone
from tireid_core.models.text_encoders import BiLSTMEncoder, pool_tokens
from tireid_core.params import ParamsError, RunParams


@dataclass
class SSANParams:
    """SSAN switches (docs/ssan.md). Defaults follow the paper; the official code's quirks are named flags (§7)."""

    parts: int = 6  # K horizontal stripes / word-attention parts
    part_features: bool = True  # PFL + word attention module (WAM)
    relation: bool = True  # multi-view non-local network (MV-NLN, the paper's PRL)
    relation_dim: int = 512  # MV-NLN inner and output width
    leaky_slope: float = 0.25
    id_weight: float = 1.0  # weight of the whole ID term
    local_weight: float = 0.5  # ID = ID_g + w·(ID_l + ID_n); CR likewise
    weak_term: bool = True  # compound ranking loss (False = plain ranking loss); needs data.support_captions >= 1
    alpha1: float = 0.2
    beta: float = 0.1
    alpha2_start_epoch: int = 5
    weak_gate: float = 0.0  # official code: 0.16
    weak_neg: Literal["main_captions", "weak_captions"] = "main_captions"  # official: weak_captions
    lambda_mode: Literal["paper", "official_abs"] = "paper"
    cr_reduction: Literal["sum", "mean"] = "sum"
    inplace_part_act: bool = False  # official: LeakyReLU in place also activates the returned part features
    global_pool_includes_padding: bool = False  # official: text max-pool over padding up to data.max_words too
    fallback_anchor: Literal["last_eligible", "official"] = "last_eligible"  # official: the batch's last anchor


@dataclass
class SSANRunParams(RunParams):
    ssan: SSANParams = field(default_factory=SSANParams)

    def check(self, key: str) -> None:
        s = self.ssan
        for name in ("parts", "relation_dim"):
            if getattr(s, name) <= 0:
                raise ParamsError(f"{key}.ssan.{name}: must be positive, got {getattr(s, name)!r}")
        if s.relation and not s.part_features:
            raise ParamsError(f"{key}.ssan.relation: the non-local module needs part_features: true")
        if s.weak_term and self.data.support_captions != 1:
            raise ParamsError(f"{key}.data.support_captions: the compound ranking loss (ssan.weak_term) uses one weak "
                              f"caption per sample, so it must be 1, got {self.data.support_captions}")
        if self.model.text_encoder != "bilstm":
            raise ParamsError(f"{key}.model.text_encoder: SSAN uses the Bi-LSTM text branch, got "
                              f"{self.model.text_encoder!r}")


class PartLinear(nn.Module):
    """K independent bias-free 1×1 projections, one per part, applied to B×K×in in one einsum."""

    def __init__(self, parts: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(parts, d_out, d_in))
        for k in range(parts):  # Kaiming-normal (fan_out), as for the official 1×1 convolutions
            nn.init.kaiming_normal_(self.weight.data[k], mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bki,koi->bko", x, self.weight)


class MultiViewNonLocal(nn.Module):
    """MV-NLN (docs/ssan.md §2.3): part k queries the other parts through per-part "views", then a residual update."""

    def __init__(self, parts: int, dim: int, inner: int, slope: float):
        super().__init__()
        self.theta = PartLinear(parts, dim, inner)  # query view
        self.phi = PartLinear(parts, dim, inner)  # key/value view
        self.up = PartLinear(parts, inner, dim)  # W_gamma, then BatchNorm + LeakyReLU
        self.bn = nn.BatchNorm1d(parts * dim)
        self.out = PartLinear(parts, dim, inner)  # W_n
        self.slope = slope
        self.register_buffer("no_self", torch.eye(parts, dtype=torch.bool), persistent=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """B×K(j)×K(k) weights: softmax over j of cos(phi_j, theta_k), with the diagonal masked out."""
        q = F.normalize(F.leaky_relu(self.theta(x), self.slope), dim=-1)
        kv = F.normalize(F.leaky_relu(self.phi(x), self.slope), dim=-1)
        logits = torch.einsum("bjd,bkd->bjk", kv, q).masked_fill(self.no_self, -1e6)
        return logits.softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k, d = x.shape
        kv = F.normalize(F.leaky_relu(self.phi(x), self.slope), dim=-1)
        attn = self.attention(x)
        aggregated = torch.einsum("bjk,bjd->bkd", attn, kv)  # aggregates the normalised phi, as the code does
        up = self.up(aggregated).reshape(b, k * d)
        # The BatchNorm's own mode (train.freeze_bn puts it in eval); a training batch of one cannot estimate batch
        # statistics: use the running ones (the official code crashes).
        up = F.batch_norm(up, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias,
                          training=self.bn.training and b > 1, momentum=self.bn.momentum, eps=self.bn.eps)
        z = x + F.leaky_relu(up, self.slope).reshape(b, k, d)
        return self.out(z)


class SSAN(MethodModel):
    def __init__(self, params: SSANRunParams, vocab_size: int, num_classes: int, tokenizer=None):
        super().__init__()
        m, s = params.model, params.ssan
        self.s = s
        # the official global max sees the zero padding up to max_words, so batches must keep it
        self.text_needs = TextNeeds(full_width=s.global_pool_includes_padding)
        self.mining = torch.Generator()  # reseeded every epoch by start_epoch
        widths = tuple(m.backbone_widths) if m.backbone_widths else None
        self.backbone = create_backbone(m.image_backbone, pretrained=m.pretrained, last_stride=m.last_stride,
                                        widths=widths)
        channels = self.backbone.channels["layer4"]
        if m.text_hidden != channels:
            raise ValueError(
                f"ssan.model.text_hidden ({m.text_hidden}) must equal the backbone's output channels ({channels}): "
                "W_g and W_l are shared by image and text"
            )
        dim, parts = m.feature_dim, s.parts
        # Text: one shared Bi-LSTM run over two embedding tables (global uses the encoder's own table).
        self.text_encoder = BiLSTMEncoder(vocab_size, m.word_embed_dim, hidden=channels, dropout=m.text_dropout)
        self.W_g = nn.Linear(channels, dim, bias=False)
        nn.init.kaiming_normal_(self.W_g.weight, mode="fan_out")
        self.id_global = self._classifier(dim, num_classes)
        if s.part_features:
            self.local_embed = nn.Embedding(vocab_size, m.word_embed_dim, padding_idx=0)
            self.local_dropout = nn.Dropout(m.text_dropout)
            # W_p: per-word, per-part gate logits. PyTorch's default init, as the official 1×1 conv (the only one
            # there not initialised by Kaiming; equal to nn.Linear's default for the same fan-in)
            self.word_attention = nn.Linear(channels, parts, bias=False)
            self.W_l = PartLinear(parts, channels, dim)
            self.id_local = nn.ModuleList(self._classifier(dim, num_classes) for _ in range(parts))
        if s.relation:
            self.nonlocal_net = MultiViewNonLocal(parts, dim, s.relation_dim, s.leaky_slope)
            self.id_relation = nn.ModuleList(self._classifier(s.relation_dim, num_classes) for _ in range(parts))

    @staticmethod
    def _classifier(d_in: int, n: int) -> nn.Linear:
        head = nn.Linear(d_in, n)
        nn.init.normal_(head.weight, std=0.001)
        nn.init.zeros_(head.bias)
        return head

    # ------------------------------------------------------------------ features
    def _parts_to_relation(self, local: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"local"[, "relation"]}: LeakyReLU then MV-NLN. With `inplace_part_act` the returned part features are the
        activated ones (official)."""
        activated = F.leaky_relu(local, self.s.leaky_slope)
        out = {"local": activated if self.s.inplace_part_act else local}
        if self.s.relation:
            out["relation"] = self.nonlocal_net(activated)
        return out

    def image_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.backbone(images)["layer4"]  # B×C×H×W
        out = {"global": self.W_g(fmap.amax((2, 3)))}
        if self.s.part_features:
            stripes = F.adaptive_max_pool2d(fmap, (self.s.parts, 1)).flatten(2).transpose(1, 2)  # B×K×C
            out.update(self._parts_to_relation(self.W_l(stripes)))
        return out

    def word_gates(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """WAM gates s_i^k (B×L×K): independent sigmoids, so a word may feed several parts or none."""
        words = self.text_encoder.forward_embeddings(self.local_dropout(self.local_embed(ids)), mask)
        return torch.sigmoid(self.word_attention(words)), words

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = mask.bool()
        words = self.text_encoder(ids, mask)  # B×L×C, zero at padding
        if self.s.global_pool_includes_padding:
            pooled = words.amax(1)  # official: the zeros at padded positions take part in the max
        else:
            pooled = pool_tokens(words, mask, "max")
        out = {"global": self.W_g(pooled)}
        if self.s.part_features:
            gates, local_words = self.word_gates(ids, mask)
            gated = pool_tokens(gates.unsqueeze(-1) * local_words.unsqueeze(2), mask, "max")  # B×K×C
            out.update(self._parts_to_relation(self.W_l(gated)))
        return out

    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """global B×d; with part features also local B×K×d and relation B×K×r."""
        return self.image_features(images)

    def encode_texts(self, text: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.text_features(text["ids"], text["mask"])

    def similarities(self, image_feats: dict, text_feats: dict) -> dict[str, torch.Tensor]:
        """S_g, S_l, S_n (each one cosine over its concatenated vector) and "final" = their sum (docs/ssan.md §5)."""
        out = {name: cosine_similarity(text_feats[name].flatten(1), image_feats[name].flatten(1))
               for name in ("global", "local", "relation") if name in image_feats}
        out["final"] = sum(out.values())
        return out

    # ------------------------------------------------------------------ training
    def start_epoch(self, epoch: int) -> None:
        """The α2 schedule reads the epoch; semi-hard mining draws from the model's own stream, seeded here from the
        (just reseeded) global RNG, so every DDP rank mines the gathered batch with the same draws."""
        super().start_epoch(epoch)
        self.mining = torch.Generator().manual_seed(int(torch.randint(2**62, ())))

    def _id_loss(self, feats: dict, labels: torch.Tensor, name: str, heads) -> torch.Tensor:
        if name == "global":
            return id_loss(heads(feats[name]), labels)
        x = feats[name]
        return sum(id_loss(head(x[:, k]), labels) for k, head in enumerate(heads)) / len(heads)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """ID on the local batch (a per-sample mean); CR on the batch gathered over ranks (docs/ssan.md §3)."""
        s = self.s
        img = self.image_features(batch["image"])
        txt = self.text_features(batch["ids"], batch["mask"])
        # The weak captions (a support set of one caption) only enter the compound term: the plain-ranking rows skip
        # encoding them.
        weak = self.encode_texts(text_input(batch, "support_")) if s.weak_term else None
        labels, epoch = batch["label"], self.epoch
        all_labels = gather_with_grad(labels)
        branches = [("global", 1.0, self.id_global)]
        if s.part_features:
            branches.append(("local", s.local_weight, self.id_local))
        if s.relation:
            branches.append(("relation", s.local_weight, self.id_relation))
        terms = {"id": 0.0, "cr": 0.0}
        for name, weight, heads in branches:
            # ID: only the main caption, with the classifier shared by image and text
            terms["id"] = terms["id"] + weight * (self._id_loss(img, labels, name, heads) +
                                                  self._id_loss(txt, labels, name, heads))
            terms["cr"] = terms["cr"] + weight * compound_ranking_loss(
                gather_with_grad(img[name].flatten(1)), gather_with_grad(txt[name].flatten(1)),
                gather_with_grad(weak[name].flatten(1)) if weak is not None else None, all_labels, epoch=epoch,
                alpha1=s.alpha1, beta=s.beta, alpha2_start_epoch=s.alpha2_start_epoch, weak_term=s.weak_term,
                weak_gate=s.weak_gate, weak_neg=s.weak_neg, lambda_mode=s.lambda_mode, reduction=s.cr_reduction,
                fallback_anchor=s.fallback_anchor, generator=self.mining,
            )
        terms["id"] = s.id_weight * terms["id"]
        terms["loss"] = terms["id"] + terms["cr"]
        return terms


# ---------------------------------------------------------------------- analysis helpers (used by the notebooks)


def retrieval_embedding(feats: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate the L2-normalised global / part / relation vectors, so that dot products equal S_all."""
    return torch.cat([F.normalize(feats[name].flatten(1), dim=1, eps=1e-12)
                      for name in ("global", "local", "relation") if name in feats], dim=1)


@torch.no_grad()
def gates_for_tokens(model: SSAN, vocab, token_lists: list[list[str]]) -> list[tuple[torch.Tensor, list[bool]]]:
    """WAM gates per caption, (n_kept × K), and which tokens were kept (out-of-vocabulary words are deleted)."""
    was_training = model.training
    model.eval()
    out = []
    for tokens in token_lists:
        kept = vocab.kept(tokens)
        encoded = vocab.encode_tokens(tokens)
        ids = torch.tensor([encoded or [0]])
        mask = torch.tensor([[True] * len(encoded) or [False]])
        gates, _ = model.word_gates(ids.to(model.W_g.weight.device), mask.to(model.W_g.weight.device))
        out.append((gates[0, : int(mask.sum())].cpu(), kept))
    model.train(was_training)
    return out


@torch.no_grad()
def mean_part_attention(model: SSAN, local_feats: torch.Tensor) -> torch.Tensor:
    """MV-NLN attention (K×K, rows j = attended part, columns k = querying part) averaged over samples.

    `local_feats` are the part features v_l or t_l (B×K×d, the "local" entry of the feature dicts)."""
    x = F.leaky_relu(local_feats, model.s.leaky_slope)
    return model.nonlocal_net.attention(x.to(model.W_g.weight.device)).mean(0).cpu()


METHOD = Method("ssan", params=SSANRunParams, model=SSAN)
