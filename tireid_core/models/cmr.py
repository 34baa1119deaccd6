"""CMR — part-level cross-modal correspondence with the commonality-based margin ranking loss (Park et al., 2024).

Documentation: docs/cmr.md. No official code exists and the paper body was not available: this module is a
**labelled reconstruction** in the lineage of the same first author's PLOT code (IRRA-derived); every reconstructed
choice is a field of `CMRParams` (docs/cmr.md §9 lists them as "our choice").

- Encoders (§2.1): CLIP's ViT and text transformer (`tireid_core.models.clip`); the global embeddings are CLIP's own,
  image CLS and text EOS.
- Shared decoder (§2.2): learnable queries, *the same for images and captions*, read the patch tokens or the word
  tokens through one cross-attention (shared weights, one pre-LayerNorm per modality), then a transformer stack over
  the queries and a final LayerNorm. Query k reads both modalities with the same weights, so the k-th image embedding
  and the k-th caption embedding can only be compared with each other: they come to describe the same body part,
  without any part label.
- Coarse-to-fine embeddings (§2.3, `cmr.coarse_to_fine`): two_query_sets (N_c coarse + N_f fine queries decoded in
  one pass), decoder_depth (coarse = the fine queries' outputs after `coarse_layer` layers), global_plus_parts (coarse =
  the global pair).
- Losses (§3): SDM on the global pair and an ID loss with one classifier for both modalities; a fixed-margin ranking
  loss per coarse query; per fine query L_CMR (`losses.cmr_loss`: the margin of each anchor lowered for common parts)
  or, with `margin_mode: fixed`, the same ranking loss with a fixed margin. Each term is logged, and so is the
  distribution of the rescaled margins (the `diag_*` entries: not loss terms, left out of "loss").
- Test score (§5): cos(g) + w_c · mean_c cos(C_c) + w_f · mean_k cos(F_k); "global", "coarse", "fine" are also
  reported alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from tireid_core.distributed import gather_with_grad
from tireid_core.losses import (cmr_loss, commonality_margins, commonality_scores, id_loss, part_commonality,
                                ranking_loss, sdm_loss)
from tireid_core.methods import Method, MethodModel
from tireid_core.metrics import cosine_similarity
from tireid_core.models.clip import create_clip
from tireid_core.params import ParamsError, RunParams


@dataclass
class CMRParams:
    """CMR's switches (docs/cmr.md). Almost everything is a reconstruction: defaults follow PLOT/IRRA where they speak."""

    coarse_to_fine: Literal["two_query_sets", "decoder_depth", "global_plus_parts"] = "two_query_sets"
    n_coarse: int = 2  # coarse queries (two_query_sets)
    n_fine: int = 8  # fine (body-part) queries; PLOT used 8 part slots
    decoder_depth: int = 4  # transformer layers over the queries after the cross-attention (IRRA's cross-modal depth)
    decoder_heads: int = 8  # heads of the cross-attention and the decoder layers (IRRA: width / 64)
    coarse_layer: int = 2  # decoder_depth: the coarse embeddings are the fine queries' outputs after this many layers
    # which encoder tokens the queries read: the patches / words only (PLOT's slot attention), or CLS / EOS too
    # (IRRA's cross-attention reads every token)
    decoder_keys: Literal["parts_only", "with_global"] = "parts_only"
    use_coarse: bool = True
    use_fine: bool = True
    margin_mode: Literal["commonality", "fixed"] = "commonality"  # L_CMR on the fine parts, or a fixed margin
    margin: float = 0.2  # base margin m of every ranking loss (the lineage's default)
    margin_floor: float = 0.05  # m̃ = max(m·s, floor)
    commonality: Literal["H1_intra", "H2_cross", "H3_rank", "H4_bank"] = "H1_intra"
    score_norm: Literal["minmax", "clip", "none"] = "minmax"
    margin_gate: float | None = None  # SSAN's auto_margin_flag (0.16): anchors with m̃ below it do not mine
    bank_size: int = 512  # H4_bank: memory-bank slots (per part and modality), at least one batch
    part_reduce: Literal["mean", "sum"] = "mean"  # over the coarse queries and over the fine parts
    coarse_loss: Literal["rank", "sdm"] = "rank"
    tau: float = 0.02  # SDM temperature (IRRA; PLOT 0.015)
    sdm_weight: float = 1.0
    id_weight: float = 1.0
    id_normalize: bool = True  # the ID classifier reads L2-normalised global features (PLOT; IRRA: raw features)
    coarse_weight: float = 1.0  # λ_c
    fine_weight: float = 1.0  # λ_f
    part_loss_start_epoch: int = 0  # coarse and fine losses count from this (0-based) epoch on (PLOT delays them)
    coarse_score_weight: float = 1.0  # w_c of the test score
    fine_score_weight: float = 1.0  # w_f of the test score
    adam_eps: float = 1e-8  # PLOT's recipe: 1e-3 (paper profile)
    bias_lr_mult: float = 2.0  # IRRA/PLOT solver: biases at 2 × lr, without weight decay
    bias_weight_decay: float = 0.0


