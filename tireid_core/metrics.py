"""Retrieval and ReID evaluation metrics (docs/evaluation.md).

Conventions, so that numbers are comparable with the reference code bases:

* Ranking follows the project tie rule: stable sort by descending score (ascending distance for ReID),
  ties broken by ascending gallery index. ``tie_mode="expected"`` instead averages R@K, AP and INP
  exactly over all orderings of each tie group (for smoke tests with constant or untrained models).
* ``ap_convention="noninterp"`` (default; IRRA, TBPS-CLIP, torchreid, fast-reid) or ``"trapezoid"``
  (Market-1501 MATLAB code, SSAN).
* Queries without a positive are skipped for every metric, counted, and warned about; all skipped
  is an error.
* Returned dicts hold percentages at full float precision; only :func:`metrics_record` rounds to
  two decimals, so that averages over seeds are not computed from rounded values.
* ``per_query=True`` adds the per-valid-query hit@1 and AP behind ``R@1`` and ``mAP`` (fractions;
  their means x 100 are the aggregates), for bootstrap intervals (:mod:`tireid_core.stats`).

The fast functions rank a block of queries with one sort, then read everything (R@K, AP, INP, CMC,
tie diagnostic) off the positions of the positives. The slow per-query loops they are checked
against (docs/evaluation.md §2: keep a parity test) live in tests/reference_impl.py, out of the package.
The tie rule is implemented once, in :func:`_rank_order`; :func:`top_k_indices` exposes it to
other modules (NAFS re-ranking).
"""

import functools
import os
import warnings
from contextlib import contextmanager

import numpy as np
import torch

AP_CONVENTIONS = ("noninterp", "trapezoid")
TIE_MODES = ("stable", "expected")
TIE_RULES = {
    "stable": "stable: descending score, ties by ascending gallery index",
    "expected": "expected: exact mean over random orderings within tie groups",
}
REID_TIE_RULE = "stable: ascending distance, ties by ascending gallery index"

# Elements (rows x gallery) ranked per block. On CPU small blocks stay in cache and reuse freed
# memory (large fresh allocations cost page faults); on GPU large blocks amortise kernel launches.
_BLOCK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 24}


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def cosine_similarity(q, g, eps=1e-12):
    """Cosine similarity matrix (len(q) x len(g)) in fp32, ε added to the norm as in IRRA (docs/evaluation.md §1)."""
    q = torch.as_tensor(q).float()
    g = torch.as_tensor(g, device=q.device).float()
    q = q / (q.norm(dim=1, keepdim=True) + eps)
    g = g / (g.norm(dim=1, keepdim=True) + eps)
    return q @ g.T


def _as_matrix(scores):
    """2-D float tensor on its own device; half types are widened (exactly) so that ties survive."""
    s = torch.as_tensor(scores).detach()
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"expected a non-empty 2-D score matrix, got shape {tuple(s.shape)}")
    if not s.is_floating_point():
        s = s.to(torch.float64)  # exact for integers up to 2**53
    elif s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()
    return s


def _as_ids(ids, n, device, name):
    if not torch.is_tensor(ids):
        ids = np.asarray(ids)
        if ids.size and ids.dtype.kind not in "iub":
            kind = {"U": "strings", "S": "bytes", "O": "objects", "f": "floats"}.get(ids.dtype.kind, str(ids.dtype))
            raise TypeError(f"{name} must hold integer ids, got {kind} such as {ids.flat[0].item()!r}")
    t = torch.as_tensor(ids, device=device)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be 1-D of length {n}, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold integer ids, got {t.dtype}")
    return t.long()


