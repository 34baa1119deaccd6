"""NAFS test-time scoring: contextual non-local attention (CNL) score and re-ranking by visual neighbours (RVN).

Documentation: docs/nafs.md §2.3 (CNL), §5 (test-time similarity, RVN), §7 items 1, 11 and 16 (official-code
quirks and cost), docs/evaluation.md §3 (tie rule) and §6 (re-ranking is a separate row). Implemented from the spec, not
from the official code.

Public API
- :func:`cnl_scores` — S_loc for every (text, image) pair, vectorised over texts and images in bounded blocks.
- :func:`visual_similarity` — image×image cosine of the global image features, input of RVN (§5).
- :func:`topk_mask` — top-K membership under the project tie rule (metrics.top_k_indices, the metrics' own rule).
- :func:`rvn_bonus` / :func:`rvn_rerank` — RVN, ``mode="intended"`` (default), ``"official"`` or ``"off"`` (§7 item 1).
- :func:`cnl_weights` — the attention weights of steps 1–4 for one text (reference loop, attention figures).

The straightforward reference loops (per text; Python sets for RVN; the official code's cost structure, §7 item 16)
that the tests and benchmarks compare with live in tests/reference_impl.py, outside the package.

Every function returns new tensors: re-ranked scores are reported as their own row, never folded into the plain result
(docs/evaluation.md §6).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tireid_core.metrics import cosine_similarity, top_k_indices

RVN_MODES = ("off", "intended", "official")

#: Defaults from docs/nafs.md §2.3 / §4 (λ_softmax = 20, LeakyReLU 0.1) and §5 (RVN K = 5, weight 1).
CNL_TEMPERATURE = 20.0
CNL_LEAKY_SLOPE = 0.1
CNL_EPS = 1e-8
RVN_K = 5
RVN_WEIGHT = 1.0

# Elements of one Tc × U × R × Ic working block; about 3 such buffers are live at once. Images are split so that a block
# holds at least _BLOCK_TEXTS texts (matrix products with enough rows). On 2 CPU cores, blocks of 2**19..2**21 elements
# and image chunks of 128..3074 stay within about 20 % of the best (benchmarks/bench_nafs_eval.py problem).
_CNL_BLOCK = {"cpu": 1 << 20, "cuda": 1 << 26}
_BLOCK_TEXTS = 16


# ----------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------

def _float_dtype(*tensors):
    dtype = torch.float32
    for t in tensors:
        if t.dtype == torch.float64:
            dtype = torch.float64
    return dtype


def _cnl_inputs(text_units, text_mask, image_units, text_values, image_values):
    keys = torch.as_tensor(text_units)
    queries = torch.as_tensor(image_units, device=keys.device)
    values = keys if text_values is None else torch.as_tensor(text_values, device=keys.device)
    img_values = queries if image_values is None else torch.as_tensor(image_values, device=keys.device)
    for name, t in (("text_units", keys), ("image_units", queries), ("text_values", values),
                    ("image_values", img_values)):
        if t.ndim != 3:
            raise ValueError(f"{name} must be 3-D (items × units × d), got shape {tuple(t.shape)}")
        if not (t.is_floating_point()):
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
    if values.shape != keys.shape:
        raise ValueError(f"text_values shape {tuple(values.shape)} != text_units shape {tuple(keys.shape)}")
    if img_values.shape[:2] != queries.shape[:2]:
        raise ValueError(f"image_values shape {tuple(img_values.shape)} does not match image_units "
                         f"{tuple(queries.shape)} in items × units")
    if queries.shape[2] != keys.shape[2]:
        raise ValueError(f"text and image units differ in width: {keys.shape[2]} vs {queries.shape[2]}")
    if img_values.shape[2] != values.shape[2]:
        raise ValueError(f"text and image values differ in width: {values.shape[2]} vs {img_values.shape[2]}")
    n_texts, n_units = keys.shape[:2]
    if min(n_texts, n_units, queries.shape[0], queries.shape[1]) == 0:
        raise ValueError("empty input: every dimension of text_units and image_units must be positive")
    if text_mask is None:
        mask = torch.ones(n_texts, n_units, dtype=torch.bool, device=keys.device)
    else:
        mask = torch.as_tensor(text_mask, device=keys.device)
        if mask.shape != (n_texts, n_units):
            raise ValueError(f"text_mask must have shape {(n_texts, n_units)}, got {tuple(mask.shape)}")
        mask = mask.bool()
    empty = (~mask.any(1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(f"{empty.numel()} text(s) have no valid unit (first: index {int(empty[0])}); "
                         "the softmax over text units would be empty")
    dtype = _float_dtype(keys, values, queries, img_values)
    return (keys.to(dtype), values.to(dtype), mask, queries.to(dtype), img_values.to(dtype))


def l2_normalize(x, eps=CNL_EPS, dim=-1):
    """x / (‖x‖ + ε): the convention for every normalisation in this module (ε added to the norm)."""
    return x / (torch.linalg.vector_norm(x, dim=dim, keepdim=True) + eps)


def _norm_over_regions(s, inplace):
    """‖s[:, :, :, i]‖ over dim 2 of an n × L × R × Ic block, as n × L × 1 × Ic.

    An explicit sum over the R slices: torch.linalg.vector_norm over a middle dimension is about 250× slower on CPU.
    """
    sq = s[:, :, 0].square()
    for r in range(1, s.shape[2]):
        sq = sq.addcmul_(s[:, :, r], s[:, :, r]) if inplace else sq.addcmul(s[:, :, r], s[:, :, r])
    return (sq.sqrt_() if inplace else sq.sqrt()).unsqueeze(2)


def _needs_stabilizing(temperature, n_units, values, dtype):
    """True when exp(λ·s̃) without a max shift could overflow in the quadratic form (see cnl_scores, step 4).

    s̃ ∈ [−1, 1] after the column normalisation, so e = exp(λ s̃) ≤ e^|λ|, Z = Σ_w e ≤ U e^|λ| and
    ‖Σ_w e_w v_w‖² ≤ Z² max‖v‖². The fast path is taken while that bound stays 4 nats below the dtype's maximum
    and e^−|λ| stays a normal number.
    """
    info = torch.finfo(dtype)
    vmax = float(torch.linalg.vector_norm(values.detach(), dim=-1).max()) if values.numel() else 1.0
    log_bound = 2.0 * (math.log(n_units) + abs(temperature) + math.log(max(vmax, 1e-30)))
    return log_bound > math.log(info.max) - 4.0 or abs(temperature) > -math.log(info.tiny) - 4.0


# ----------------------------------------------------------------------------------------------
# CNL
# ----------------------------------------------------------------------------------------------

def cnl_scores(text_units, text_mask, image_units, *, text_values=None, image_values=None,
               temperature=CNL_TEMPERATURE, leaky_slope=CNL_LEAKY_SLOPE, eps=CNL_EPS, chunk=None,
               stabilize=None):
    """Contextual non-local attention score S_loc(I, T) for every text T and image I (docs/nafs.md §2.3), T × I.

    Inputs (docs/nafs.md §2.1, §2.2: all scales of a modality form one set of units)
    - ``text_units``: T × U × d text **keys** k_w (global unit, sub-sentence units and word units of each caption);
      ``text_values``: T × U × d text values v_w (default: ``text_units``).
    - ``text_mask``: T × U, true for valid units (None = all valid). Masked units take no part in any step; every text
      needs at least one valid unit. Their position does not matter (valid units need not be a prefix).
    - ``image_units``: I × R × d image **queries** q_r (global unit and stripes, all scales); ``image_values``:
      I × R × d image values u_r (default: ``image_units``). Images have no mask: all R units are used.

    Steps, in the spec's words (image I with units r = 1..R, text T with valid units w = 1..n_word). Only the
    image→text direction enters the score — image units attend over text units; the text→image direction that the
    official code also computes is never used and is not computed here (§2.3).
    1. s_rw = cos(q_r, k_w).
    2. s̄ = LeakyReLU(s) with negative slope ``leaky_slope`` (0.1).
    3. s̃_rw = s̄_rw / sqrt(Σ_r' s̄_r'w²): "normalise each word over image units" — each column w of the R × n_word
       matrix is L2-normalised over the image units r.
    4. a_rw = softmax_w(λ s̃_rw) over the text's valid units, λ = ``temperature`` (20).
    5. t_r = Σ_w a_rw v_w, L2-normalised.
    6. S_loc(I, T) = (1/R) Σ_r cos(u_r, t_r) (R = 6 in the paper configuration).

    Left open by the spec, exposed as parameters
    - ``eps`` (1e-8): every normalisation and cosine above is x / (‖x‖ + ε) — in steps 1, 3, 5 and for both factors of
      the cosine in step 6 (a column of step 3 that is all zero stays zero). [inferred; the spec names no ε]
    - ``stabilize``: numerical only. None (default) picks automatically; see below.
    - ``chunk``: elements of one working block (texts × units × image units × images); None = a device default
      (2**20 on CPU, 2**26 on CUDA). Memory is about 3 blocks plus the T × I output and a packed copy of the text
      units, whatever the number of pairs.

    How it is computed (same numbers as the steps above, up to rounding; the tests compare with the literal loop,
    tests/reference_impl.py ``cnl_scores_loop``)
    - Keys, queries (step 1) are normalised once; valid units are packed to the front of each text and texts are
      processed sorted by their number of valid units, so a block only carries the units its longest text needs.
    - Step 1 for a block of texts × a block of images is one matrix product; steps 2–4 run in place on that block.
      Because |s̃| ≤ 1 after step 3, exp(λ s̃) cannot overflow for moderate λ, so no max is subtracted
      (``stabilize=None`` checks the bound and subtracts the per-row max over w when it fails; ``True``/``False``
      force either).
    - Steps 5–6 never form t_r: with e_rw = exp(λ s̃_rw) and Z_r = Σ_w e_rw,
      u_r · t_r = (Σ_w e_rw (u_r · v_w)) / Z_r (u_r · v_w from one matrix product) and
      ‖t_r‖² = e_rᵀ G e_r / Z_r² with the text's Gram matrix G = V Vᵀ (U × U), one batched product that also
      yields Z_r through an extra row holding the mask. This costs U² instead of U·d per (text, image, unit).
    - Masked units get the key of the text's first valid unit (so they never win a max) and a zero value (so they
      add nothing to u·t or to G); the mask row keeps them out of Z.

    Works on CPU and CUDA tensors, float32 or float64 (half types are computed in float32), and is differentiable
    (in-place operations are used only when no input requires grad), so it can also score the B × B batch pairs of the
    CONT loss (§3).
    """
    keys, values, mask, queries, img_values = _cnl_inputs(text_units, text_mask, image_units, text_values,
                                                           image_values)
    n_texts, n_units, d = keys.shape
    n_images, n_regions, _ = queries.shape
    dv = values.shape[2]
    device, dtype = keys.device, keys.dtype
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (keys, values, queries, img_values))
    inplace = not grad
    if stabilize is None:
        stabilize = _needs_stabilizing(float(temperature), n_units, values, dtype)
    budget = int(chunk) if chunk is not None else _CNL_BLOCK.get(device.type, _CNL_BLOCK["cpu"])
    if budget < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")

    # Step 1 normalisation of keys and queries, once. Pack valid units first (order among them kept).
    kn = l2_normalize(keys, eps)
    qn = l2_normalize(queries, eps)
    counts = mask.sum(1)
    unit_order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    packed_mask = mask.gather(1, unit_order)
    kn = kn.gather(1, unit_order[..., None].expand(-1, -1, d))
    vp = values.gather(1, unit_order[..., None].expand(-1, -1, dv))
    if inplace:  # masked: the first valid key and a zero value
        masked = ~packed_mask
        kn[masked] = kn[:, :1].expand_as(kn)[masked]
        vp[masked] = 0
    else:
        kn = torch.where(packed_mask[..., None], kn, kn[:, :1])
        vp = torch.where(packed_mask[..., None], vp, torch.zeros((), dtype=dtype, device=device))
    mask_f = packed_mask.to(dtype)
    u_inv = 1.0 / (torch.linalg.vector_norm(img_values, dim=-1) + eps)  # I × R, for the cosine of step 6

    text_order = torch.argsort(counts, stable=True)
    sorted_counts = counts[text_order].tolist()

    image_chunk = max(1, min(n_images, budget // (n_regions * n_units * _BLOCK_TEXTS)))
    out = torch.empty(n_texts, n_images, dtype=dtype, device=device)
    # Image blocks in layout R × Ic, so that the sums over r (step 3, step 6) run over an outer dimension.
    image_blocks = []
    for i0 in range(0, n_images, image_chunk):
        i1 = min(n_images, i0 + image_chunk)
        image_blocks.append((i0, i1, qn[i0:i1].transpose(0, 1).reshape(-1, d),
                             img_values[i0:i1].transpose(0, 1).reshape(-1, dv), u_inv[i0:i1].T))
    per_unit = n_regions * image_chunk

    p = 0
    while p < n_texts:
        n = max(1, budget // (sorted_counts[p] * per_unit))
        length = sorted_counts[min(n_texts, p + n) - 1]
        n = max(1, budget // (length * per_unit))
        q_end = min(n_texts, p + n)
        n, length = q_end - p, sorted_counts[q_end - 1]
        idx = text_order[p:q_end]
        kc = kn[idx, :length].reshape(n * length, d)
        vc = vp[idx, :length]
        gram = torch.cat([vc @ vc.transpose(1, 2), mask_f[idx, None, :length]], dim=1)  # n × (L+1) × L: [G; mask]
        vc = vc.reshape(n * length, dv)
        for i0, i1, q_blk, u_blk, u_inv_blk in image_blocks:
            ic = i1 - i0
            # Steps 1-2.
            s = (kc @ q_blk.T).view(n, length, n_regions, ic)
            s = F.leaky_relu(s, leaky_slope, inplace=inplace)
            # Step 3: each word's column over the image units r.
            factor = float(temperature) / (_norm_over_regions(s, inplace) + eps)
            s = s.mul_(factor) if inplace else s * factor
            # Step 4 (unnormalised): e = exp(λ s̃), optionally shifted by the row max over w.
            if stabilize:
                row_max = s.amax(dim=1, keepdim=True)
                s = s.sub_(row_max) if inplace else s - row_max
            e = s.exp_() if inplace else s.exp()
            # Steps 5-6: u·(Σ e v) from u·v; Z and Σ_w'w e G e from one batched product with [G; mask].
            uv = (vc @ u_blk.T).view(n, length, n_regions, ic)
            uv = uv.mul_(e) if inplace else uv * e
            num = uv.sum(1)  # n × R × Ic
            ge = torch.bmm(gram, e.reshape(n, length, n_regions * ic)).view(n, length + 1, n_regions, ic)
            z = ge[:, length]
            ge_w = ge[:, :length]
            quad = (ge_w.mul_(e) if inplace else ge_w * e).sum(1)
            t_norm = quad.clamp(min=0).sqrt() / z  # ‖t_r‖
            t_dot_u = num / (z * (t_norm + eps))  # u_r · t̂_r, t̂_r = t_r / (‖t_r‖ + ε)
            t_hat_norm = t_norm / (t_norm + eps)
            cos = t_dot_u * u_inv_blk / (t_hat_norm + eps)
            out[idx, i0:i1] = cos.mean(1)
        p = q_end
    return out


def cnl_weights(queries, keys, *, temperature=CNL_TEMPERATURE, leaky_slope=CNL_LEAKY_SLOPE, eps=CNL_EPS):
    """Steps 1–4 of docs/nafs.md §2.3 written out literally: the attention a_rw of image units over one text's units.

    ``queries``: … × R × d L2-normalised image queries; ``keys``: n_word × d L2-normalised keys of the text's valid
    units. Returns … × R × n_word, each row a softmax over the text units. Used by the reference loop and by the
    attention figures (``tireid_core.models.nafs.cnl_attention``).
    """
    s = queries @ keys.T  # 1. cosines
    s = F.leaky_relu(s, leaky_slope)  # 2.
    s = s / (s.square().sum(-2, keepdim=True).sqrt() + eps)  # 3. each word over image units
    return torch.softmax(temperature * s, dim=-1)  # 4. softmax over text units


def visual_similarity(image_global, eps=1e-12):
    """Image × image cosine of the global image features: RVN's visual neighbourhoods (docs/nafs.md §5)."""
    return cosine_similarity(image_global, image_global, eps=eps)