@dataclass
class CMRRunParams(RunParams):
    cmr: CMRParams = field(default_factory=CMRParams)

    def check(self, key: str) -> None:
        c, m = self.cmr, self.model
        for name in ("n_coarse", "n_fine", "decoder_depth", "decoder_heads", "bank_size"):
            if getattr(c, name) <= 0:
                raise ParamsError(f"{key}.cmr.{name}: must be positive, got {getattr(c, name)!r}")
        if c.coarse_to_fine == "decoder_depth" and not 1 <= c.coarse_layer < c.decoder_depth:
            raise ParamsError(f"{key}.cmr.coarse_layer: must be in [1, decoder_depth) = [1, {c.decoder_depth}) "
                              f"for coarse_to_fine: decoder_depth, got {c.coarse_layer}")
        if not c.margin > 0 or not c.margin_floor >= 0 or not c.tau > 0:
            raise ParamsError(f"{key}.cmr: margin and tau must be positive and margin_floor >= 0, got "
                              f"{c.margin}, {c.tau}, {c.margin_floor}")
        if c.margin_gate is not None and not c.margin_gate > 0:
            raise ParamsError(f"{key}.cmr.margin_gate: null (off) or a positive margin, got {c.margin_gate!r}")
        for name in ("sdm_weight", "id_weight", "coarse_weight", "fine_weight", "coarse_score_weight",
                     "fine_score_weight", "bias_lr_mult", "bias_weight_decay", "adam_eps"):
            if not getattr(c, name) >= 0:
                raise ParamsError(f"{key}.cmr.{name}: must be >= 0, got {getattr(c, name)!r}")
        if c.commonality == "H4_bank" and c.bank_size < self.train.batch_size:
            raise ParamsError(f"{key}.cmr.bank_size: the memory bank must hold at least one batch "
                              f"({self.train.batch_size}), got {c.bank_size}")
        if m.image_backbone != "clip" or m.text_encoder != "clip":
            raise ParamsError(f"{key}.model: CMR uses CLIP's two towers (image_backbone: clip, text_encoder: clip), "
                              f"got {m.image_backbone!r}, {m.text_encoder!r}")
        if m.pretrained is not m.text_pretrained:
            raise ParamsError(f"{key}.model.pretrained: both CLIP towers come from one checkpoint "
                              f"(model.text_model), so pretrained ({m.pretrained!r}) must equal text_pretrained "
                              f"({m.text_pretrained!r})")


def _irra_init(attn: nn.MultiheadAttention, width: int, layers: int) -> None:
    """IRRA's initialisation of its cross-modal attention (std width^-½ in, width^-½·(2·layers)^-½ out)."""
    nn.init.normal_(attn.in_proj_weight, std=width ** -0.5)
    nn.init.normal_(attn.out_proj.weight, std=width ** -0.5 * (2 * layers) ** -0.5)


