"""Losses shared by the papers, as plain functions (one docstring each).

Paper-specific losses (SSAN's compound ranking loss, CMR's commonality margin, ...) live
here too, one function per loss, so "where is loss X?" has one answer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def identity_labels_match(pids_a: torch.Tensor, pids_b: torch.Tensor) -> torch.Tensor:
    """y_ij = 1 where sample i of A and sample j of B share an identity (float matrix)."""
    return (pids_a.view(-1, 1) == pids_b.view(1, -1)).float()


def id_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Identity (classification) loss: cross-entropy over training identities, batch mean.

    The classifier is shared by image and text features in every method here, so calling this
    once per modality with the same head is what makes the two embedding spaces agree on identity.
    """
    return F.cross_entropy(logits, labels)


def matching_target(pids_rows: torch.Tensor, pids_cols: torch.Tensor, q_norm: str = "l1") -> torch.Tensor:
    """q_ij = y_ij / ‖y_i‖: the "true matching distribution" of CMPM-style losses over a batch.

    `q_norm="l1"` makes each row a distribution (CMPM paper, Zhang & Lu 2018); `"l2"` divides by the row's L2
    norm, as NAFS's official code does (docs/nafs.md §3, §7 item 2). Rows without a match stay zero.
    """
    if q_norm not in ("l1", "l2"):
        raise ValueError(f"q_norm must be 'l1' or 'l2', got {q_norm!r}")
    y = identity_labels_match(pids_rows, pids_cols)
    norm = y.sum(1, keepdim=True) if q_norm == "l1" else y.norm(dim=1, keepdim=True)
    return y / norm.clamp(min=1e-12)


