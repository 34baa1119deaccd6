"""Bootstrap intervals (tireid_core.stats) and the per-query metric values they resample (metrics per_query=True)."""
import math
import warnings

import numpy as np
import pytest
import torch

from tireid_core.metrics import reid_metrics, retrieval_metrics
from tireid_core.stats import auc_comparison, bootstrap_interval, paired_bootstrap_difference

# --- per-query values behind R@1 and mAP ----------------------------------------------------------


def tied_retrieval_case(seed):
    """Scores with many ties (few distinct values), and queries without a positive (skipped)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (37, 23), generator=g).float()
    gallery_pids = torch.randint(0, 8, (23,), generator=g)
    query_pids = torch.randint(0, 10, (37,), generator=g)  # pids 8, 9 have no gallery image
    return scores, query_pids, gallery_pids


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("tie_mode", ["stable", "expected"])
@pytest.mark.parametrize("ap_convention", ["noninterp", "trapezoid"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_per_query_means_are_the_aggregates(tie_mode, ap_convention, seed):
    scores, qp, gp = tied_retrieval_case(seed)
    kw = dict(tie_mode=tie_mode, ap_convention=ap_convention, block_rows=5)  # several blocks
    m = quiet(retrieval_metrics, scores, qp, gp, per_query=True, **kw)
    pq = m.pop("per_query")
    assert m == quiet(retrieval_metrics, scores, qp, gp, **kw)  # asking for per-query values changes nothing else
    valid = [i for i in range(len(qp)) if (gp == qp[i]).any()]
    assert valid != list(range(len(qp)))  # the case does skip queries
    assert pq["query_index"].tolist() == valid
    assert len(pq["R@1"]) == len(pq["AP"]) == m["n_queries_valid"]
    assert 100 * pq["R@1"].mean().item() == pytest.approx(m["R@1"], abs=1e-9)
    assert 100 * pq["AP"].mean().item() == pytest.approx(m["mAP"], abs=1e-9)
    if tie_mode == "stable":
        assert set(pq["R@1"].tolist()) <= {0.0, 1.0}
    else:
        assert ((pq["R@1"] > 0) & (pq["R@1"] < 1)).any()  # expected hit probabilities of tied first places
    assert ((pq["AP"] > 0) & (pq["AP"] <= 1)).all()


def test_retrieval_per_query_without_r1_in_ks():
    scores, qp, gp = tied_retrieval_case(3)
    m = quiet(retrieval_metrics, scores, qp, gp, ks=(5,), cmc_max_rank=0, per_query=True)
    ref = quiet(retrieval_metrics, scores, qp, gp)
    assert 100 * m["per_query"]["R@1"].mean().item() == pytest.approx(ref["R@1"], abs=1e-9)


@pytest.mark.parametrize("ap_convention", ["noninterp", "trapezoid"])
@pytest.mark.parametrize("seed", [0, 1])
def test_reid_per_query_means_are_the_aggregates(ap_convention, seed):
    # reid_metrics has only the stable tie rule
    g = torch.Generator().manual_seed(seed)
    dist = torch.randint(0, 5, (29, 31), generator=g).float()
    q_pids, g_pids = torch.randint(0, 9, (29,), generator=g), torch.randint(0, 7, (31,), generator=g)
    q_cams, g_cams = torch.randint(0, 3, (29,), generator=g), torch.randint(0, 3, (31,), generator=g)
    args = (dist, q_pids, g_pids, q_cams, g_cams)
    m = quiet(reid_metrics, *args, ap_convention=ap_convention, block_rows=4, per_query=True)
    pq = m.pop("per_query")
    assert m == quiet(reid_metrics, *args, ap_convention=ap_convention, block_rows=4)
    valid = [i for i in range(29) if ((g_pids == q_pids[i]) & (g_cams != q_cams[i])).any()]
    assert valid != list(range(29))
    assert pq["query_index"].tolist() == valid
    assert set(pq["R@1"].tolist()) <= {0.0, 1.0}
    assert 100 * pq["R@1"].mean().item() == pytest.approx(m["R@1"], abs=1e-9)
    assert 100 * pq["AP"].mean().item() == pytest.approx(m["mAP"], abs=1e-9)


def test_per_query_is_absent_by_default():
    scores, qp, gp = tied_retrieval_case(0)
    assert "per_query" not in quiet(retrieval_metrics, scores, qp, gp)


# --- bootstrap_interval ---------------------------------------------------------------------------

def test_constant_vector_gives_a_zero_width_interval_at_its_value():
    assert bootstrap_interval([0.25] * 50) == (25.0, 25.0)
    assert bootstrap_interval(np.ones(300)) == (100.0, 100.0)
    assert bootstrap_interval(torch.zeros(300, dtype=torch.float64)) == (0.0, 0.0)


def test_single_query():
    assert bootstrap_interval([1.0]) == (100.0, 100.0)


def test_interval_contains_the_mean_and_is_rounded():
    v = np.random.default_rng(5).random(200)
    low, high = bootstrap_interval(v)
    assert low < 100 * v.mean() < high
    assert round(low, 2) == low and round(high, 2) == high


def test_hand_worked_two_values():
    # half ones, half zeros over 2 queries: resampled means are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4; the
    # 2.5th and 97.5th percentiles of 1000 such draws are 0 and 100
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 100.0)


def test_same_seed_same_result_other_seed_other_result():
    v = np.random.default_rng(1).integers(0, 2, 500).astype(float)
    assert bootstrap_interval(v, seed=3) == bootstrap_interval(list(v), seed=3)
    assert bootstrap_interval(v, seed=3) != bootstrap_interval(v, seed=4)


def test_wider_level_gives_a_wider_interval():
    v = np.random.default_rng(2).integers(0, 2, 500).astype(float)
    l90, h90 = bootstrap_interval(v, level=0.90)
    l99, h99 = bootstrap_interval(v, level=0.99)
    assert l99 <= l90 and h90 <= h99


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_width_matches_the_normal_approximation(seed):
    # Bernoulli(0.4), 800 queries: the 95 % interval of a proportion is about ± 1.96 sqrt(p(1-p)/n)
    v = (np.random.default_rng(100 + seed).random(800) < 0.4).astype(float)
    low, high = bootstrap_interval(v)
    expected = 2 * 1.96 * math.sqrt(0.24 / 800) * 100  # 6.79 points
    assert high - low == pytest.approx(expected, rel=0.12)
    assert low < 100 * v.mean() < high


def test_coverage_of_the_true_proportion():
    # over 100 independent samples, the 95 % interval holds the true value about 95 times (binomial sd ~2.2)
    hits = 0
    for seed in range(100):
        v = (np.random.default_rng(1000 + seed).random(400) < 0.4).astype(float)
        low, high = bootstrap_interval(v, n_resamples=400, seed=seed)
        hits += low <= 40.0 <= high
    assert 85 <= hits <= 100


def test_chunked_resampling_handles_many_queries(monkeypatch):
    import tireid_core.stats as stats

    v = (np.random.default_rng(7).random(10_000) < 0.4).astype(float)
    low, high = bootstrap_interval(v)
    assert low < 100 * v.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * math.sqrt(0.24 / 10_000) * 100, rel=0.15)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 10_000)  # one resample per chunk: same seed, still valid
    small = bootstrap_interval(v)
    assert abs(small[0] - low) < 0.3 and abs(small[1] - high) < 0.3


@pytest.mark.parametrize("bad", [[], [[0.0, 1.0]], [0.5, float("nan")]])
def test_bad_values_are_rejected(bad):
    with pytest.raises(ValueError):
        bootstrap_interval(bad)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval([0.0, 1.0], level=95)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_interval([0.0, 1.0], n_resamples=0)


# --- paired_bootstrap_difference ------------------------------------------------------------------

def test_identical_vectors_differ_by_exactly_zero():
    a = np.random.default_rng(3).random(300)
    assert paired_bootstrap_difference(a, a.copy()) == {"diff": 0.0, "low": 0.0, "high": 0.0}


def test_constant_shift_gives_a_zero_width_interval_at_the_shift():
    a = np.random.default_rng(4).random(300) * 0.5
    assert paired_bootstrap_difference(a, a + 0.125) == {"diff": 12.5, "low": 12.5, "high": 12.5}
    assert paired_bootstrap_difference(a + 0.125, a) == {"diff": -12.5, "low": -12.5, "high": -12.5}


def test_hand_worked_paired_difference():
    # b gains one query out of four over a: the difference is +25 points; per-query differences are (0, 0, 0, 1),
    # so the resampled means are k/4 with k ~ Binomial(4, 1/4): P(k=0) = 0.32 > 2.5 %, P(k>=3) = 0.05 > 2.5 %
    a, b = [1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0]
    assert paired_bootstrap_difference(a, b) == {"diff": 25.0, "low": 0.0, "high": 75.0}


def test_pairing_narrows_the_interval():
    # b copies a except on 4 % of the queries: the separate intervals overlap, the paired one excludes 0
    rng = np.random.default_rng(6)
    a = (rng.random(1000) < 0.4).astype(float)
    b = a.copy()
    b[rng.choice(np.flatnonzero(a == 0), 40, replace=False)] = 1.0
    d = paired_bootstrap_difference(a, b)
    assert d["diff"] == 4.0 and 0 < d["low"] < 4.0 < d["high"]
    (la, ha), (lb, hb) = bootstrap_interval(a), bootstrap_interval(b)
    assert lb < ha  # the two separate intervals overlap
    assert d["high"] - d["low"] < (ha - la) / 2


def test_paired_difference_is_deterministic_and_accepts_tensors():
    rng = np.random.default_rng(8)
    a, b = rng.random(500), rng.random(500)
    assert paired_bootstrap_difference(a, b, seed=1) == paired_bootstrap_difference(torch.tensor(a), list(b), seed=1)


def test_paired_difference_needs_equal_lengths():
    with pytest.raises(ValueError, match="a has 3 values, b has 2"):
        paired_bootstrap_difference([0.0, 1.0, 1.0], [0.0, 1.0])


def test_spearman_and_its_cluster_bootstrap():
    from tireid_core.stats import bootstrap_rank_correlation, spearman

    # ranks (1, 2, 3, 4) vs (1, 3, 2, 4): 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([10, 20, 30, 40], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 1, 1], [1, 2, 3]) != spearman([1, 1, 1], [1, 2, 3])  # NaN: a constant side has no ranks
    x = np.arange(40.0)
    y = x + np.tile([0.0, 5.0], 20)
    r = bootstrap_rank_correlation(x, y, groups=np.arange(40) // 4, n_resamples=200)
    assert r["low"] <= r["rho"] <= r["high"] and r["rho"] > 0.9 and r["n"] == 40
    with pytest.raises(ValueError, match="groups has 3 labels"):
        bootstrap_rank_correlation(x, y, groups=[0, 1, 2])


def test_auc_comparison_by_hand():
    out = auc_comparison([1, 0, 1, 0], {"a": [0.9, 0.1, 0.4, 0.5], "b": [0.9, 0.1, 0.5, 0.5]}, n_resamples=50)
    # a: pairs (0.9>0.1, 0.9>0.5, 0.4>0.1, 0.4<0.5) = 3/4; b: the tie 0.5 = 0.5 counts one half: 3.5/4
    assert out["a"]["auc"] == 75.0 and out["b"]["auc"] == 87.5 and out["b"]["diff"] == 12.5
    assert "diff" not in out["a"] and out["a"]["low"] <= 75.0 <= out["a"]["high"]
    with pytest.raises(ValueError, match="both classes"):
        auc_comparison([1, 1], {"a": [0.1, 0.2]})
    with pytest.raises(ValueError, match="one score per label"):
        auc_comparison([1, 0], {"a": [0.1]})
