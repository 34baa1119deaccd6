"""Slow reference implementations, written straight from the specs, that the fast code is checked against.

Kept out of the package (docs/evaluation.md §2 asks for a parity test, not for shipping the loops): the tests import them,
and so do benchmarks/bench_eval.py and benchmarks/bench_nafs_eval.py, which time them (the NAFS loops keep the official
code's cost structure, docs/nafs.md §7 item 16). They share only input checks and the literal CNL steps (``cnl_weights``)
with the code under test; rankings here use Python's ``sorted`` by (-score, index), not tireid_core.metrics.
"""
import numpy as np
import torch

from tireid_core.models.nafs_scoring import (
    CNL_EPS,
    CNL_LEAKY_SLOPE,
    CNL_TEMPERATURE,
    RVN_K,
    RVN_WEIGHT,
    _check_rvn,
    _cnl_inputs,
    _score_matrix,
    cnl_weights,
    l2_normalize,
)

# ----------------------------------------------------------------------------------------------
# Retrieval and ReID metrics (tireid_core.metrics)
# ----------------------------------------------------------------------------------------------


def reference_ap(hit_ranks, ap_convention):
    """AP of one query from the 1-based ranks of its hits, straight from docs/evaluation.md §1.2."""
    n = len(hit_ranks)
    if ap_convention == "noninterp":
        return sum((i + 1) / r for i, r in enumerate(hit_ranks)) / n
    total = 0.0
    for i, r in enumerate(hit_ranks):
        rho = r - 1
        p_new = (i + 1) / (rho + 1)
        p_old = 1.0 if rho == 0 else i / rho
        total += 0.5 * (p_old + p_new)
    return total / n


def reference_summary(per_query, ks, n_cmc, n_skipped, gallery_size):
    """Averages per-query (hit ranks, AP, tied) tuples exactly as the spec words it."""
    nv = len(per_query)
    out = {}
    for k in ks:
        out[f"R@{k}"] = 100.0 * sum(1 for hits, _, _ in per_query if hits[0] <= min(k, gallery_size)) / nv
    out["mAP"] = 100.0 * sum(ap for _, ap, _ in per_query) / nv
    out["mINP"] = 100.0 * sum(len(hits) / hits[-1] for hits, _, _ in per_query) / nv
    out["cmc"] = [100.0 * sum(1 for hits, _, _ in per_query if hits[0] <= k) / nv for k in range(1, n_cmc + 1)]
    out["n_queries_valid"] = nv
    out["n_queries_skipped"] = n_skipped
    out["tie_diagnostic"] = sum(1 for _, _, tied in per_query if tied)
    return out


def reference_retrieval(scores, query_pids, gallery_pids, *, ap_convention="noninterp", ks=(1, 5, 10),
                        cmc_max_rank=10):
    """Per-query Python loop: sort by (-score, index), list the hit ranks, apply the formulas."""
    scores = np.asarray(torch.as_tensor(scores).double().cpu()).tolist()
    qps = [int(x) for x in np.asarray(query_pids).ravel()]
    gps = [int(x) for x in np.asarray(gallery_pids).ravel()]
    gallery_size = len(gps)
    per_query, skipped = [], 0
    for row, qp in zip(scores, qps):
        order = sorted(range(gallery_size), key=lambda j: (-row[j], j))
        hits = [rank + 1 for rank, j in enumerate(order) if gps[j] == qp]
        if not hits:
            skipped += 1
            continue
        first_score = row[order[hits[0] - 1]]
        tied = any(row[j] == first_score and gps[j] != qp for j in range(gallery_size))
        per_query.append((hits, reference_ap(hits, ap_convention), tied))
    out = reference_summary(per_query, ks, min(cmc_max_rank, gallery_size), skipped, gallery_size)
    out["rSum"] = sum(out[f"R@{k}"] for k in ks)
    return out


def reference_reid(distmat, q_pids, g_pids, q_camids, g_camids, *, max_rank=50, ap_convention="noninterp",
                   ks=(1, 5, 10)):
    """Per-query Python loop: sort by (distance, index), drop same pid + same camera, then as above."""
    dist = np.asarray(torch.as_tensor(distmat).double().cpu()).tolist()
    qps, gps = [int(x) for x in np.asarray(q_pids)], [int(x) for x in np.asarray(g_pids)]
    qcs, gcs = [int(x) for x in np.asarray(q_camids)], [int(x) for x in np.asarray(g_camids)]
    gallery_size = len(gps)
    per_query, skipped = [], 0
    for row, qp, qc in zip(dist, qps, qcs):
        order = sorted(range(gallery_size), key=lambda j: (row[j], j))
        kept = [j for j in order if not (gps[j] == qp and gcs[j] == qc)]
        hits = [rank + 1 for rank, j in enumerate(kept) if gps[j] == qp]
        if not hits:
            skipped += 1
            continue
        first_dist = row[kept[hits[0] - 1]]
        tied = any(row[j] == first_dist and gps[j] != qp for j in kept)
        per_query.append((hits, reference_ap(hits, ap_convention), tied))
    return reference_summary(per_query, ks, min(max_rank, gallery_size), skipped, gallery_size)


