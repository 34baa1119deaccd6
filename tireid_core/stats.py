"""Bootstrap intervals over test queries, so that a reader can tell a gap between two numbers from noise.

A test R@1 or mAP is the mean of one value per query (hit@1 in {0, 1}, or AP in [0, 1]); a different draw of
queries from the same population would give a different mean. The percentile bootstrap resamples the queries with
replacement and reads the interval off the resampled means. Two models evaluated on the same queries are compared
with the paired bootstrap: the same resampled query indices for both, so the per-query correlation between the
models (most queries are easy or hard for both) narrows the interval of the difference.

Results are in percentage points, rounded to two decimals, and deterministic for a given seed. Resampling runs in
chunks of at most ``_CHUNK_ELEMENTS`` indices, so 1000 resamples of 10,000 queries stay within a few tens of MB.
The intervals cover query sampling only, not seed-to-seed training variance.
"""
from __future__ import annotations

import numpy as np

_CHUNK_ELEMENTS = 1 << 20  # resampled indices held at once (8 MiB of int64)


def _as_values(values, name: str = "values") -> np.ndarray:
    v = np.asarray(values.cpu() if hasattr(values, "cpu") else values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of per-query values, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return v


def _check(n_resamples: int, level: float) -> None:
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")


def _resampled_means(v: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `n_resamples` resamples (with replacement) of `v`, drawn in chunks from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    n = v.size
    chunk = max(1, _CHUNK_ELEMENTS // n)
    means = np.empty(int(n_resamples), dtype=np.float64)
    for start in range(0, len(means), chunk):
        stop = min(start + chunk, len(means))
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = v[idx].mean(axis=1)
    return means


def _points(fraction: float) -> float:
    return round(100.0 * float(fraction), 2) + 0.0  # + 0.0: no "-0.00" in tables


def _percentiles(means: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    low, high = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return _points(low), _points(high)


def bootstrap_interval(values, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``100 * mean(values)`` over resampled queries, in percent (2 decimals).

    `values`: one number per query (hit@1 as 0/1 or its probability, AP in [0, 1]); a list, NumPy array or tensor.
    """
    _check(n_resamples, level)
    v = _as_values(values)
    return _percentiles(_resampled_means(v, n_resamples, seed), level)


def paired_bootstrap_difference(a, b, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """``{"diff", "low", "high"}``: ``100 * (mean(b) - mean(a))`` in points and its paired-bootstrap interval.

    `a` and `b` hold per-query values of two models on the same queries, in the same order; each resample takes
    the same query indices for both (equivalently, resamples the per-query differences b - a).
    """
    _check(n_resamples, level)
    a, b = _as_values(a, "a"), _as_values(b, "b")
    if a.size != b.size:
        raise ValueError(f"paired bootstrap needs the same queries for both: a has {a.size} values, b has {b.size}")
    d = b - a
    low, high = _percentiles(_resampled_means(d, n_resamples, seed), level)
    return {"diff": _points(float(b.mean()) - float(a.mean())), "low": low, "high": high}


def spearman(x, y) -> float:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties); NaN when one is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(np.asarray(x, dtype=np.float64)), rankdata(np.asarray(y, dtype=np.float64))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def bootstrap_rank_correlation(x, y, groups=None, *, n_resamples: int = 1000, level: float = 0.95,
                               seed: int = 0) -> dict:
    """``{"rho", "low", "high", "n"}``: Spearman's ρ of x and y and its percentile-bootstrap interval (not in percent).

    `groups` (optional, one label per sample, e.g. the identity): resample whole groups with replacement (a cluster
    bootstrap), since samples of one group share what they are correlated with and are not independent. Resamples
    whose ρ is undefined (a constant side) are left out of the percentiles.
    """
    _check(n_resamples, level)
    x, y = _as_values(x, "x"), _as_values(y, "y")
    if x.size != y.size:
        raise ValueError(f"x has {x.size} values, y has {y.size}")
    labels = np.arange(x.size) if groups is None else np.asarray(groups)
    if labels.size != x.size:
        raise ValueError(f"groups has {labels.size} labels for {x.size} values")
    members = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(int(n_resamples)):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(members), size=len(members))])
        rho = spearman(x[idx], y[idx])
        if rho == rho:
            rhos.append(rho)
    alpha = (1.0 - level) / 2.0
    low, high = np.percentile(rhos, [100.0 * alpha, 100.0 * (1.0 - alpha)]) if rhos else (float("nan"),) * 2
    return {"rho": round(spearman(x, y), 4), "low": round(float(low), 4), "high": round(float(high), 4),
            "n": int(x.size)}


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the fraction of (positive, negative) pairs whose positive scores higher, ties
    counting one half (the Mann–Whitney statistic, over all pairs: fine for probe-sized sets)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def auc_comparison(labels, scores: dict, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """AUC of each model's scores for binary `labels` (one value per item, e.g. a linear probe's decision values on
    test images), in percent, with percentile-bootstrap intervals over resampled items; and, for every model after
    the first, its paired difference to the first (the same resampled items for both).

    Returns {model: {"auc", "low", "high"[, "diff", "diff_low", "diff_high"]}}. Resamples that lose one of the two
    classes are drawn again (they have no AUC).
    """
    _check(n_resamples, level)
    y = _as_values(labels, "labels")
    if not set(np.unique(y)) == {0.0, 1.0}:
        raise ValueError("labels must hold both classes, as 0 and 1")
    values = {name: _as_values(s, name) for name, s in scores.items()}
    if any(v.size != y.size for v in values.values()):
        raise ValueError(f"every model needs one score per label ({y.size}): "
                         f"{ {name: v.size for name, v in values.items()} }")
    rng = np.random.default_rng(seed)
    resampled = {name: [] for name in values}
    while len(next(iter(resampled.values()))) < int(n_resamples):
        idx = rng.integers(0, y.size, size=y.size)
        if y[idx].min() == y[idx].max():
            continue
        for name, v in values.items():
            resampled[name].append(_auc(y[idx], v[idx]))
    names = list(values)
    out = {}
    for name in names:
        draws = np.asarray(resampled[name])
        low, high = _percentiles(draws, level)
        out[name] = {"auc": _points(_auc(y, values[name])), "low": low, "high": high}
        if name != names[0]:
            d_low, d_high = _percentiles(draws - np.asarray(resampled[names[0]]), level)
            out[name].update({"diff": _points(_auc(y, values[name]) - _auc(y, values[names[0]])),
                              "diff_low": d_low, "diff_high": d_high})
    return out
