"""Tests for tireid_core.metrics: spec examples, edge cases, and fast-vs-reference parity (tests/reference_impl.py)."""

import itertools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from reference_impl import reference_reid, reference_retrieval
from tireid_core.metrics import (
    _rank_order,
    cosine_similarity,
    metrics_record,
    reid_metrics,
    retrieval_metrics,
    top_k_indices,
)

SUMMARY_KEYS = ("R@1", "R@5", "R@10", "mAP", "mINP", "n_queries_valid", "n_queries_skipped", "tie_diagnostic")


def assert_same_metrics(fast, ref, keys=SUMMARY_KEYS, tol=1e-9):
    for key in keys:
        assert fast[key] == pytest.approx(ref[key], abs=tol), key
    assert fast["cmc"] == pytest.approx(ref["cmc"], abs=tol)


def quiet(fn, *args, **kwargs):
    """Call fn with the zero-positive warning silenced (random fixtures may contain such queries)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# --- spec examples --------------------------------------------------------------------------------

def worked_example():
    """docs/evaluation.md §1.5: gallery of 8, positives at ranks 1, 3 and 6."""
    scores = torch.tensor([[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    gallery_pids = [1, 0, 1, 0, 0, 1, 0, 0]
    return scores, [1], gallery_pids


@pytest.mark.parametrize("tie_mode", ["stable", "expected"])
def test_worked_example(tie_mode):
    scores, qp, gp = worked_example()
    m = retrieval_metrics(scores, qp, gp, tie_mode=tie_mode)
    assert m["R@1"] == m["R@5"] == 100.0
    assert round(m["mAP"], 2) == 72.22
    assert round(m["mINP"], 2) == 50.00
    t = retrieval_metrics(scores, qp, gp, ap_convention="trapezoid", tie_mode=tie_mode)
    assert round(t["mAP"], 2) == 67.78
    assert m["gallery_size"] == 8 and m["n_queries_valid"] == 1 and m["n_queries_skipped"] == 0


def test_worked_example_shuffled_gallery_order_is_irrelevant():
    scores, qp, gp = worked_example()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    m = retrieval_metrics(scores[:, perm], qp, np.asarray(gp)[perm.numpy()])
    assert round(m["mAP"], 2) == 72.22


def test_tie_example():
    """docs/evaluation.md §3: g0 = 0.9 negative, g1 = 0.9 positive, g2 = 0.5 negative."""
    scores = torch.tensor([[0.9, 0.9, 0.5]])
    stable = retrieval_metrics(scores, [1], [0, 1, 0])
    expected = retrieval_metrics(scores, [1], [0, 1, 0], tie_mode="expected")
    assert stable["R@1"] == 0.0
    assert expected["R@1"] == pytest.approx(50.0)
    assert expected["mAP"] == pytest.approx(75.0)  # AP is 1 or 1/2 with equal probability
    assert stable["tie_diagnostic"] == expected["tie_diagnostic"] == 1
    assert stable["tie_rule"] != expected["tie_rule"]


# --- edge cases ------------------------------------------------------------------------------------

def test_zero_positive_query_is_skipped_counted_and_warned():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.1]])
    with pytest.warns(UserWarning, match="no positive"):
        m = retrieval_metrics(scores, [1, 7], [1, 0, 0])
    assert m["n_queries_valid"] == 1 and m["n_queries_skipped"] == 1
    assert m["R@1"] == 100.0 and m["mAP"] == 100.0 and not math.isnan(m["mINP"])


def test_all_queries_without_positive_raise():
    with pytest.raises(ValueError, match="no retrieval query"):
        retrieval_metrics(torch.rand(3, 4), [9, 9, 9], [0, 1, 2, 3])
    with pytest.raises(ValueError, match="no reid query"):
        # the only same-pid entry shares the query's camera, so it is removed
        reid_metrics(torch.rand(1, 2), [1], [1, 2], [0], [0, 1])


def test_k_larger_than_gallery_is_clipped_and_recorded():
    scores = torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    m = retrieval_metrics(scores, [0, 2], [0, 1, 2])
    assert m["k_clipped"] == {"R@5": 3, "R@10": 3}
    assert m["R@1"] == 0.0 and m["R@5"] == m["R@10"] == 100.0
    assert len(m["cmc"]) == 3
    assert m["rSum"] == pytest.approx(200.0)


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[0.1, float("nan")]]), [0], [0, 1])


def test_bad_arguments():
    with pytest.raises(ValueError):
        retrieval_metrics(torch.rand(2, 3), [0, 1], [0, 1, 2], ap_convention="interp")
    with pytest.raises(ValueError):
        retrieval_metrics(torch.rand(2, 3), [0, 1], [0, 1, 2], tie_mode="random")
    with pytest.raises(ValueError):
        retrieval_metrics(torch.rand(2, 3), [0, 1, 2], [0, 1, 2])


def test_tie_diagnostic_counts_only_ties_with_a_negative():
    scores = torch.tensor([
        [0.9, 0.9, 0.1, 0.0],  # first positive (g1) tied with negative g0 -> counted
        [0.9, 0.9, 0.1, 0.0],  # first positive tied only with another positive -> not counted
        [0.5, 0.9, 0.1, 0.0],  # no tie at the first positive -> not counted
        [0.1, 0.7, 0.2, 0.7],  # positive g1 first, tied with negative g3 after it -> counted
    ])
    qp = [1, 5, 2, 1]
    gp = [[0, 1, 2, 3], [5, 5, 2, 3], [0, 2, 1, 3], [0, 1, 2, 3]]
    counted = [retrieval_metrics(scores[i:i + 1], qp[i:i + 1], gp[i])["tie_diagnostic"] for i in range(4)]
    assert counted == [1, 0, 0, 1]


# --- ReID ------------------------------------------------------------------------------------------

def test_reid_same_pid_same_camera_exclusion():
    # query pid 1 on camera 0. Gallery by ascending distance:
    #   g0 pid 1 cam 0 -> removed (same pid, same camera), takes no rank
    #   g1 pid 0 cam 1 -> distractor: a negative, rank 1
    #   g2 pid 1 cam 1 -> positive, rank 2
    #   g3 pid 2 cam 0 -> other pid on the same camera: a negative, rank 3
    #   g4 pid 1 cam 2 -> positive, rank 4
    dist = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids, g_cams = [1, 0, 1, 2, 1], [0, 1, 1, 0, 2]
    m = reid_metrics(dist, [1], g_pids, [0], g_cams)
    assert m["R@1"] == 0.0 and m["cmc"][:2] == [0.0, 100.0]
    assert m["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 4) / 2)
    assert m["mINP"] == pytest.approx(100 * 2 / 4)
    assert m["max_rank"] == 5 and len(m["cmc"]) == 5
    assert_same_metrics(m, reference_reid(dist, [1], g_pids, [0], g_cams))
    t = reid_metrics(dist, [1], g_pids, [0], g_cams, ap_convention="trapezoid")
    # hits at 0-based ranks 1 and 3: (0/1 + 1/2)/2 and (1/3 + 2/4)/2
    assert t["mAP"] == pytest.approx(100 * ((0 + 0.5) / 2 + (1 / 3 + 0.5) / 2) / 2)


def test_reid_query_without_other_camera_positive_is_skipped():
    dist = torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    with pytest.warns(UserWarning, match="no positive"):
        m = reid_metrics(dist, [1, 2], [1, 2, 1], [0, 0], [1, 0, 0])
    assert m["n_queries_valid"] == 1 and m["n_queries_skipped"] == 1


def test_reid_removed_entry_does_not_count_for_ties():
    # the removed same-camera entry g0 has the same distance as the positive g1: no tie with a negative
    m = reid_metrics(torch.tensor([[0.2, 0.2, 0.5]]), [1], [1, 1, 2], [0], [0, 1, 0])
    assert m["tie_diagnostic"] == 0 and m["R@1"] == 100.0


# --- parity with the slow reference ----------------------------------------------------------------

def random_problem(seed, n_q, n_g, n_ids, n_levels, dtype=torch.float32):
    """Integer-valued scores from a few levels, so that ties are everywhere."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, n_levels, (n_q, n_g), generator=g).to(dtype)
    q_pids = torch.randint(0, n_ids, (n_q,), generator=g)
    g_pids = torch.randint(0, n_ids, (n_g,), generator=g)
    return scores, q_pids, g_pids


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64])
@pytest.mark.parametrize("ap_convention", ["noninterp", "trapezoid"])
@pytest.mark.parametrize("seed", range(4))
def test_retrieval_parity_with_reference(seed, ap_convention, dtype):
    scores, qp, gp = random_problem(seed, n_q=37, n_g=23 + seed, n_ids=5, n_levels=4 + 3 * seed, dtype=dtype)
    ref = reference_retrieval(scores, qp, gp, ap_convention=ap_convention)
    for block_rows in (None, 1, 5):
        fast = quiet(retrieval_metrics, scores, qp, gp, ap_convention=ap_convention, block_rows=block_rows)
        assert_same_metrics(fast, ref)
        assert fast["rSum"] == pytest.approx(ref["rSum"])