def _block_rows(n_rows, n_cols, block_rows, device, scale=1):
    if block_rows is None:
        elements = _BLOCK_ELEMENTS.get(device.type, _BLOCK_ELEMENTS["cpu"])
        block_rows = max(1, elements // (scale * n_cols))
    return min(int(block_rows), n_rows)


def _rank_order(block, descending):
    """Gallery order per row under the stable tie rule, plus keys that are equal iff scores are.

    On CPU, float32 scores are packed with their column index into unique int64 keys and sorted by
    NumPy (about 4x faster than torch's stable CPU sort on few cores). Unique keys make the order
    independent of the sort's stability, and it equals ``torch.sort(stable=True)`` (tested).
    Elsewhere (CUDA, float64) torch's stable sort is used; it keeps equal elements in ascending
    index order in both directions (tested).
    """
    if torch.isnan(block).any():
        raise ValueError("score matrix contains NaN: the ranking would be undefined")
    n_cols = block.shape[1]
    if block.device.type == "cpu" and block.dtype == torch.float32 and n_cols < 2**31:
        x = (block + 0.0).contiguous().numpy()  # + 0.0 turns -0.0 into 0.0: equal scores, equal bits
        i = x.view(np.int32)
        i = i ^ ((i >> 31) & np.int32(0x7FFFFFFF))  # signed ints in the same order as the floats
        if descending:
            i = ~i
        keys = i.astype(np.int64)
        keys <<= 32
        keys |= np.arange(n_cols, dtype=np.int64)
        keys.sort(axis=1)
        keys = torch.from_numpy(keys)
        return keys & 0xFFFFFFFF, keys >> 32
    values, order = torch.sort(block, dim=1, descending=descending, stable=True)
    return order, values


def _take(values, order):
    """values[order] for a 1-D ``values``; gather is several times faster than indexing on CPU."""
    return values.expand(order.shape[0], -1).gather(1, order)


def _check_conventions(ap_convention, tie_mode="stable"):
    if ap_convention not in AP_CONVENTIONS:
        raise ValueError(f"ap_convention must be one of {AP_CONVENTIONS}, got {ap_convention!r}")
    if tie_mode not in TIE_MODES:
        raise ValueError(f"tie_mode must be one of {TIE_MODES}, got {tie_mode!r}")


# ----------------------------------------------------------------------------------------------
# Per-block computations (all on the scores' device)
# ----------------------------------------------------------------------------------------------

def _stable_block(tie_keys, pos, keep, ap_convention):
    """Per-query n, AP, INP, first-positive rank and tie flag from one sorted block.

    ``pos``/``keep`` are in sorted order; ``keep`` (ReID) masks out same-pid-same-camera entries,
    which then take no rank.
    """
    n_rows = pos.shape[0]
    rows, cols = pos.nonzero(as_tuple=True)  # row-major: positives of a row in rank order
    n = torch.bincount(rows, minlength=n_rows)
    if keep is None:
        ranks = cols + 1
    else:
        ranks = keep.cumsum(1)[rows, cols]  # rank among the kept entries
    offsets = torch.cumsum(n, 0) - n
    hit = torch.arange(rows.numel(), device=rows.device) - offsets[rows] + 1  # i: 1..n per row

    r = ranks.double()
    i = hit.double()
    if ap_convention == "noninterp":
        terms = i / r
    else:  # trapezoid, 0-based: p_new = (i+1)/(rho+1), p_old = i/rho (1 when rho == 0)
        p_old = torch.where(r > 1, (i - 1) / (r - 1).clamp(min=1), torch.ones_like(r))
        terms = 0.5 * (p_old + i / r)
    # Sum per row through a padded matrix rather than index_add_ (float atomics on CUDA would make
    # the last bits run-dependent); a running sum read at the row's last hit also keeps the result
    # independent of the padding width, hence of the block size.
    width = int(n.max()) if rows.numel() else 1
    padded = torch.zeros(n_rows, width, dtype=torch.float64, device=pos.device)
    padded[rows, hit - 1] = terms
    ap = padded.cumsum(1).gather(1, (n - 1).clamp(min=0)[:, None])[:, 0] / n.clamp(min=1)

    first_rank = torch.zeros(n_rows, dtype=torch.long, device=pos.device)
    last_rank = torch.ones(n_rows, dtype=torch.long, device=pos.device)
    is_first = hit == 1
    is_last = hit == n[rows]
    first_rank[rows[is_first]] = ranks[is_first]
    last_rank[rows[is_last]] = ranks[is_last]
    inp = n.double() / last_rank.double()

    # Tie diagnostic: is the first positive tied with a negative?
    first_col = torch.zeros(n_rows, dtype=torch.long, device=pos.device)
    first_col[rows[is_first]] = cols[is_first]
    first_key = tie_keys.gather(1, first_col[:, None])
    negatives = ~pos if keep is None else keep & ~pos
    tied = ((tie_keys == first_key) & negatives).any(1)
    return n, ap, inp, first_rank, tied


def _log_comb(a, b):
    return torch.lgamma(a + 1) - torch.lgamma(b + 1) - torch.lgamma(a - b + 1)


def _expected_block(tie_keys, pos, cutoffs, ap_convention):
    """Exact expectations of AP, INP and hit@K over uniform random orders within each tie group.

    A tie group of m entries holding p positives, preceded by s entries of which a are positives,
    occupies ranks s+1..s+m. By symmetry each slot k (1..m) of the group holds a positive with
    probability p/m, and given that, the other p-1 positives fill the other m-1 slots uniformly, so
    the hit's index i has mean a + 1 + (k-1)(p-1)/(m-1). Linearity then gives E[AP] exactly:
    noninterp  E[i/r] summed over slots; trapezoid likewise with p_old = (i-1)/(r-1).
    INP: the last positive lies in the last group with positives, at slot k with probability
    C(k-1, p-1)/C(m, p). Hit@K: no positive among the first t slots of the group cut by K has
    probability C(m-p, t)/C(m, t) (hypergeometric), unless an earlier group already holds one.
    """
    n_rows, n_cols = pos.shape
    dev = pos.device
    col = torch.arange(n_cols, device=dev).expand(n_rows, n_cols)
    new = torch.ones(n_rows, n_cols, dtype=torch.bool, device=dev)
    new[:, 1:] = tie_keys[:, 1:] != tie_keys[:, :-1]
    last = torch.ones_like(new)
    last[:, :-1] = new[:, 1:]
    start = torch.where(new, col, 0).cummax(1).values  # first column of each entry's tie group
    end = torch.where(last, col, n_cols - 1).flip(1).cummin(1).values.flip(1)
    cpos = pos.long().cumsum(1)
    n = cpos[:, -1]
    a_l = cpos.gather(1, start) - pos.gather(1, start).long()  # positives before the group
    p_l = cpos.gather(1, end) - a_l  # positives inside the group

    m, p, a = (end - start + 1).double(), p_l.double(), a_l.double()
    k = (col - start + 1).double()
    r = (col + 1).double()
    slot_hit = p / m
    others_before = (k - 1) * (p - 1) / (m - 1).clamp(min=1)
    new_term = slot_hit * (a + 1 + others_before) / r
    if ap_convention == "noninterp":
        terms = new_term
    else:
        old_term = torch.where(r > 1, slot_hit * (a + others_before) / (r - 1).clamp(min=1), slot_hit)
        terms = 0.5 * (old_term + new_term)
    nd = n.double()
    ap = terms.sum(1) / nd.clamp(min=1)

    # INP over the group of the last positive (whichever order, it is the same group).
    last_col = (cpos < n[:, None]).sum(1).clamp(max=n_cols - 1)
    g_start = start.gather(1, last_col[:, None])
    g_end = end.gather(1, last_col[:, None])
    in_group = (col >= g_start) & (col <= g_end)
    gm = (g_end - g_start + 1).double()
    gp = p_l.gather(1, last_col[:, None]).double()
    valid_slot = in_group & (k >= gp)
    k_safe = torch.where(valid_slot, k, gp)  # keeps lgamma arguments positive off the group
    log_w = _log_comb(k_safe - 1, gp - 1) - _log_comb(gm, gp)
    weight = torch.where(valid_slot, torch.exp(log_w), torch.zeros_like(log_w))
    inp = (weight / r).sum(1) * nd

    hits = []
    for cutoff in cutoffs:
        c = cutoff - 1
        s_c, e_c = start[:, c], end[:, c]
        m_c = (e_c - s_c + 1).double()
        p_c, a_c = p_l[:, c].double(), a_l[:, c]
        t = (c - s_c + 1).double()  # slots of the cut group inside the top K
        free = m_c - p_c
        none = torch.where(free >= t, torch.exp(_log_comb(free.clamp(min=t), t) - _log_comb(m_c, t)),
                           torch.zeros_like(t))
        hits.append(torch.where(a_c > 0, torch.ones_like(t), 1 - none))
    hit_prob = torch.stack(hits, 1)

    first_col = (cpos == 0).sum(1).clamp(max=n_cols - 1)
    tied = (end - start + 1).gather(1, first_col[:, None])[:, 0] > p_l.gather(1, first_col[:, None])[:, 0]
    return n, ap, inp, hit_prob, tied


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------

def _valid_mask(n, kind):
    valid = n > 0
    n_skipped = int((~valid).sum())
    if n_skipped == len(n):
        raise ValueError(f"no {kind} query has a positive in the gallery: nothing to evaluate")
    if n_skipped:
        warnings.warn(f"{n_skipped} of {len(n)} {kind} queries have no positive in the gallery; "
                      "skipped for every metric", stacklevel=3)
    return valid, n_skipped


def _per_query(valid, hit1, ap):
    """The ``per_query`` entry: hit@1 (0/1, or its probability under tie_mode="expected") and AP of each valid
    query as float64 CPU tensors (fractions, not percent), and the valid queries' row indices, in query order."""
    return {"R@1": hit1[valid].double(), "AP": ap[valid].double(), "query_index": valid.nonzero().flatten()}


def _clip_ks(ks, gallery_size):
    clipped = {f"R@{k}": min(k, gallery_size) for k in ks if k > gallery_size}
    return [min(k, gallery_size) for k in ks], clipped


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def top_k_indices(scores, k):
    """Each row's first ``k`` columns under the tie rule, in rank order (rows × min(k, columns)).

    For callers that need a top-K under the same rule as the metrics (NAFS re-ranking) without
    sorting whole rows. torch.topk's order among equal values is unspecified, so rows where two of
    the top k + 1 values are equal (-0.0 and 0.0 included) are re-ranked with :func:`_rank_order`.
    NaN is rejected.
    """
    s = _as_matrix(scores)
    if int(k) < 1:
        raise ValueError(f"k must be positive, got {k}")
    k = min(int(k), s.shape[1])
    if k == s.shape[1]:
        return _rank_order(s, descending=True)[0]
    values, index = torch.topk(s, k + 1, dim=1)
    if torch.isnan(values[:, 0]).any():  # topk puts NaN first
        raise ValueError("score matrix contains NaN: the ranking would be undefined")
    index = index[:, :k].contiguous()
    tied = (values[:, 1:] == values[:, :-1]).any(1).nonzero().flatten()
    step = _block_rows(len(tied), s.shape[1], None, s.device) if len(tied) else 1
    for b in range(0, len(tied), step):
        rows = tied[b:b + step]
        index[rows] = _rank_order(s[rows], descending=True)[0][:, :k].to(index.device)
    return index


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def _threads_for_current_load():
    """Use only the cores other processes leave idle, at least one, while ranking on the CPU.

    Torch's OpenMP threads wait for each other at every parallel step; when the machine is busy, a waiting thread is
    descheduled and the whole sort waits for it: a CUHK-PEDES-sized evaluation went from 0.13 s (idle) to 6.4 s beside
    several busy torch jobs. The results do not depend on the thread count (exact ranks, single-threaded reductions
    over the query vectors), only the time does. The load average counts this process itself, hence the − 1.
    """
    before = torch.get_num_threads()
    try:
        others = max(os.getloadavg()[0] - 1.0, 0.0)
    except OSError:  # no load average on this platform
        others = 0.0
    torch.set_num_threads(max(1, min(before, round(_cores() - others))))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_aware(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _threads_for_current_load():
            return fn(*args, **kwargs)
    return wrapper


@_load_aware
def retrieval_metrics(scores, query_pids, gallery_pids, *, ap_convention="noninterp", tie_mode="stable",
                      ks=(1, 5, 10), cmc_max_rank=10, block_rows=None, per_query=False):
    """Text-to-image retrieval metrics (docs/evaluation.md §1) from a (queries x gallery) similarity matrix.

    Higher score = better; match = same person id. For image-to-text pass ``scores.T`` with the
    image pids as queries. Works on CPU or CUDA tensors (or NumPy arrays) without moving the matrix.

    Returns a dict of percentages at full precision: ``R@K`` for each K in ``ks`` (K larger than the
    gallery is clipped to it and listed in ``k_clipped``), ``rSum`` (sum of those R@K), ``mAP``,
    ``mINP``, ``cmc`` (ranks 1..min(cmc_max_rank, gallery)), plus ``n_queries_valid``,
    ``n_queries_skipped``, ``gallery_size``, ``ap_convention``, ``tie_rule``, ``tie_mode`` and
    ``tie_diagnostic`` (queries whose first positive is tied with a negative).

    ``per_query=True`` adds ``per_query``: ``{"R@1", "AP", "query_index"}`` (see :func:`_per_query`), whose
    ``R@1`` and ``AP`` means x 100 equal ``R@1`` and ``mAP``.
    """
    _check_conventions(ap_convention, tie_mode)
    s = _as_matrix(scores)
    n_queries, gallery_size = s.shape
    qp = _as_ids(query_pids, n_queries, s.device, "query_pids")
    gp = _as_ids(gallery_pids, gallery_size, s.device, "gallery_pids")
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {ks}")
    eff_ks, k_clipped = _clip_ks(ks, gallery_size)
    cmc_ranks = list(range(1, min(cmc_max_rank, gallery_size) + 1))
    cutoffs = sorted(set(eff_ks) | set(cmc_ranks) | ({1} if per_query else set()))

    step = _block_rows(n_queries, gallery_size, block_rows, s.device, scale=4 if tie_mode == "expected" else 1)
    parts = []
    for b in range(0, n_queries, step):
        order, tie_keys = _rank_order(s[b:b + step], descending=True)
        pos = _take(gp, order) == qp[b:b + step, None]
        if tie_mode == "stable":
            n, ap, inp, first_rank, tied = _stable_block(tie_keys, pos, None, ap_convention)
            cut = torch.tensor(cutoffs, device=s.device)
            hit_prob = (first_rank[:, None] <= cut[None, :]).double()
        else:
            n, ap, inp, hit_prob, tied = _expected_block(tie_keys, pos, cutoffs, ap_convention)
        parts.append([t.cpu() for t in (n, ap, inp, hit_prob, tied)])
    n, ap, inp, hit_prob, tied = (torch.cat(col) for col in zip(*parts))

    valid, n_skipped = _valid_mask(n, "retrieval")
    recall = {k: 100.0 * hit_prob[valid, i].mean().item() for i, k in enumerate(cutoffs)}
    out = {f"R@{k}": recall[ek] for k, ek in zip(ks, eff_ks)}
    out["rSum"] = sum(out[f"R@{k}"] for k in ks)
    out.update(
        mAP=100.0 * ap[valid].mean().item(),
        mINP=100.0 * inp[valid].mean().item(),
        cmc=[recall[k] for k in cmc_ranks],
        n_queries_valid=int(valid.sum()),
        n_queries_skipped=n_skipped,
        gallery_size=gallery_size,
        ap_convention=ap_convention,
        tie_rule=TIE_RULES[tie_mode],
        tie_mode=tie_mode,
        tie_diagnostic=int(tied[valid].sum()),
        k_clipped=k_clipped,
    )
    if per_query:
        out["per_query"] = _per_query(valid, hit_prob[:, cutoffs.index(1)], ap)
    return out


@_load_aware
def reid_metrics(distmat, q_pids, g_pids, q_camids, g_camids, *, max_rank=50, ap_convention="noninterp",
                 ks=(1, 5, 10), block_rows=None, per_query=False):
    """Image ReID metrics (docs/evaluation.md §2) from a (queries x gallery) distance matrix, lower = better.

    Per query, gallery entries with the same pid and the same camera are removed (they take no rank);
    same pid on another camera is a positive; everything else, distractors (pid 0) included, is a
    negative. Junk (pid -1) must be removed beforehand. Returns ``cmc`` (percent, ranks
    1..min(max_rank, gallery)), ``R@K``, ``mAP``, ``mINP`` and the same bookkeeping keys as
    :func:`retrieval_metrics` (``max_rank`` holds the clipped value), and ``per_query`` when asked (as there).
    """
    _check_conventions(ap_convention)
    d = _as_matrix(distmat)
    n_queries, gallery_size = d.shape
    qp = _as_ids(q_pids, n_queries, d.device, "q_pids")
    gp = _as_ids(g_pids, gallery_size, d.device, "g_pids")
    qc = _as_ids(q_camids, n_queries, d.device, "q_camids")
    gc = _as_ids(g_camids, gallery_size, d.device, "g_camids")
    max_rank = min(int(max_rank), gallery_size)
    ks = tuple(int(k) for k in ks)
    eff_ks, k_clipped = _clip_ks(ks, gallery_size)

    step = _block_rows(n_queries, gallery_size, block_rows, d.device, scale=2)
    parts = []
    for b in range(0, n_queries, step):
        order, tie_keys = _rank_order(d[b:b + step], descending=False)
        match = _take(gp, order) == qp[b:b + step, None]
        same_cam = _take(gc, order) == qc[b:b + step, None]
        pos = match & ~same_cam
        keep = ~(match & same_cam)
        n, ap, inp, first_rank, tied = _stable_block(tie_keys, pos, keep, ap_convention)
        parts.append([t.cpu() for t in (n, ap, inp, first_rank, tied)])
    n, ap, inp, first_rank, tied = (torch.cat(col) for col in zip(*parts))

    valid, n_skipped = _valid_mask(n, "reid")
    hit1 = first_rank == 1  # before the masking below; a valid query's first rank is >= 1
    first_rank = first_rank[valid]
    recall = {k: 100.0 * (first_rank <= k).double().mean().item()
              for k in set(range(1, max_rank + 1)) | set(eff_ks)}
    out = {f"R@{k}": recall[ek] for k, ek in zip(ks, eff_ks)}
    out.update(
        mAP=100.0 * ap[valid].mean().item(),
        mINP=100.0 * inp[valid].mean().item(),
        cmc=[recall[k] for k in range(1, max_rank + 1)],
        n_queries_valid=int(valid.sum()),
        n_queries_skipped=n_skipped,
        gallery_size=gallery_size,
        ap_convention=ap_convention,
        tie_rule=REID_TIE_RULE,
        tie_mode="stable",
        tie_diagnostic=int(tied[valid].sum()),
        k_clipped=k_clipped,
        max_rank=max_rank,
    )
    if per_query:
        out["per_query"] = _per_query(valid, hit1, ap)
    return out


_RECORD_CONTEXT = ("dataset", "split", "direction")
_RECORD_RUN = ("similarity", "precision", "selection_split", "row", "epoch", "seed",
               "noise_rate", "noise_index_file")
_RECORD_CHOICES = {
    "direction": ("t2i", "i2t", "i2i"),
    "selection_split": ("val", "test", "last"),
    "row": ("best", "last"),
}


def metrics_record(metrics, **context):
    """The JSON-ready record of docs/evaluation.md §8 for one evaluated checkpoint and score matrix.

    Metric values are rounded to two decimals here (and only here). Known context keys (dataset,
    split, direction, similarity, precision, selection_split, row, epoch, seed, noise_rate,
    noise_index_file) default to None; any other keyword (fusion weights, method, score name) is
    appended as given.
    """
    for key, choices in _RECORD_CHOICES.items():
        if context.get(key) is not None and context[key] not in choices:
            raise ValueError(f"{key} must be one of {choices}, got {context[key]!r}")
    rec = {key: context.pop(key, None) for key in _RECORD_CONTEXT}
    rec.update(n_queries_valid=metrics["n_queries_valid"], n_queries_skipped=metrics["n_queries_skipped"],
               gallery_size=metrics["gallery_size"])
    for key, value in metrics.items():
        if key.startswith("R@"):
            rec[key] = round(value, 2)
    for key in ("rSum", "mAP", "mINP"):
        if key in metrics:
            rec[key] = round(metrics[key], 2)
    rec.update(ap_convention=metrics["ap_convention"], tie_rule=metrics["tie_rule"])
    rec.update({key: context.pop(key, None) for key in _RECORD_RUN})
    rec["tie_diagnostic"] = metrics["tie_diagnostic"]
    if metrics.get("k_clipped"):
        rec["k_clipped"] = dict(metrics["k_clipped"])
    rec["cmc"] = [round(v, 2) for v in metrics["cmc"]]
    rec.update(context)
    return rec