def matching_kl(logits: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """mean_i Σ_j p_ij (log p_ij − log(q_ij + ε)) with p_i = softmax_j(logits_i): KL(p_i ‖ q_i) averaged over rows."""
    log_p = F.log_softmax(logits, dim=1)
    return (log_p.exp() * (log_p - torch.log(q + eps))).sum(1).mean()


def cmpm_loss(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    pids: torch.Tensor,
    *,
    q_norm: str = "l1",
    eps: float = 1e-8,
) -> torch.Tensor:
    """Cross-Modal Projection Matching (Zhang & Lu, ECCV 2018), both directions summed.

    p_ij = softmax_j(f_i · t̂_j) projects each (unnormalised) image feature on every normalised text
    feature of the batch; the loss is KL(p_i || q_i) where q_i spreads the mass over the batch entries
    of the same identity (`matching_target`, `q_norm` l1 or l2).
    """
    q = matching_target(pids, pids, q_norm)
    i2t = matching_kl(image_feats @ F.normalize(text_feats, dim=1).t(), q, eps)
    t2i = matching_kl(text_feats @ F.normalize(image_feats, dim=1).t(), q, eps)
    return i2t + t2i


def cmpc_loss(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    labels: torch.Tensor,
    class_weights: torch.Tensor,
) -> torch.Tensor:
    """Cross-Modal Projection Classification (Zhang & Lu 2018; NAFS docs/nafs.md §3), both modalities summed.

    Each feature is first projected on its paired feature of the other modality, (f_i · t̂_i) t̂_i, then classified
    by the column-normalised weights Ŵ (d × classes): no bias, no scale, no margin. The projection keeps only the
    part of the image feature that its caption can "see", so classification also pulls the pair together.
    W itself is never renormalised: its columns are normalised inside the loss, as in the official code.
    """
    w = F.normalize(class_weights, dim=0)
    t_unit, f_unit = F.normalize(text_feats, dim=1), F.normalize(image_feats, dim=1)
    image_proj = (image_feats * t_unit).sum(1, keepdim=True) * t_unit
    text_proj = (text_feats * f_unit).sum(1, keepdim=True) * f_unit
    return F.cross_entropy(image_proj @ w, labels) + F.cross_entropy(text_proj @ w, labels)


def local_matching_loss(
    local_scores: torch.Tensor,
    pids: torch.Tensor,
    *,
    temperature: float = 20.0,
    q_norm: str = "l1",
    eps: float = 1e-8,
) -> torch.Tensor:
    """NAFS's CONT term (docs/nafs.md §3): KL matching on the B × B local scores, image→text only.

    `local_scores[i, j]` = S_loc(image i, text j). p_i = softmax over texts of temperature · S_loc; the target is
    the CMPM one; mean over images. (The official code has the text→image term commented out; so does this.)
    """
    return matching_kl(temperature * local_scores, matching_target(pids, pids, q_norm), eps)


# ------------------------------------------------------------------ SSAN compound ranking loss

_CR_OPTIONS = {
    "weak_neg": ("main_captions", "weak_captions"),
    "lambda_mode": ("paper", "official_abs"),
    "reduction": ("sum", "mean"),
    "fallback_anchor": ("last_eligible", "official"),
}


def semi_hard_triplets(
    hinge: torch.Tensor,
    valid: torch.Tensor,
    margin: torch.Tensor,
    *,
    anchor_ok: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Semi-hard negative mining with one uniformly drawn negative per anchor (SSAN, docs/ssan.md §3.2).

    `hinge[a, j]` = neg_aj − pos_a + margin_a (A×N), `valid[a, j]` says whether j may be a negative of
    anchor a (another identity), `margin[a]` is the anchor's margin. The semi-hard set of a is
    {j valid : 0 < hinge_aj < margin_a}: easy negatives (hinge ≤ 0) and hard ones (neg ≥ pos) are both
    excluded. Anchors with an empty set, or with `anchor_ok[a]` False, are skipped. Returns a (k, 2)
    LongTensor of [anchor, negative] rows in anchor order. Mining looks at detached values. The draw is
    the argmax of i.i.d. uniform keys over the candidates (uniform among them), taken from a single
    `torch.rand(A, N)` call on `generator`'s device (CPU for the global RNG when `generator` is None), so
    the RNG advances by the same amount whatever the data and CPU/GPU runs draw alike.
    """
    with torch.no_grad():
        h = hinge.detach()
        cand = valid & (h > 0) & (h < margin.detach()[:, None])
        if anchor_ok is not None:
            cand = cand & anchor_ok[:, None]
        rng_device = generator.device if generator is not None else torch.device("cpu")
        keys = torch.rand(tuple(cand.shape), generator=generator, device=rng_device).to(cand.device)
        keys = keys.masked_fill(~cand, -1.0)
        anchors = cand.any(dim=1).nonzero(as_tuple=True)[0]
        return torch.stack([anchors, keys.argmax(dim=1)[anchors]], dim=1)


def ranking_hinges(
    pos: torch.Tensor,
    neg: torch.Tensor,
    valid: torch.Tensor,
    margin: torch.Tensor,
    *,
    anchor_ok: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    fallback_anchor: str = "last_eligible",
    hinge_margin: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinge values of one direction of SSAN's ranking loss, with the official "never empty" fallback.

    Anchor a has positive similarity `pos[a]`, candidate negatives `neg[a, :]` (those with `valid[a, j]`)
    and margin `margin[a]`. Returns the 1-D tensor of hinges ℓ_aj = neg_aj − pos_a + margin_a of the
    triplets chosen by `semi_hard_triplets` (all in (0, margin_a), so no clamp is needed). With
    `hinge_margin` (per anchor, CMR's rescaled margins m̃_a, docs/cmr.md §3.2) the triplets are still mined with
    `margin`, and the returned hinges are [neg_aj − pos_a + m̃_a]₊ (clamped: a smaller margin can make them
    negative). Fallback
    (docs/ssan.md §3.2): when no anchor yields a triplet, one triplet is used, the *last* anchor with its
    *first* valid negative (lowest index), and its hinge is clamped, [ℓ]₊: 0 (but still in the graph)
    when that negative is easy, ≥ margin when it is hard. "Last anchor" means the last one that could
    have been mined: it has a valid negative and passes `anchor_ok`, so the fallback never brings back
    an anchor the weak-term gate skipped (project decision; the spec only says "last anchor"). Empty
    when no anchor is eligible (single identity, or every anchor gated).
    `fallback_anchor="official"` reproduces the official loop: the anchor is always the batch's last one, even
    when gated, paired with the first negative of the last *eligible* anchor (a variable left over from the loop),
    which can share the anchor's identity. The official code crashes when no anchor is eligible; this returns
    the empty tensor there too.
    """
    hinge = neg - pos[:, None] + margin[:, None]
    idx = semi_hard_triplets(hinge, valid, margin, anchor_ok=anchor_ok, generator=generator)
    if hinge_margin is not None:  # mined with `margin` (above), hinged with m̃ (here and in the fallback)
        hinge = neg - pos[:, None] + hinge_margin[:, None]
    if idx.shape[0] > 0:
        chosen = hinge[idx[:, 0], idx[:, 1]]
        return chosen if hinge_margin is None else chosen.clamp_min(0.0)
    eligible = valid.any(dim=1) if anchor_ok is None else valid.any(dim=1) & anchor_ok
    anchors = eligible.nonzero(as_tuple=True)[0]
    if anchors.numel() == 0:
        return hinge[:0, 0]  # empty, still attached to the graph
    last = anchors[-1]
    first = valid[last].nonzero(as_tuple=True)[0][0]
    if fallback_anchor == "official":
        last = hinge.shape[0] - 1
    return hinge[last, first].clamp_min(0.0).reshape(1)


def ssan_weak_margins(
    s_pos: torch.Tensor,
    s_weak_pos: torch.Tensor,
    *,
    epoch: int,
    alpha1: float = 0.2,
    alpha2_start_epoch: int = 5,
    lambda_mode: str = "paper",
    weak_gate: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-anchor margins α2_i of SSAN's weak term and the gate mask (docs/ssan.md §3.2, §7 items 4–6).

    `s_pos` = S(I_i, D_i), `s_weak_pos` = S(I_i, D′_i) (1-D). Epochs (0-based) before `alpha2_start_epoch`:
    α2_i = α1/2 for every anchor and no gate. From then on α2_i = (λ_i + 1)·α1/2 with λ_i detached:
    "paper" λ_i = S(I_i,D′_i)/S(I_i,D_i) clipped to [0, 1]; "official_abs" λ_i = |S(I_i,D′_i)|/|S(I_i,D_i)|
    clipped at 1, except that a ratio of exactly 1 becomes 2 (α2 = 1.5·α1), as the official code's
    `(1 ≥ λ)·λ + (λ ≥ 1)` gives. A 0/0 ratio counts as λ = 0 and x/0 as λ = 1 (both NaN in the official code).
    Returns (α2, anchor_ok): anchor_ok is None unless `weak_gate` > 0 and the adaptive margins are active, then it
    is α2_i ≥ weak_gate (the official code's 0.16 gate skips anchors with α2_i < 0.16, i.e. λ_i < 0.6).
    """
    if lambda_mode not in _CR_OPTIONS["lambda_mode"]:
        raise ValueError(f"lambda_mode must be one of {_CR_OPTIONS['lambda_mode']}, got {lambda_mode!r}")
    s_pos, s_weak_pos = s_pos.detach(), s_weak_pos.detach()
    if epoch < alpha2_start_epoch:
        return torch.full_like(s_pos, alpha1 / 2), None
    if lambda_mode == "paper":
        lam = (s_weak_pos / s_pos).nan_to_num(nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)
    else:
        ratio = s_weak_pos.abs() / s_pos.abs()
        lam = torch.where(ratio == 1.0, 2.0, ratio.nan_to_num(nan=0.0, posinf=1.0).clamp(max=1.0))
    alpha2 = (lam + 1.0) * alpha1 / 2
    return alpha2, (alpha2 >= weak_gate if weak_gate > 0 else None)


def compound_ranking_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    weak_txt: torch.Tensor | None,
    pids: torch.Tensor,
    *,
    epoch: int,
    alpha1: float = 0.2,
    beta: float = 0.1,
    alpha2_start_epoch: int = 5,
    weak_term: bool = True,
    weak_gate: float = 0.0,
    weak_neg: str = "main_captions",
    lambda_mode: str = "paper",
    reduction: str = "sum",
    fallback_anchor: str = "last_eligible",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SSAN's Compound Ranking (CR) loss (Ding et al. 2021; docs/ssan.md §3.2, quirks §7 items 3–7).

    img, txt, weak_txt: B×D features of the images I_i, their own captions D_i and their weak captions
    D′_i (a caption of another image of the same identity; None with weak_term=False); pids: B labels. Features are L2-normalised
    (eps 1e-8) into S = cos(I, D) and S′ = cos(I, D′). Returns strong + β·weak.

    Paper: L = [α1 − S(I,D) + S(I,D_n)]₊ + [α1 − S(I,D) + S(I_n,D)]₊ + β[α2 − S(I,D′) + S(I,D_n)]₊
    + β[α2 − S(I,D′) + S(I_n,D′)]₊ with α2 = (λ+1)·α1/2, λ = min(S(I,D′)/S(I,D), 1). The paper is silent on
    which negatives are used; the official code (and this function) mines, per anchor and direction, one
    semi-hard negative drawn uniformly from {j of another identity : 0 < ℓ_j < margin}, skips anchors
    without one, and sums the hinges ℓ_j. The positive of anchor i is only pair i (the diagonal); other
    same-identity captions/images are neither positives nor negatives.

    - Strong term (margin α1): image anchors on S (negatives D_j), text anchors on Sᵀ (negatives I_j).
    - Weak term (margin α2_i, see `ssan_weak_margins`; `weak_term=False` drops it, the plain ranking loss
      of the ablation): image anchor I_i with positive D′_i, negatives D_j of other identities, i.e. S_ij
      (paper, `weak_neg="main_captions"`); the official code uses the weak captions D′_j, i.e. S′_ij
      (`"weak_captions"`). Text anchor D′_i with positive I_i and other-identity images, S′_ji.
    - Official-code behaviour behind flags (project defaults follow the paper): α2 fixed at α1/2 before
      `alpha2_start_epoch` (official 5; kept by default since the paper is silent); λ with absolute values
      (`lambda_mode="official_abs"`); the weak-anchor gate α2_i < 0.16 (`weak_gate=0.16`, default off).
    - Fallback: each direction of each term falls back on its own, independently, to one triplet (last
      anchor, its first negative, hinge clamped at 0) when it mines none; see `ranking_hinges`. This
      reads "batch yields no triplet" per direction, as the official code mines each direction in its own
      call; the rule exists there to avoid an empty tensor. In the weak term the fallback anchor is the last
      *ungated* one (`fallback_anchor="official"`: the last anchor, see `ranking_hinges`); with every anchor
      gated a direction contributes nothing.
    - reduction: "sum" (official) over all triplets of both directions; "mean" averages the hinges of a
      term over its triplets, both directions pooled (fallback counted), then strong + β·weak.
    - Mining draws come from `generator` (global torch RNG when None); each direction draws one
      B×B uniform matrix, strong term first, so the RNG use does not depend on the data.
    - No negatives at all (B = 1, or a single identity in the batch): returns a zero that keeps a
      grad_fn, 0·(Σimg + Σtxt + Σweak_txt), so the training step still backpropagates; the official
      code crashes there (indexes the first negative of an empty set).
    Invalid option strings raise ValueError naming the option.
    """
    for name, value in (("weak_neg", weak_neg), ("lambda_mode", lambda_mode), ("reduction", reduction),
                        ("fallback_anchor", fallback_anchor)):
        if value not in _CR_OPTIONS[name]:
            raise ValueError(f"{name} must be one of {_CR_OPTIONS[name]}, got {value!r}")
    if weak_txt is None and weak_term:
        raise ValueError("weak_txt is required when weak_term=True")
    weak_shape = img.shape if weak_txt is None else weak_txt.shape
    if img.dim() != 2 or txt.shape != img.shape or weak_shape != img.shape or pids.numel() != img.shape[0]:
        raise ValueError(
            f"expected img, txt, weak_txt of one shape B×D and B pids, got {tuple(img.shape)}, "
            f"{tuple(txt.shape)}, {tuple(weak_shape)}, {pids.numel()} pids"
        )
    pids = pids.reshape(-1).to(img.device)
    valid = pids[:, None] != pids[None, :]  # symmetric: also the mask of text anchors × image negatives
    if not bool(valid.any()):
        weak_sum = weak_txt.sum() if weak_txt is not None else 0.0
        return (img.sum() + txt.sum() + weak_sum) * 0.0 + 0.0  # + 0.0: no -0.0

    def reduce(hinges: list[torch.Tensor]) -> torch.Tensor:
        h = torch.cat(hinges)
        return h.mean() if reduction == "mean" and h.numel() > 0 else h.sum()

    img_u = F.normalize(img, dim=1, eps=1e-8)
    txt_u = F.normalize(txt, dim=1, eps=1e-8)
    s = img_u @ txt_u.t()
    pos = s.diagonal()
    m1 = torch.full_like(pos, alpha1)
    loss = reduce([
        ranking_hinges(pos, s, valid, m1, generator=generator),      # image anchors, caption negatives
        ranking_hinges(pos, s.t(), valid, m1, generator=generator),  # caption anchors, image negatives
    ])
    if not weak_term:
        return loss
    s_weak = img_u @ F.normalize(weak_txt, dim=1, eps=1e-8).t()
    pos_w = s_weak.diagonal()
    alpha2, anchor_ok = ssan_weak_margins(
        pos, pos_w, epoch=int(epoch), alpha1=alpha1, alpha2_start_epoch=alpha2_start_epoch,
        lambda_mode=lambda_mode, weak_gate=weak_gate,
    )
    img_neg = s if weak_neg == "main_captions" else s_weak
    weak = reduce([
        ranking_hinges(pos_w, img_neg, valid, alpha2, anchor_ok=anchor_ok, generator=generator,
                       fallback_anchor=fallback_anchor),
        ranking_hinges(pos_w, s_weak.t(), valid, alpha2, anchor_ok=anchor_ok, generator=generator,
                       fallback_anchor=fallback_anchor),
    ])
    return loss + beta * weak


# ---------------------------------------------------------------------------------------- image ReID and SAN


def smoothed_id_loss(logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """Identity loss with label smoothing (Szegedy et al. 2016), the ReID ID loss of SAN and torchreid: cross-entropy
    against the targets (1 − ε)·onehot + ε/K over the K training identities, batch mean; ε = 0 is `id_loss`."""
    return F.cross_entropy(logits, labels, label_smoothing=epsilon)


def batch_hard_triplet_loss(feats: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017): each anchor's farthest positive and nearest negative in the
    batch by Euclidean distance, mean over anchors of [d(a, p) − d(a, n) + margin]₊.

    As in the torchreid code SAN uses, squared distances are clamped at 1e-12 before the square root and the anchor
    is one of its own positives (at distance 1e-6). Tied hardest candidates share the gradient equally; an anchor
    without a negative (a batch of one identity) contributes 0."""
    sq = feats.pow(2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * feats @ feats.t()).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    hardest_pos = dist.masked_fill(~same, float("-inf")).amax(1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(1)
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def texture_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SAN's reconstruction loss L_Rec: mean absolute error between the predicted texture and its target (both
    B × 3 × H × W in [−1, 1]). The shapes must be equal: a 64 × 64 pseudo-texture against a 256 × 256 prediction is
    resized where it is loaded, never broadcast here."""
    if pred.shape != target.shape:
        raise ValueError(f"texture_l1_loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ; "
                         "resize the target to the decoder's texture size where it is loaded")
    return (pred - target).abs().mean()


def official_ltr_triplets(labels: torch.Tensor, k: int = 4) -> list[tuple[torch.Tensor, ...]]:
    """The fixed triplets of SAN's official L_TR, one (anchors, positives, negatives) index triple per decoder level.

    The batch must be P identity blocks of K = 4 consecutive samples (4g .. 4g+3 share an identity, 4g+4 starts the
    next). For g = 0 .. P−2: level 1 (4g, 4g+1, 4g+4), level 2 (4g+1, 4g+2, 4g+5), level 3 (4g+2, 4g+3, 4g+6),
    level 4 (4g+3, 4g, 4g+4), written (anchor, positive, negative). The official code hard-codes these offsets; here
    they come from the identity blocks, which are checked."""
    if k != 4:
        raise ValueError(f"official_ltr_triplets: the official L_TR offsets need K = 4 images per identity, got {k}")
    if labels.numel() % k or labels.numel() < 2 * k:
        raise ValueError(f"official_ltr_triplets: a batch of {labels.numel()} is not P >= 2 blocks of K = {k}")
    blocks = labels.view(-1, k)
    if not bool((blocks == blocks[:, :1]).all()) or bool((blocks[1:, 0] == blocks[:-1, 0]).any()):
        raise ValueError("official_ltr_triplets: the batch is not in identity blocks (samples 4g..4g+3 must share an "
                         "identity and 4g+4 must start another); use the identity-balanced sampler")
    g = torch.arange(blocks.shape[0] - 1, device=labels.device) * k
    offsets = ((0, 1, 4), (1, 2, 5), (2, 3, 6), (3, 0, 4))
    return [(g + a, g + p, g + n) for a, p, n in offsets]


def batch_hard_map_triplets(maps: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(anchors, positives, negatives) for one decoder level mined batch-hard (an option of this project, not the
    paper's): every sample is an anchor, with its farthest positive (itself excluded) and nearest negative by the
    Euclidean distance of the globally average-pooled maps. Indices only: no gradient flows through the mining."""
    with torch.no_grad():
        pooled = maps.flatten(2).mean(2).float()
        dist = torch.cdist(pooled, pooled)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        positives = dist.masked_fill(~same | eye, float("-inf")).argmax(1)
        negatives = dist.masked_fill(same, float("inf")).argmin(1)
    return torch.arange(len(labels), device=labels.device), positives, negatives


def decoder_triplet_loss(maps: torch.Tensor, anchors: torch.Tensor, positives: torch.Tensor,
                         negatives: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """One decoder level of SAN's L_TR, a triplet constraint on decoder feature maps used as a perceptual loss:
    Σ_t [D(a_t, p_t) − D(a_t, n_t) + margin]₊, with D the mean squared difference of two samples' whole maps
    (mean over C·H·W). Summed over the triplets, as the official code sums (it does not average)."""
    def d(i, j):
        return (maps[i] - maps[j]).pow(2).flatten(1).mean(1)

    return F.relu(d(anchors, positives) - d(anchors, negatives) + margin).sum()


# ------------------------------------------------------------------ IRRA's SDM and CMR's ranking losses

def sdm_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, pids: torch.Tensor, *, tau: float = 0.02,
             eps: float = 1e-8) -> torch.Tensor:
    """Similarity Distribution Matching (IRRA, Jiang & Ye 2023; docs/cmr.md §3.3), both directions summed.

    S = cosines of the L2-normalised features over the batch, divided by the temperature τ; per row softmax(S_i) is
    matched to the same-identity distribution q_i (`matching_target`, l1) by KL(p_i ‖ q_i) with ε inside the log,
    mean over rows (`matching_kl`); image→text plus text→image. Unlike CMPM both sides are normalised and τ sharpens.
    """
    s = F.normalize(image_feats, dim=1) @ F.normalize(text_feats, dim=1).t() / tau
    q = matching_target(pids, pids, "l1")  # symmetric: also the target of the text rows
    return matching_kl(s, q, eps) + matching_kl(s.t(), q, eps)


def ranking_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    pids: torch.Tensor,
    *,
    margin: float = 0.2,
    anchor_margins: tuple[torch.Tensor, torch.Tensor] | None = None,
    anchor_ok: tuple[torch.Tensor, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Bidirectional semi-hard ranking loss (the SSAN → PLOT lineage, docs/cmr.md §3.1): sum of the hinges.

    img, txt: B×D pairs; S_ij = cos(img_i, txt_j) (eps 1e-8). The positive of anchor i is its own pair (the
    diagonal), its negatives the samples of other identities. Image anchors rank captions (rows of S), caption anchors
    rank images (rows of Sᵀ); each anchor gets one semi-hard negative, 0 < S_ij − S_ii + m < m, drawn uniformly, and
    anchors without one are skipped, with one fallback triplet when a direction mines none (`ranking_hinges`).

    anchor_margins: None (the fixed margin m), or (m̃ of the image anchors, m̃ of the caption anchors), each B: mining
    still uses m, the hinges use m̃ (L_CMR, `cmr_loss`). anchor_ok: None, or (image, caption) B-masks of the anchors
    allowed to mine. Mining draws two B×B uniform matrices from `generator` (image anchors first). A batch of one
    identity has no negatives: the result is a zero that keeps a grad_fn.
    """
    pids = pids.reshape(-1).to(img.device)
    valid = pids[:, None] != pids[None, :]  # symmetric: also caption anchors × image negatives
    if not bool(valid.any()):
        return (img.sum() + txt.sum()) * 0.0 + 0.0
    s = F.normalize(img, dim=1, eps=1e-8) @ F.normalize(txt, dim=1, eps=1e-8).t()
    pos = s.diagonal()
    m = torch.full_like(pos, margin)
    hinge_m = anchor_margins if anchor_margins is not None else (None, None)
    ok = anchor_ok if anchor_ok is not None else (None, None)
    return torch.cat([
        ranking_hinges(pos, s, valid, m, anchor_ok=ok[0], generator=generator, hinge_margin=hinge_m[0]),
        ranking_hinges(pos, s.t(), valid, m, anchor_ok=ok[1], generator=generator, hinge_margin=hinge_m[1]),
    ]).sum()


COMMONALITY = ("H1_intra", "H2_cross", "H3_rank", "H4_bank")
SCORE_NORMS = ("minmax", "clip", "none")


def _mean_where(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row means of `values` over the True entries of `mask`; NaN for a row without any."""
    count = mask.sum(1)
    total = torch.where(mask, values, torch.zeros_like(values)).sum(1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


@torch.no_grad()
def part_commonality(
    img: torch.Tensor,
    txt: torch.Tensor,
    pids: torch.Tensor,
    definition: str = "H1_intra",
    bank: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Commonality c of one body part for every image anchor and every caption anchor (docs/cmr.md §3.2).

    img, txt: B×D embeddings of the same part (query k) of each image and its caption; pids: B. Computed without
    gradient (the margins it sets are constants of the loss). The definitions (our reconstruction):
    - H1_intra: mean cosine to the part of the other-identity samples of the anchor's own modality;
    - H2_cross: the same against the other modality (image anchors against captions, caption anchors against images);
    - H3_rank: the share of the other modality's other-identity samples that are more similar to the anchor than its
      own pair (S_ij > S_ii): a rank, free of the similarity scale;
    - H4_bank: H1_intra against a memory bank (bank_img Q×D, bank_txt Q×D, bank_pids Q; pid < 0 marks an empty slot)
      that spans many batches: dataset-level instead of batch-level commonality.
    Returns (c_img, c_txt), each B; NaN for an anchor without any other-identity sample.
    """
    if definition not in COMMONALITY:
        raise ValueError(f"commonality must be one of {COMMONALITY}, got {definition!r}")
    img_u, txt_u = F.normalize(img.detach().float(), dim=1), F.normalize(txt.detach().float(), dim=1)
    pids = pids.reshape(-1).to(img.device)
    if definition == "H4_bank":
        if bank is None:
            raise ValueError("commonality H4_bank needs a memory bank (bank_img, bank_txt, bank_pids)")
        bank_img, bank_txt, bank_pids = bank
        other = (bank_pids[None, :] >= 0) & (bank_pids[None, :] != pids[:, None])
        return (_mean_where(img_u @ F.normalize(bank_img.float(), dim=1).t(), other),
                _mean_where(txt_u @ F.normalize(bank_txt.float(), dim=1).t(), other))
    other = pids[:, None] != pids[None, :]
    if definition == "H1_intra":
        return _mean_where(img_u @ img_u.t(), other), _mean_where(txt_u @ txt_u.t(), other)
    s = img_u @ txt_u.t()
    if definition == "H2_cross":
        return _mean_where(s, other), _mean_where(s.t(), other)
    pos = s.diagonal()[:, None]
    return _mean_where((s > pos).float(), other), _mean_where((s.t() > pos).float(), other)


def commonality_scores(c: torch.Tensor, norm: str = "minmax") -> torch.Tensor:
    """s = normalised (1 − c) of one part's anchors: common parts (high c) get a small s (docs/cmr.md §3.2).

    minmax: (s − min)/(max − min) over the anchors (the most common anchor 0, the most distinctive 1); clip: 1 − c
    clipped to [0, 1]; none: 1 − c unchanged. An undefined commonality (NaN: no other identity in the batch) gives
    s = 1 (the full margin), and so does every anchor under minmax when all are equal (nothing to rank).
    """
    if norm not in SCORE_NORMS:
        raise ValueError(f"score_norm must be one of {SCORE_NORMS}, got {norm!r}")
    s = 1.0 - c
    known = ~torch.isnan(s)
    if norm == "clip":
        s = s.clamp(0.0, 1.0)
    elif norm == "minmax" and bool(known.any()):
        lo, hi = s[known].min(), s[known].max()
        s = (s - lo) / (hi - lo) if float(hi - lo) > 1e-12 else torch.ones_like(s)
    return torch.where(known, s, torch.ones_like(s))


def commonality_margins(s: torch.Tensor, margin: float = 0.2, floor: float = 0.05) -> torch.Tensor:
    """CMR's per-anchor margin m̃ = max(m · s, floor) (the form of PLOT's unused `calculate_loss_local`)."""
    return (margin * s).clamp(min=floor)


def cmr_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    pids: torch.Tensor,
    *,
    margin: float = 0.2,
    floor: float = 0.05,
    commonality: str = "H1_intra",
    score_norm: str = "minmax",
    bank: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    gate: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """L_CMR, the commonality-based margin ranking loss, on one fine part (Park et al. 2024; docs/cmr.md §3.2).

    The ranking loss of `ranking_loss` with a margin lowered for common parts, so that two people who share, say, the
    same black trousers are not pushed apart as hard on the trousers as on a rare red hat. Per anchor (image and
    caption anchors separately): commonality c (`part_commonality`, gradient-free) → score s (`commonality_scores`)
    → margin m̃ = max(m · s, floor) (`commonality_margins`); negatives are mined with the unscaled m, the hinges
    use m̃. gate: None, or anchors with m̃ < gate do not mine (the lineage's 0.16 gate; off by default, docs/cmr.md
    §7 item 3). Returns (loss, (m̃ of the image anchors, m̃ of the caption anchors)); the margins are for logging.
    """
    c_img, c_txt = part_commonality(img, txt, pids, commonality, bank)
    m_img = commonality_margins(commonality_scores(c_img, score_norm), margin, floor)
    m_txt = commonality_margins(commonality_scores(c_txt, score_norm), margin, floor)
    ok = None if gate is None else (m_img >= gate, m_txt >= gate)
    loss = ranking_loss(img, txt, pids, margin=margin, anchor_margins=(m_img, m_txt), anchor_ok=ok,
                        generator=generator)
    return loss, (m_img, m_txt)


# ------------------------------------------------------------------ LCR²S distillation (docs/lcr2s.md §3.2)

_RELATIONS = ("cosine", "softmax_t")


def feature_kd_loss(student: torch.Tensor, teacher: torch.Tensor, *, normalise: bool = True) -> torch.Tensor:
    """LCR²S feature distillation: mean over samples of ‖s_i − t_i‖² (the squared distance summed over dimensions).

    `student`, `teacher`: B×d features of the same samples; the teacher side is a fixed target (detached here, so a
    caller cannot train the teacher by mistake). `normalise=True` L2-normalises both first, so the term equals
    2 − 2·cos(s_i, t_i) per sample, scale-free whatever the feature norms (the reconstruction's default). Summing over
    dimensions rather than averaging keeps the term O(1) at any width d, like the base loss.
    """
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(f"expected student and teacher features of one shape B×d, got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    teacher = teacher.detach()
    if normalise:
        student, teacher = F.normalize(student, dim=1, eps=1e-12), F.normalize(teacher, dim=1, eps=1e-12)
    return (student - teacher).pow(2).sum(1).mean()


def relation_matrix(image_feats: torch.Tensor, text_feats: torch.Tensor, *, relation: str = "cosine",
                    temperature: float = 0.1) -> torch.Tensor:
    """R_ij between image i and text j of a batch (B×B): their cosine (`"cosine"`), or the row-wise softmax over the
    texts of cosine / temperature (`"softmax_t"`, each image's distribution over the batch's captions)."""
    if relation not in _RELATIONS:
        raise ValueError(f"relation must be one of {_RELATIONS}, got {relation!r}")
    r = F.normalize(image_feats, dim=1, eps=1e-12) @ F.normalize(text_feats, dim=1, eps=1e-12).t()
    return r if relation == "cosine" else (r / temperature).softmax(dim=1)


def relation_kd_loss(student_image: torch.Tensor, student_text: torch.Tensor, teacher_image: torch.Tensor,
                     teacher_text: torch.Tensor, *, relation: str = "cosine", temperature: float = 0.1) -> torch.Tensor:
    """LCR²S relation distillation: (1/B²) ‖R^S − R^T‖²_F over the image–text relation matrices of the batch
    (`relation_matrix`), R^T from the teacher's (detached) features. Dividing by B² makes it the mean squared entry,
    independent of the batch size; it sees the whole batch, so under DDP pass the gathered features."""
    r_s = relation_matrix(student_image, student_text, relation=relation, temperature=temperature)
    r_t = relation_matrix(teacher_image.detach(), teacher_text.detach(), relation=relation, temperature=temperature)
    if r_s.shape != r_t.shape:
        raise ValueError(f"student and teacher relation matrices differ in shape: {tuple(r_s.shape)} vs "
                         f"{tuple(r_t.shape)}")
    return (r_s - r_t).pow(2).sum() / r_s.shape[0] ** 2