class SharedDecoder(nn.Module):
    """Learnable queries read one modality's tokens: shared cross-attention behind a pre-LayerNorm per modality, then
    `depth` pre-norm transformer layers over the queries (self-attention + FFN), then a final LayerNorm.

    As in IRRA's cross-modal block and PLOT's sketch, the cross-attention output replaces the queries (no residual):
    what a query becomes is only what it read."""

    def __init__(self, dim: int, n_queries: int, depth: int, heads: int):
        super().__init__()
        self.queries = nn.Parameter(torch.empty(n_queries, dim))
        nn.init.orthogonal_(self.queries)  # PLOT's slots
        self.ln_query = nn.LayerNorm(dim)
        self.ln_keys = nn.ModuleDict({"image": nn.LayerNorm(dim), "text": nn.LayerNorm(dim)})
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(depth))
        self.ln_post = nn.LayerNorm(dim)
        _irra_init(self.cross_attn, dim, depth)
        for layer in self.layers:
            _irra_init(layer.self_attn, dim, depth)
            nn.init.normal_(layer.linear1.weight, std=(2 * dim) ** -0.5)
            nn.init.normal_(layer.linear2.weight, std=dim ** -0.5 * (2 * depth) ** -0.5)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor, modality: str, *, also_layer: int | None = None,
                need_weights: bool = False) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        """tokens B×L×d, keep B×L (True = a key the queries may read). Returns ({layer: B×N×d}, attention): the final
        output under key `depth` (and `also_layer`'s, through the same final LayerNorm); the cross-attention weights
        B×N×L averaged over heads when `need_weights`."""
        q = self.ln_query(self.queries).expand(tokens.shape[0], -1, -1)
        kv = self.ln_keys[modality](tokens)
        x, attention = self.cross_attn(q, kv, kv, key_padding_mask=~keep, need_weights=need_weights)
        out = {}
        for depth, layer in enumerate(self.layers, start=1):
            x = layer(x)
            if depth == also_layer:
                out[depth] = self.ln_post(x)
        out[len(self.layers)] = self.ln_post(x)
        return out, attention