# ----------------------------------------------------------------------------------------------
# RVN
# ----------------------------------------------------------------------------------------------

def _score_matrix(scores, name):
    """2-D float tensor (integers → float64, half types → float32). NaN is left to the top-K, which rejects it."""
    s = torch.as_tensor(scores)
    if s.ndim != 2 or 0 in s.shape:
        raise ValueError(f"{name} must be a non-empty 2-D matrix, got shape {tuple(s.shape)}")
    if not s.is_floating_point():
        s = s.to(torch.float64)
    elif s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()
    return s


def topk_mask(scores, k):
    """Boolean mask of each row's top-``k`` columns under the project tie rule (docs/evaluation.md §3), as a set.

    ``k`` is clipped to the number of columns. The rule is :func:`tireid_core.metrics.top_k_indices`, so that RVN and
    the metrics cannot disagree about ties.
    """
    s = _score_matrix(scores, "scores")
    index = top_k_indices(s, k)
    return torch.zeros(s.shape, dtype=torch.bool, device=s.device).scatter_(1, index, True)


def _check_rvn(t2i_scores, i2i_scores, k, mode):
    if mode not in RVN_MODES:
        raise ValueError(f"mode must be one of {RVN_MODES}, got {mode!r}")
    s = _score_matrix(t2i_scores, "t2i_scores")
    v = _score_matrix(i2i_scores, "i2i_scores").to(s.device)
    n_images = s.shape[1]
    if v.shape != (n_images, n_images):
        raise ValueError(f"i2i_scores must be {n_images} × {n_images} (images of t2i_scores), got {tuple(v.shape)}")
    if int(k) < 1:
        raise ValueError(f"k must be positive, got {k}")
    return s, v, int(k)