# ----------------------------------------------------------------------------------------------
# NAFS CNL score and RVN re-ranking (tireid_core.models.nafs_scoring)
# ----------------------------------------------------------------------------------------------

def cnl_scores_loop(text_units, text_mask, image_units, *, text_values=None, image_values=None,
                    temperature=CNL_TEMPERATURE, leaky_slope=CNL_LEAKY_SLOPE, eps=CNL_EPS, image_chunk=None):
    """Reference for ``cnl_scores``: one text at a time, the six steps of docs/nafs.md §2.3 written out literally.

    Same arguments and result. Images are processed ``image_chunk`` at a time (None = all at once; 200 reproduces the
    official loop structure, §7 items 11 and 16: one CNL iteration per text and 200-image chunk). t_r is formed
    explicitly and the softmax is torch's (max-subtracted).
    """
    keys, values, mask, queries, img_values = _cnl_inputs(text_units, text_mask, image_units, text_values,
                                                           image_values)
    n_texts = keys.shape[0]
    n_images = queries.shape[0]
    step = n_images if image_chunk is None else int(image_chunk)
    qn = l2_normalize(queries, eps)
    u_norm = torch.linalg.vector_norm(img_values, dim=-1)  # I × R
    out = torch.empty(n_texts, n_images, dtype=keys.dtype, device=keys.device)
    for t in range(n_texts):
        k = l2_normalize(keys[t, mask[t]], eps)  # n_word × d
        v = values[t, mask[t]]
        for i0 in range(0, n_images, step):
            q, u = qn[i0:i0 + step], img_values[i0:i0 + step]  # Ic × R × d
            a = cnl_weights(q, k, temperature=temperature, leaky_slope=leaky_slope, eps=eps)  # steps 1-4
            t_r = l2_normalize(a @ v, eps)  # 5. Ic × R × d
            t_norm = torch.linalg.vector_norm(t_r, dim=2)
            cos = (u * t_r).sum(2) / ((u_norm[i0:i0 + step] + eps) * (t_norm + eps))  # 6.
            out[t, i0:i0 + step] = cos.mean(1)
    return out


def _topk_set(row, k):
    """Top-k indices of a Python list under the tie rule: sort by (−score, index)."""
    return set(sorted(range(len(row)), key=lambda j: (-row[j], j))[:k])


def rvn_bonus_loop(t2i_scores, i2i_scores, *, k=RVN_K, mode="intended", rows=None):
    """Reference for ``rvn_bonus`` with Python sets, one pair at a time (the official cost structure, §7 item 16).

    ``rows`` restricts the outer loop (timing on a subset): text indices for ``"intended"``, image indices (rows of
    the official n_img × n_txt matrix) for ``"official"``; entries not computed are NaN.
    """
    s, v, k = _check_rvn(t2i_scores, i2i_scores, k, mode)
    if torch.isnan(s).any() or torch.isnan(v).any():  # sorted() would give an arbitrary order
        raise ValueError("scores contain NaN: top-K would be undefined")
    n_texts, n_images = s.shape
    if mode == "off":
        return torch.zeros_like(s)
    sc = s.cpu().tolist()
    k_img = min(k, n_images)
    neigh = [_topk_set(row, k_img) for row in v.cpu().tolist()]  # V(i)
    inter = torch.full((n_texts, n_images), -1, dtype=torch.long)
    union = torch.ones(n_texts, n_images, dtype=torch.long)
    if mode == "intended":
        for t in (range(n_texts) if rows is None else rows):
            near = _topk_set(sc[t], k_img)
            for i in range(n_images):
                inter[t, i] = len(near & neigh[i])
                union[t, i] = len(near | neigh[i])
    else:
        k_txt = min(k, n_texts)
        for i in (range(n_images) if rows is None else rows):
            texts = _topk_set([sc[t][i] for t in range(n_texts)], k_txt)  # A(i): text indices
            for j in range(n_images):
                if j < n_texts:  # column j of the n_img × n_txt matrix, read as image j's neighbours
                    inter[j, i] = len(texts & neigh[j])
                    union[j, i] = len(texts | neigh[j])
            for j in range(n_images, n_texts):
                inter[j, i] = 0
    bonus = inter.to(s.dtype) / union.to(s.dtype)
    bonus[inter < 0] = float("nan")
    return bonus.to(s.device)


def rvn_rerank_loop(t2i_scores, i2i_scores, *, k=RVN_K, weight=RVN_WEIGHT, mode="intended", rows=None):
    """Reference for ``rvn_rerank`` built on :func:`rvn_bonus_loop`."""
    s = _score_matrix(t2i_scores, "t2i_scores")
    return s + weight * rvn_bonus_loop(s, i2i_scores, k=k, mode=mode, rows=rows)