@pytest.mark.parametrize("ap_convention", ["noninterp", "trapezoid"])
def test_image_to_text_parity_on_transposed_numpy_matrix(ap_convention):
    scores, qp, gp = random_problem(11, n_q=40, n_g=15, n_ids=6, n_levels=5)
    s_i2t = scores.numpy().T  # images as queries over the caption gallery, non-contiguous
    fast = quiet(retrieval_metrics, s_i2t, gp.numpy(), qp.tolist(), ap_convention=ap_convention)
    ref = reference_retrieval(s_i2t, gp, qp, ap_convention=ap_convention)
    assert_same_metrics(fast, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ap_convention", ["noninterp", "trapezoid"])
@pytest.mark.parametrize("seed", range(4))
def test_reid_parity_with_reference(seed, ap_convention, dtype):
    g = torch.Generator().manual_seed(100 + seed)
    n_q, n_g = 31, 60
    dist = torch.randint(0, 6, (n_q, n_g), generator=g).to(dtype)
    q_pids = torch.randint(0, 8, (n_q,), generator=g)
    g_pids = torch.randint(0, 8, (n_g,), generator=g)  # pid 0 acts as distractor
    q_cams = torch.randint(0, 3, (n_q,), generator=g)
    g_cams = torch.randint(0, 3, (n_g,), generator=g)
    ref = reference_reid(dist, q_pids, g_pids, q_cams, g_cams, ap_convention=ap_convention)
    for block_rows in (None, 1, 4):
        fast = quiet(reid_metrics, dist, q_pids, g_pids, q_cams, g_cams, ap_convention=ap_convention,
                     block_rows=block_rows)
        assert_same_metrics(fast, ref)
        assert len(fast["cmc"]) == 50


def test_packed_cpu_order_matches_torch_stable_sort():
    values = [0.0, -0.0, 1.5, -1.5, float("inf"), float("-inf"), 3.0e38, -3.0e38, 1e-45, -1e-45, 0.25]
    g = torch.Generator().manual_seed(0)
    block = torch.tensor(values)[torch.randint(0, len(values), (50, 40), generator=g)]
    for descending in (True, False):
        order, keys = _rank_order(block, descending)
        ref_values, ref_order = torch.sort(block.double(), dim=1, descending=descending, stable=True)
        assert torch.equal(order, ref_order)
        # the tie keys change exactly where the scores change
        assert torch.equal(keys[:, 1:] != keys[:, :-1], ref_values[:, 1:] != ref_values[:, :-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64])
def test_top_k_indices_is_the_stable_ranking_cut_at_k(dtype):
    g = torch.Generator().manual_seed(12)
    scores = torch.randint(0, 4, (60, 9), generator=g).to(dtype)  # many ties, some straddling the cut
    scores[:20] = torch.randperm(9, generator=g).to(dtype)  # rows without ties take the topk path
    if dtype.is_floating_point:
        scores[20] = 0.0
        scores[21, ::2] = -0.0  # -0.0 ties with 0.0
    ranking = torch.sort(scores.double(), dim=1, descending=True, stable=True).indices
    for k in (1, 3, 8, 9, 20):
        assert torch.equal(top_k_indices(scores, k), ranking[:, :min(k, 9)]), k
    assert top_k_indices(np.array([[0.5, 0.5, 0.5]]), 2).tolist() == [[0, 1]]
    for k in (1, 2):
        with pytest.raises(ValueError, match="NaN"):
            top_k_indices(torch.tensor([[0.1, float("nan")]]), k)
    with pytest.raises(ValueError, match="k must be positive"):
        top_k_indices(scores, 0)


def test_torch_stable_descending_sort_breaks_ties_by_ascending_index():
    x = torch.randint(0, 3, (30, 200)).double()
    values, order = torch.sort(x, dim=1, descending=True, stable=True)
    same = values[:, 1:] == values[:, :-1]
    assert bool((order[:, 1:] > order[:, :-1])[same].all())


# --- tie_mode="expected" ---------------------------------------------------------------------------

def brute_force_expected(scores, qp, gp, ap_convention):
    """Average of the stable-rule metrics over every permutation of the gallery columns.

    The stable rule breaks ties by column index, so averaging over all column permutations averages
    uniformly over the orderings inside every tie group.
    """
    n_g = scores.shape[1]
    totals, count = None, 0
    for perm in itertools.permutations(range(n_g)):
        perm = list(perm)
        ref = reference_retrieval(scores[:, perm], qp, [int(gp[j]) for j in perm], ap_convention=ap_convention)
        values = [ref[k] for k in ("R@1", "R@5", "mAP", "mINP")] + ref["cmc"]
        totals = values if totals is None else [a + b for a, b in zip(totals, values)]
        count += 1
    return [v / count for v in totals]


@pytest.mark.parametrize("ap_convention", ["noninterp", "trapezoid"])
@pytest.mark.parametrize("seed", range(3))
def test_expected_mode_matches_enumeration_of_tie_orders(seed, ap_convention):
    g = torch.Generator().manual_seed(seed)
    n_g = 7
    scores = torch.randint(0, 3, (4, n_g), generator=g).float()
    gp = torch.randint(0, 3, (n_g,), generator=g)
    qp = gp[torch.randint(0, n_g, (4,), generator=g)]  # every query has a positive
    want = brute_force_expected(scores, qp, gp, ap_convention)
    m = retrieval_metrics(scores, qp, gp, ap_convention=ap_convention, tie_mode="expected", block_rows=3)
    got = [m[k] for k in ("R@1", "R@5", "mAP", "mINP")] + m["cmc"]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_expected_mode_constant_scores():
    # constant model: one tie group of 6 with 2 positives -> R@1 = 2/6, R@K = 1 - C(4,K)/C(6,K)
    m = retrieval_metrics(torch.zeros(1, 6), [1], [1, 0, 0, 1, 0, 0], tie_mode="expected", ks=(1, 2, 3))
    assert m["R@1"] == pytest.approx(100 * 2 / 6)
    assert m["R@2"] == pytest.approx(100 * (1 - 6 / 15))
    assert m["R@3"] == pytest.approx(100 * (1 - 4 / 20))
    # last positive is the max of 2 slots out of 6: P(M = k) = (k-1)/15
    assert m["mINP"] == pytest.approx(100 * sum(2 / k * (k - 1) / 15 for k in range(2, 7)))


def test_expected_equals_stable_without_ties():
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(30, 40, generator=g)
    qp, gp = torch.randint(0, 6, (30,), generator=g), torch.randint(0, 6, (40,), generator=g)
    for conv in ("noninterp", "trapezoid"):
        a = quiet(retrieval_metrics, scores, qp, gp, ap_convention=conv)
        b = quiet(retrieval_metrics, scores, qp, gp, ap_convention=conv, tie_mode="expected")
        assert_same_metrics(a, b)


# --- determinism, helpers, record --------------------------------------------------------------------

def test_cpu_results_are_deterministic_and_independent_of_block_size():
    scores, qp, gp = random_problem(7, n_q=200, n_g=90, n_ids=20, n_levels=6)
    first = quiet(retrieval_metrics, scores, qp, gp)
    assert quiet(retrieval_metrics, scores, qp, gp) == first
    assert quiet(retrieval_metrics, scores, qp, gp, block_rows=13) == first
    expected = quiet(retrieval_metrics, scores, qp, gp, tie_mode="expected")
    assert quiet(retrieval_metrics, scores, qp, gp, tie_mode="expected") == expected
    assert quiet(retrieval_metrics, scores, qp, gp, tie_mode="expected", block_rows=7) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tie_mode", ["stable", "expected"])
def test_cuda_matches_cpu(tie_mode):
    scores, qp, gp = random_problem(8, n_q=300, n_g=120, n_ids=25, n_levels=5)
    cpu = quiet(retrieval_metrics, scores, qp, gp, tie_mode=tie_mode)
    gpu = quiet(retrieval_metrics, scores.cuda(), qp, gp, tie_mode=tie_mode)
    assert_same_metrics(gpu, cpu, tol=1e-9)
    assert quiet(retrieval_metrics, scores.cuda(), qp, gp, tie_mode=tie_mode) == gpu
    cams = torch.arange(120) % 3
    q_cams = torch.arange(300) % 3
    assert_same_metrics(quiet(reid_metrics, scores.cuda(), qp, gp, q_cams, cams),
                        quiet(reid_metrics, scores, qp, gp, q_cams, cams))


def test_cosine_similarity():
    q = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    g = np.array([[1.0, 0.0], [0.0, 2.0]])
    s = cosine_similarity(q, g)
    assert s.dtype == torch.float32
    assert s.flatten().tolist() == pytest.approx([0.6, 0.8, 0.0, 0.0])  # zero vector -> 0, not NaN


def test_metrics_record_is_rounded_json():
    scores, qp, gp = worked_example()
    rec = metrics_record(retrieval_metrics(scores, qp, gp), dataset="CUHK-PEDES", split="test", direction="t2i",
                         similarity="cosine", precision="fp32", selection_split="val", row="best", epoch=12,
                         seed=1, method="IRRA")
    assert rec["mAP"] == 72.22 and rec["mINP"] == 50.0 and rec["R@10"] == 100.0 and rec["rSum"] == 300.0
    assert rec["ap_convention"] == "noninterp" and rec["noise_rate"] is None and rec["method"] == "IRRA"
    assert rec["k_clipped"] == {"R@10": 8} and rec["tie_diagnostic"] == 0 and len(rec["cmc"]) == 8
    assert list(rec)[:6] == ["dataset", "split", "direction", "n_queries_valid", "n_queries_skipped",
                             "gallery_size"]
    json.dumps(rec)
    with pytest.raises(ValueError):
        metrics_record(retrieval_metrics(scores, qp, gp), row="final")


def test_evaluation_reports_the_trapezoid_map_next_to_the_default_when_asked():
    """The paper profile of SSAN logs the official code's trapezoid mAP beside the non-interpolated one."""
    from types import SimpleNamespace

    from tireid_core.evaluation import score_metrics, summary
    from tireid_core.experiment import TextImageEvalSet
    from tireid_core.params import EvalParams

    pids = [0, 0, 1, 1, 2]
    evalset = TextImageEvalSet("test", [Path(f"{i}.png") for i in range(5)], pids, ["c"] * 5, pids, list(range(5)),
                               [(i, 0) for i in range(5)])
    scores = {"final": torch.tensor([[0.1, 0.9, 0.3, 0.2, 0.5], [0.8, 0.1, 0.7, 0.6, 0.2], [0.2, 0.3, 0.1, 0.9, 0.4],
                                     [0.5, 0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4, 0.5]])}
    exp = SimpleNamespace(params=SimpleNamespace(method="ssan", eval=EvalParams()))
    plain = score_metrics(exp, evalset, scores)["final"]
    assert "mAP_trapezoid" not in plain
    exp.params.eval = EvalParams(also_trapezoid_map=True)
    both = score_metrics(exp, evalset, scores)["final"]
    trapezoid = retrieval_metrics(scores["final"], torch.tensor(pids), torch.tensor(pids), ap_convention="trapezoid")
    assert both["mAP"] == plain["mAP"] and both["mAP_trapezoid"] == trapezoid["mAP"] != plain["mAP"]
    assert "mAP_trapezoid" in summary(both)