def rvn_bonus(t2i_scores, i2i_scores, *, k=RVN_K, mode="intended"):
    """RVN bonus matrix (texts × images) added to the scores by :func:`rvn_rerank` (docs/nafs.md §5, §7 item 1).

    ``t2i_scores``: S, texts × images (S_glob + S_loc). ``i2i_scores``: images × images visual similarity
    (:func:`visual_similarity`). Top-K sets use the project tie rule (:func:`topk_mask`); K is clipped to the number
    of items ranked (images, or texts for the official mode's text sets), and Jaccard's union uses the clipped sizes.

    ``mode="intended"`` (project default, §7 item 1): N(T) = the text's top-K images by S; V(I) = image I's top-K
    visual neighbours by ``i2i_scores`` (itself included, since its cosine with itself is the row maximum — unless
    exact duplicates with lower indices tie with it);
    bonus(T, I) = |N(T) ∩ V(I)| / |N(T) ∪ V(I)|.

    ``mode="official"`` reproduces the coded behaviour as the spec describes it (§7 item 1): for each image i, A(i) =
    its top-K *texts* (column i of S); for each image j, V(j) = its top-K images; the n_img × n_txt matrix
    B[i, j] = |A(i) ∩ V(j)| / |A(i) ∪ V(j)| mixes text and image indices and is filled only for columns
    j < n_img; the t2i bonus is Bᵀ: bonus(T, I) = B[I, T], so only texts with index < n_img get a bonus, and the result
    depends on the test-set order. With fewer texts than images the columns stop at n_txt (the official loop would
    index out of range there). The same bonus applies to i2t: use the transpose of the re-ranked matrix.

    ``mode="off"``: zeros.
    """
    s, v, k = _check_rvn(t2i_scores, i2i_scores, k, mode)
    n_texts, n_images = s.shape
    if mode == "off":
        return torch.zeros_like(s)
    if mode == "intended":
        kk = min(k, n_images)
        near = top_k_indices(s, kk)  # T × K: N(T)
        in_v = topk_mask(v, kk).T.to(torch.uint8).contiguous()  # in_v[j, i] = 1 if j ∈ V(i)
        inter = in_v.index_select(0, near[:, 0])
        for c in range(1, kk):
            inter += in_v.index_select(0, near[:, c])
        inter = inter.to(s.dtype)
        return inter / (2 * kk - inter)
    k_txt, k_img = min(k, n_texts), min(k, n_images)
    # a[m, i] = 1 if text m ∈ A(i); rows padded to n_img, since image indices ≥ n_txt cannot collide with a text index.
    a = torch.zeros(max(n_texts, n_images), n_images, dtype=torch.uint8, device=s.device)
    a.scatter_(0, top_k_indices(s.T.contiguous(), k_txt).T, 1)
    neigh = top_k_indices(v, k_img)  # I × K: V(j)
    n_rows = min(n_texts, n_images)  # t2i rows j = columns j of the official n_img × n_txt matrix
    inter = a.index_select(0, neigh[:n_rows, 0])  # inter[j, i] = |A(i) ∩ V(j)|
    for c in range(1, k_img):
        inter += a.index_select(0, neigh[:n_rows, c])
    inter = inter.to(s.dtype)
    bonus = torch.zeros_like(s)
    bonus[:n_rows] = inter / ((k_txt + k_img) - inter)
    return bonus


def rvn_rerank(t2i_scores, i2i_scores, *, k=RVN_K, weight=RVN_WEIGHT, mode="intended"):
    """S′ = S + weight · :func:`rvn_bonus` (docs/nafs.md §5: K = 5, weight 1 in the official code; the paper's own formula
    and weight are unknown, §9 item 1). Returns a new texts × images matrix; the input is left untouched so that the
    plain and the re-ranked results are reported as separate rows (docs/evaluation.md §6). The bonus takes few distinct
    values, so ties become likely: rank the result with the project tie rule (metrics.retrieval_metrics does).
    """
    s = _score_matrix(t2i_scores, "t2i_scores")
    return s + weight * rvn_bonus(s, i2i_scores, k=k, mode=mode)