def part_cosine(queries: torch.Tensor, gallery: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """mean_k cos(q_k, g_k) for every query × gallery pair (Q×K×d, G×K×d -> Q×G): part k meets only part k."""
    q = queries.float() / (queries.float().norm(dim=-1, keepdim=True) + eps)
    g = gallery.float().to(q.device) / (gallery.float().to(q.device).norm(dim=-1, keepdim=True) + eps)
    return q.flatten(1) @ g.flatten(1).T / q.shape[1]


class CMR(MethodModel):
    def __init__(self, params: CMRRunParams, vocab_size: int, num_classes: int, tokenizer=None):
        super().__init__()
        m, c = params.model, params.cmr
        self.c = c
        self.mining = torch.Generator()  # reseeded every epoch by start_epoch
        self.image_encoder, self.text_encoder = create_clip(m.text_model, pretrained=m.text_pretrained,
                                                            image_size=(params.data.height, params.data.width))
        dim = self.image_encoder.out_dim
        if dim % c.decoder_heads:
            raise ValueError(f"cmr.cmr.decoder_heads ({c.decoder_heads}) must divide CLIP's embedding width ({dim})")
        self.classifier = nn.Linear(dim, num_classes, bias=False)  # shared by both modalities
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.n_coarse_queries = c.n_coarse if c.coarse_to_fine == "two_query_sets" and c.use_coarse else 0
        if c.coarse_to_fine == "two_query_sets":
            n_queries = self.n_coarse_queries + (c.n_fine if c.use_fine else 0)
        else:  # the fine queries, also read at an intermediate layer (decoder_depth)
            n_queries = c.n_fine if c.use_fine or (c.use_coarse and c.coarse_to_fine == "decoder_depth") else 0
        # decoder_depth without fine embeddings needs only the layers up to the coarse read-out (DDP refuses layers
        # that get no gradient)
        depth = c.coarse_layer if c.coarse_to_fine == "decoder_depth" and not c.use_fine else c.decoder_depth
        self.decoder = SharedDecoder(dim, n_queries, depth, c.decoder_heads) if n_queries else None
        if c.use_fine and c.margin_mode == "commonality" and c.commonality == "H4_bank":
            # FIFO memory of the gathered batches' normalised fine embeddings (identical on every DDP rank)
            self.register_buffer("bank_img", torch.zeros(c.n_fine, c.bank_size, dim))
            self.register_buffer("bank_txt", torch.zeros(c.n_fine, c.bank_size, dim))
            self.register_buffer("bank_pids", torch.full((c.bank_size,), -1, dtype=torch.long))
            self.register_buffer("bank_next", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ features
    def _parts(self, tokens: torch.Tensor, keep: torch.Tensor, modality: str, need_weights: bool = False):
        """{"coarse"?, "fine"?} decoded from one modality's tokens, and the cross-attention (B×N×L or None)."""
        c = self.c
        depth_mode = c.coarse_to_fine == "decoder_depth"
        out, attention = self.decoder(tokens, keep, modality, need_weights=need_weights,
                                      also_layer=c.coarse_layer if depth_mode and c.use_coarse else None)
        final, feats = out[len(self.decoder.layers)], {}
        if c.use_coarse and c.coarse_to_fine != "global_plus_parts":
            feats["coarse"] = out[c.coarse_layer] if depth_mode else final[:, :self.n_coarse_queries]
        if c.use_fine:
            feats["fine"] = final[:, self.n_coarse_queries:]
        return feats, attention

    def _with_parts(self, out: dict, tokens: torch.Tensor, keep: torch.Tensor, modality: str, need_weights: bool):
        if self.c.use_coarse and self.c.coarse_to_fine == "global_plus_parts":
            out["coarse"] = out["global"][:, None]
        attention = None
        if self.decoder is not None:
            feats, attention = self._parts(tokens, keep, modality, need_weights)
            out.update(feats)
        return out, attention

    def image_features(self, images: torch.Tensor, need_weights: bool = False):
        """({"global" B×d, "coarse" B×N_c×d, "fine" B×N_f×d}, cross-attention B×N×keys or None)."""
        tokens = self.image_encoder(images)  # B × (1 + h·w) × d
        keys = tokens if self.c.decoder_keys == "with_global" else tokens[:, 1:]
        keep = torch.ones(keys.shape[:2], dtype=torch.bool, device=keys.device)
        return self._with_parts({"global": tokens[:, 0]}, keys, keep, "image", need_weights)

    def word_positions(self, mask: torch.Tensor) -> torch.Tensor:
        """B×L: the real tokens between the start and the end of text (the caption's words)."""
        rows = torch.arange(len(mask), device=mask.device)
        words = mask.bool().clone()
        words[:, 0] = False
        words[rows, self.text_encoder.eos_index(mask)] = False
        return words

    def word_keys(self, mask: torch.Tensor) -> torch.Tensor:
        """Which text tokens the queries read: the words (start and end of text left out, unless decoder_keys is
        with_global); a caption without any word reads its end-of-text token."""
        if self.c.decoder_keys == "with_global":
            return mask.bool()
        words = self.word_positions(mask)
        fallback = torch.zeros_like(words)
        fallback[torch.arange(len(mask), device=mask.device), self.text_encoder.eos_index(mask)] = True
        return torch.where(words.any(1, keepdim=True), words, fallback)

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor, need_weights: bool = False):
        tokens = self.text_encoder(ids, mask)  # B × L × d
        eos = self.text_encoder.eos_index(mask)
        out = {"global": tokens[torch.arange(len(tokens), device=tokens.device), eos]}
        return self._with_parts(out, tokens, self.word_keys(mask), "text", need_weights)

    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.image_features(images)[0]

    def encode_texts(self, text: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.text_features(text["ids"], text["mask"])[0]

    def similarities(self, image_feats: dict, text_feats: dict) -> dict[str, torch.Tensor]:
        """"global" = cos(g_T, g_I), "coarse" / "fine" = mean over queries of cos(part_T, part_I), "final" =
        global + w_c · coarse + w_f · fine (docs/cmr.md §5)."""
        out = {"global": cosine_similarity(text_feats["global"], image_feats["global"])}
        final = out["global"]
        for name, weight in (("coarse", self.c.coarse_score_weight), ("fine", self.c.fine_score_weight)):
            if name in image_feats:
                out[name] = part_cosine(text_feats[name], image_feats[name])
                final = final + weight * out[name]
        out["final"] = final
        return out

    # ------------------------------------------------------------------ training
    def start_epoch(self, epoch: int) -> None:
        """Semi-hard mining draws from the model's own stream, seeded here from the (just reseeded) global RNG, so
        every DDP rank mines the gathered batch with the same draws."""
        super().start_epoch(epoch)
        self.mining = torch.Generator().manual_seed(int(torch.randint(2**62, ())))

    def param_groups(self, params) -> list[dict]:
        """PLOT's solver: the pretrained CLIP towers at lr · backbone_lr_mult, the new modules (decoder, queries,
        classifier) at lr; biases at `bias_lr_mult` × their group's lr without weight decay; Adam's eps per group.
        The first group is the new modules' weights (the engine logs its lr)."""
        tp, c = params.train, self.c
        slow = tp.backbone_lr_mult if params.model.text_pretrained else 1.0
        groups: dict[tuple[bool, bool], list] = {(False, False): [], (False, True): [], (True, False): [],
                                                 (True, True): []}
        for name, p in self.named_parameters():
            if p.requires_grad:
                encoder = name.startswith(("image_encoder.", "text_encoder."))
                groups[(encoder, "bias" in name.rsplit(".", 1)[-1])].append(p)
        out = []
        for (encoder, bias), ps in groups.items():
            if ps:
                lr = tp.lr * (slow if encoder else 1.0) * (c.bias_lr_mult if bias else 1.0)
                out.append({"params": ps, "lr": lr, "eps": c.adam_eps,
                            "weight_decay": c.bias_weight_decay if bias else tp.weight_decay})
        return out

    @torch.no_grad()
    def _bank(self, fine_img: torch.Tensor, fine_txt: torch.Tensor, pids: torch.Tensor) -> list[tuple]:
        """Enqueue the gathered batch (oldest slots first) and return the bank of every part, (img, txt, pids)."""
        n, size = len(pids), self.bank_pids.numel()
        slots = (self.bank_next + torch.arange(n, device=pids.device)) % size
        self.bank_img[:, slots] = F.normalize(fine_img.detach().float(), dim=-1).transpose(0, 1)
        self.bank_txt[:, slots] = F.normalize(fine_txt.detach().float(), dim=-1).transpose(0, 1)
        self.bank_pids[slots] = pids
        self.bank_next.fill_(int((self.bank_next + n) % size))
        return [(self.bank_img[k], self.bank_txt[k], self.bank_pids) for k in range(fine_img.shape[1])]

    def _reduce(self, per_part: list[torch.Tensor]) -> torch.Tensor:
        total = torch.stack(per_part).sum()
        return total / len(per_part) if self.c.part_reduce == "mean" else total

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """SDM + ID on the global pair, ranking per coarse query, L_CMR (or a fixed margin) per fine part; batch-level
        terms on the batch gathered over ranks, ID on the local batch (docs/cmr.md §3)."""
        c = self.c
        img, _ = self.image_features(batch["image"])
        txt, _ = self.text_features(batch["ids"], batch["mask"])
        labels = batch["label"]
        pids = gather_with_grad(labels)
        g_img, g_txt = img["global"], txt["global"]
        if c.id_normalize:
            g_img, g_txt = F.normalize(g_img, dim=1), F.normalize(g_txt, dim=1)
        terms = {"sdm": c.sdm_weight * sdm_loss(gather_with_grad(img["global"]), gather_with_grad(txt["global"]),
                                                pids, tau=c.tau),
                 "id": c.id_weight * (id_loss(self.classifier(g_img), labels)
                                      + id_loss(self.classifier(g_txt), labels)) / 2}
        parts_on = self.epoch >= c.part_loss_start_epoch  # before: weight 0, so every parameter still gets a gradient
        diagnostics = {}
        if "coarse" in img:
            coarse_img, coarse_txt = gather_with_grad(img["coarse"]), gather_with_grad(txt["coarse"])
            per_query = [
                ranking_loss(coarse_img[:, k], coarse_txt[:, k], pids, margin=c.margin, generator=self.mining)
                if c.coarse_loss == "rank" else sdm_loss(coarse_img[:, k], coarse_txt[:, k], pids, tau=c.tau)
                for k in range(coarse_img.shape[1])]
            terms["coarse"] = c.coarse_weight * parts_on * self._reduce(per_query)
        if "fine" in img:
            fine_img, fine_txt = gather_with_grad(img["fine"]), gather_with_grad(txt["fine"])
            parts = range(fine_img.shape[1])
            if c.margin_mode == "fixed":
                per_part = [ranking_loss(fine_img[:, k], fine_txt[:, k], pids, margin=c.margin,
                                         generator=self.mining) for k in parts]
            else:
                banks = self._bank(fine_img, fine_txt, pids) if c.commonality == "H4_bank" else [None] * len(parts)
                per_part, margins = [], []
                for k in parts:
                    loss_k, (m_img, m_txt) = cmr_loss(
                        fine_img[:, k], fine_txt[:, k], pids, margin=c.margin, floor=c.margin_floor,
                        commonality=c.commonality, score_norm=c.score_norm, bank=banks[k], gate=c.margin_gate,
                        generator=self.mining)
                    per_part.append(loss_k)
                    margins += [m_img, m_txt]
                diagnostics = margin_diagnostics(torch.cat(margins), c.margin_floor)
            terms["fine"] = c.fine_weight * parts_on * self._reduce(per_part)
        terms["loss"] = sum(terms.values())
        terms.update(diagnostics)
        return terms


def margin_diagnostics(margins: torch.Tensor, floor: float) -> dict[str, torch.Tensor]:
    """The rescaled margins m̃ of a step (every fine part, both anchor directions): mean, 10/50/90 % quantiles, and
    the share of anchors held at the floor. Logged next to the loss terms (`diag_` keys), never added to the loss."""
    m = margins.detach().float()
    q = torch.quantile(m, torch.tensor([0.1, 0.5, 0.9], device=m.device))
    return {"diag_margin_mean": m.mean(), "diag_margin_p10": q[0], "diag_margin_p50": q[1],
            "diag_margin_p90": q[2], "diag_floor_rate": (m <= floor).float().mean()}


# ---------------------------------------------------------------------- analysis helpers (used by the notebooks)


def query_names(model: CMR) -> list[str]:
    """Names of the decoder's queries in their order ("coarse 0", ..., "fine 0", ...)."""
    c = model.c
    if model.decoder is None:
        return []
    if c.coarse_to_fine == "two_query_sets":
        return [f"coarse {k}" for k in range(model.n_coarse_queries)] + (
            [f"fine {k}" for k in range(c.n_fine)] if c.use_fine else [])
    return [f"fine {k}" for k in range(c.n_fine)]


@torch.no_grad()
def decoder_attention(model: CMR, images: torch.Tensor | None = None, text: dict | None = None) -> dict:
    """Cross-attention of every query (averaged over heads), as the test-time forward computes it.

    images -> "image": B×N×h×w weights of the patches (the CLS weight, with decoder_keys with_global, left out);
    text -> "text": B×N×L weights of the token positions (0 where a token is not read), "keys": B×L the positions
    read, "words": B×L the caption's word positions (between start and end of text).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = {}
    if images is not None:
        _, attention = model.image_features(images.to(device), need_weights=True)
        if model.c.decoder_keys == "with_global":
            attention = attention[..., 1:]
        h, w = model.image_encoder.grid
        out["image"] = attention.reshape(*attention.shape[:2], h, w).cpu()
    if text is not None:
        ids, mask = text["ids"].to(device), text["mask"].to(device)
        _, attention = model.text_features(ids, mask, need_weights=True)
        out["text"], out["keys"], out["words"] = attention.cpu(), model.word_keys(mask).cpu(), model.word_positions(mask).cpu()
    model.train(was_training)
    return out


def split_commonality(model: CMR, gallery: dict, queries: dict, caption_image: list[int], pids: list[int]):
    """The run's commonality of every fine query over a whole split (test): for each caption (text anchors) and its
    image (image anchors), ((c_img, c_txt), each N_f × n_captions). The split is the "batch"; H4_bank, a dataset-level
    memory, becomes H1_intra over the split."""
    definition = "H1_intra" if model.c.commonality == "H4_bank" else model.c.commonality
    img = gallery["fine"][torch.as_tensor(caption_image)]
    txt, labels = queries["fine"], torch.as_tensor(pids)
    per_part = [part_commonality(img[:, k], txt[:, k], labels, definition) for k in range(txt.shape[1])]
    return torch.stack([p[0] for p in per_part]), torch.stack([p[1] for p in per_part])


def batch_margins(model: CMR, gallery: dict, queries: dict, caption_image: list[int], pids: list[int], *,
                  batch_size: int, n_batches: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """What L_CMR would set on batches of a split: `n_batches` random batches of `batch_size` (caption, its image)
    pairs; per fine query the scores s and margins m̃ of every image and caption anchor ({"s_img", "s_txt", "m_img",
    "m_txt"}, each N_f × n_batches·batch_size). H4_bank reads the whole split as its memory."""
    c = model.c
    img_all = gallery["fine"][torch.as_tensor(caption_image)].float()
    txt_all, pid_all = queries["fine"].float(), torch.as_tensor(pids)
    g = torch.Generator().manual_seed(seed)
    out = {key: [] for key in ("s_img", "s_txt", "m_img", "m_txt")}
    for _ in range(n_batches):
        idx = torch.randperm(len(pid_all), generator=g)[:batch_size]
        rows = {key: [] for key in out}
        for k in range(txt_all.shape[1]):
            bank = (img_all[:, k], txt_all[:, k], pid_all) if c.commonality == "H4_bank" else None
            cs = part_commonality(img_all[idx, k], txt_all[idx, k], pid_all[idx], c.commonality, bank)
            for side, value in zip(("img", "txt"), cs):
                score = commonality_scores(value, c.score_norm)
                rows[f"s_{side}"].append(score)
                rows[f"m_{side}"].append(commonality_margins(score, c.margin, c.margin_floor))
        for key in out:
            out[key].append(torch.stack(rows[key]))
    return {key: torch.cat(v, dim=1) for key, v in out.items()}


def text_part_mass(attention: torch.Tensor, words: torch.Tensor, labels: list[list[str]], parts: list[str]):
    """Attention mass of every query on the words of each body part, caption by caption.

    attention: captions × queries × positions and words: captions × positions (`decoder_attention(...)["text"]` and
    `["words"]`); labels: the part label of each caption's tokens in order, without the added start and end
    (analysis.tokenized_part_labels; those a cut caption lost are ignored). Returns (mass captions × queries × parts,
    share captions × parts): `share` is the part's fraction of the caption's words, the mass a query spreading its
    attention evenly over the words would put there."""
    n, q = attention.shape[:2]
    mass, share = torch.zeros(n, q, len(parts)), torch.zeros(n, len(parts))
    for i, labs in enumerate(labels):
        read = attention[i][:, words[i]]  # the word positions that survived truncation, in order
        labs = labs[:read.shape[1]]
        for j, part in enumerate(parts):
            on = torch.tensor([lab == part for lab in labs], dtype=torch.bool)
            mass[i, :, j] = read[:, on].sum(1)
            share[i, j] = on.float().mean() if len(labs) else 0.0
    return mass, share


def image_part_mass(maps: torch.Tensor, rows: dict[str, list[int]], parts: list[str]):
    """Attention mass of every query on the patch rows of each body part: maps images × queries × h × w
    (`decoder_attention(...)["image"]`), rows: the patch rows each part covers (data.simpedes.expected_stripes(h)).
    Returns (mass images × queries × parts, share parts: the part's fraction of the rows)."""
    per_row = maps.sum(-1)  # images × queries × h
    h = per_row.shape[-1]
    mass = torch.stack([per_row[..., rows.get(part, [])].sum(-1) for part in parts], -1)
    share = torch.tensor([len(rows.get(part, [])) / h for part in parts])
    return mass, share


def split_part_mass(model: CMR, exp, evalset, token_labels: list[list[str]], image_rows: dict[str, list[int]],
                    parts: list[str], batch_size: int = 128) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The fine queries' attention mass per body part over a whole split, in batches: {"text": (mass, share) of every
    caption (`text_part_mass`), "image": (mass, share) of every image (`image_part_mass`)}."""
    fine = [k for k, name in enumerate(query_names(model)) if name.startswith("fine")]
    collate, loader = exp.collate(), exp.image_loader(train=False)
    text_mass, text_share, image_mass = [], [], []
    for start in range(0, len(evalset.captions), batch_size):
        chunk = slice(start, start + batch_size)
        maps = decoder_attention(model, text=collate.tokenize(evalset.captions[chunk]))
        mass, share = text_part_mass(maps["text"][:, fine], maps["words"], token_labels[chunk], parts)
        text_mass.append(mass)
        text_share.append(share)
    for start in range(0, len(evalset.image_paths), batch_size):
        images = torch.stack([loader(path) for path in evalset.image_paths[start:start + batch_size]])
        mass, image_share = image_part_mass(decoder_attention(model, images=images)["image"][:, fine], image_rows,
                                            parts)
        image_mass.append(mass)
    return {"text": (torch.cat(text_mass), torch.cat(text_share)), "image": (torch.cat(image_mass), image_share)}


def assign_parts(mass: torch.Tensor, share: torch.Tensor, parts: list[str]) -> list[str]:
    """Each query's body part: the one whose mass exceeds what even attention would give by the largest factor
    (mean mass / mean share; mass samples × queries × parts, share samples × parts or parts)."""
    lift = mass.mean(0) / share.reshape(-1, len(parts)).mean(0).clamp(min=1e-12)
    return [parts[int(j)] for j in lift.argmax(1)]


METHOD = Method("cmr", params=CMRRunParams, model=CMR)
