"""Tests for tireid_core.models.nafs_scoring: CNL score (docs/nafs.md §2.3) and RVN re-ranking (§5, §7 item 1).

Vectorised functions are checked against the per-text / Python-set reference loops of tests/reference_impl.py, plus
small examples worked by hand.
"""
import math

import pytest
import torch

from reference_impl import cnl_scores_loop, rvn_bonus_loop, rvn_rerank_loop
from tireid_core.models.nafs_scoring import cnl_scores, rvn_bonus, rvn_rerank, topk_mask, visual_similarity


def stable_ranking(scores):
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def random_problem(seed, n_texts=11, n_images=13, n_units=7, n_regions=6, d=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n_texts, n_units, d, generator=g, dtype=dtype)
    values = torch.randn(n_texts, n_units, d, generator=g, dtype=dtype)
    queries = torch.randn(n_images, n_regions, d, generator=g, dtype=dtype)
    img_values = torch.randn(n_images, n_regions, d, generator=g, dtype=dtype)
    mask = torch.rand(n_texts, n_units, generator=g) < 0.6  # arbitrary, non-prefix masks
    mask[:, 1] |= ~mask.any(1)  # every text keeps a valid unit
    mask[0] = False
    mask[0, 0] = True  # a single valid unit, the first
    mask[1] = False
    mask[1, -1] = True  # all but one masked: only the last unit
    mask[2] = True  # fully valid
    return dict(text_units=keys, text_mask=mask, image_units=queries, text_values=values, image_values=img_values)


def run(fn, p, **kw):
    return fn(p["text_units"], p["text_mask"], p["image_units"], text_values=p["text_values"],
              image_values=p["image_values"], **kw)


# ----------------------------------------------------------------------------------------------
# CNL
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 37, 500, None])
def test_cnl_vectorised_matches_loop_float64(chunk):
    p = random_problem(0)
    fast = run(cnl_scores, p, chunk=chunk)
    ref = run(cnl_scores_loop, p)
    assert fast.shape == (11, 13) and fast.dtype == torch.float64
    assert torch.allclose(fast, ref, rtol=0, atol=1e-12)
    assert torch.equal(stable_ranking(fast), stable_ranking(ref))
    assert torch.equal(stable_ranking(fast.T), stable_ranking(ref.T))


def test_cnl_vectorised_matches_loop_float32_and_image_chunks():
    p = random_problem(1, n_texts=9, n_images=23, n_units=12, d=16, dtype=torch.float32)
    fast = run(cnl_scores, p, chunk=300)
    for image_chunk in (None, 5, 200):
        ref = run(cnl_scores_loop, p, image_chunk=image_chunk)
        assert torch.allclose(fast, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(stable_ranking(fast), stable_ranking(ref))


def test_cnl_hand_worked_example():
    # d = 2, 2 texts × 2 images × 2 units; values = keys (text) and = queries (image) by default.
    # Images: I0 q = [(1,0), (0,1)], I1 q = [(0,1), (-1,0)].  Text T0 keys [(1,0), (0,1)];
    # text T1 keys [(1,0), (5,-7)] with the second unit masked.  temperature λ = ln 3, so exp(λ·1) = 3.
    # T0-I0: s = [[1,0],[0,1]] (rows r, columns w); LeakyReLU and column norms (both 1) change nothing;
    #        softmax_w(λ s): row 1 (3,1)/4, row 2 (1,3)/4 → t1 ∝ (3,1), t2 ∝ (1,3);
    #        cos(u1=(1,0), t1) = 3/√10, cos(u2=(0,1), t2) = 3/√10 → S = 3/√10 = 0.948683.
    # T0-I1: s = [[0,1],[-1,0]] → LeakyReLU [[0,1],[-0.1,0]] → columns normalised over r: w1 (0,-0.1)/0.1 = (0,-1),
    #        w2 (1,0) → s̃ = [[0,1],[-1,0]] (the slope cancels in a column with one non-zero entry);
    #        row 1: exp(0, ln3) = (1,3) → (1/4,3/4); row 2: exp(-ln3, 0) = (1/3,1) → (1/4,3/4);
    #        t1 = t2 ∝ (1,3); cos((0,1), ·) = 3/√10, cos((-1,0), ·) = -1/√10 → S = 1/√10 = 0.316228.
    # T1: one valid unit, a_r1 = 1, t_r = (1,0): I0 → (1 + 0)/2 = 0.5; I1 → (0 - 1)/2 = -0.5.
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [5.0, -7.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    queries = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [-1.0, 0.0]]])
    expected = torch.tensor([[3 / math.sqrt(10), 1 / math.sqrt(10)], [0.5, -0.5]])
    for fn in (cnl_scores, cnl_scores_loop):
        got = fn(keys, mask, queries, temperature=math.log(3))
        assert torch.allclose(got, expected, atol=1e-6), fn.__name__
        # Default λ = 20: the attention is nearly hard. T0-I0: t_r ≈ k_r → 1; T0-I1: t_r ≈ (0,1) → (1 + 0)/2.
        got20 = fn(keys, mask, queries)
        assert torch.allclose(got20, torch.tensor([[1.0, 0.5], [0.5, -0.5]]), atol=1e-6), fn.__name__
        assert 0.948683 == pytest.approx(float(got[0, 0]), abs=1e-6)
        assert 0.316228 == pytest.approx(float(got[0, 1]), abs=1e-6)


def test_cnl_temperature_and_slope_have_effect():
    p = random_problem(2)
    base = run(cnl_scores, p)
    for kw in (dict(temperature=5.0), dict(leaky_slope=0.5), dict(leaky_slope=0.0), dict(eps=1e-2)):
        other = run(cnl_scores, p, **kw)
        assert (other - base).abs().max() > 1e-3, kw
        assert torch.allclose(other, run(cnl_scores_loop, p, **kw), rtol=0, atol=1e-12), kw


def test_cnl_stabilised_path():
    p = random_problem(3, dtype=torch.float32)
    # λ = 200 in float32: exp(λ s̃) would overflow without the max shift; auto mode detects it.
    fast = run(cnl_scores, p, temperature=200.0)
    ref = run(cnl_scores_loop, p, temperature=200.0)
    assert torch.isfinite(fast).all()
    assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-5)
    p64 = random_problem(3)
    forced = [run(cnl_scores, p64, stabilize=flag) for flag in (True, False, None)]
    assert torch.allclose(forced[0], forced[1], rtol=0, atol=1e-12)
    assert torch.allclose(forced[1], forced[2], rtol=0, atol=1e-12)


def test_cnl_masked_units_are_ignored_and_defaults():
    p = random_problem(4)
    base = run(cnl_scores, p)
    garbage = dict(p)
    fill = torch.full_like(p["text_units"], 1e3)
    garbage["text_units"] = torch.where(p["text_mask"][..., None], p["text_units"], fill)
    garbage["text_values"] = torch.where(p["text_mask"][..., None], p["text_values"], -fill)
    assert torch.allclose(run(cnl_scores, garbage), base, rtol=0, atol=1e-12)
    # values default to the units; mask None = all valid
    keys, queries = p["text_units"], p["image_units"]
    assert torch.allclose(cnl_scores(keys, None, queries),
                          cnl_scores(keys, torch.ones(keys.shape[:2], dtype=torch.bool), queries,
                                     text_values=keys, image_values=queries), rtol=0, atol=0)
    assert torch.allclose(cnl_scores(keys, None, queries), cnl_scores_loop(keys, None, queries), rtol=0, atol=1e-12)


def test_cnl_determinism_and_input_checks():
    p = random_problem(5, dtype=torch.float32)
    assert torch.equal(run(cnl_scores, p, chunk=64), run(cnl_scores, p, chunk=64))
    assert torch.equal(run(cnl_scores, p), run(cnl_scores, p))
    bad = p["text_mask"].clone()
    bad[3] = False
    with pytest.raises(ValueError, match="no valid unit"):
        cnl_scores(p["text_units"], bad, p["image_units"])
    with pytest.raises(ValueError, match="width"):
        cnl_scores(p["text_units"], p["text_mask"], p["image_units"][..., :3])
    with pytest.raises(ValueError, match="text_mask"):
        cnl_scores(p["text_units"], p["text_mask"][:, :2], p["image_units"])


def test_cnl_gradients_match_loop():
    p = random_problem(6, n_texts=4, n_images=5, n_units=4)
    leaves = {k: v.clone().requires_grad_() for k, v in p.items() if k != "text_mask"}
    leaves["text_mask"] = p["text_mask"]
    grads = []
    for fn in (cnl_scores, cnl_scores_loop):
        out = run(fn, leaves)
        keys = [k for k in leaves if k != "text_mask"]
        grads.append(torch.autograd.grad((out * torch.arange(out.numel()).view_as(out)).sum(),
                                         [leaves[k] for k in keys]))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# Top-K and RVN
# ----------------------------------------------------------------------------------------------

def test_topk_mask_follows_tie_rule():
    g = torch.Generator().manual_seed(8)
    scores = torch.randint(0, 4, (50, 9), generator=g).float()  # many ties
    scores[0] = 0.0
    scores[1, ::2] = -0.0  # -0.0 ties with 0.0
    for k in (1, 3, 9, 20):
        mask = topk_mask(scores, k)
        kk = min(k, 9)
        expected = torch.zeros_like(mask).scatter_(1, stable_ranking(scores)[:, :kk], True)
        assert torch.equal(mask, expected), k
        assert (mask.sum(1) == kk).all()
    assert torch.equal(topk_mask(torch.tensor([[0.5, 0.5, 0.5]]), 2), torch.tensor([[True, True, False]]))
    with pytest.raises(ValueError, match="NaN"):
        topk_mask(torch.tensor([[0.1, float("nan")]]), 1)


# 2 texts × 3 images, K = 2. i2i rows give V(0) = {0, 2}, V(1) = {1, 0}, V(2) = {2, 1}.
S_2x3 = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.7]])
I2I_3 = torch.tensor([[1.0, 0.3, 0.6], [0.5, 1.0, 0.2], [0.1, 0.4, 1.0]])


def test_rvn_intended_hand_worked():
    # N(T0) = {0, 1}, N(T1) = {1, 2}. Jaccard with V(0) = {0,2}, V(1) = {0,1}, V(2) = {1,2}:
    # T0: {0}/{0,1,2} = 1/3, {0,1}/{0,1} = 1, {1}/{0,1,2} = 1/3; T1: {2}/3 = 1/3, {1}/3 = 1/3, {1,2}/{1,2} = 1.
    expected = torch.tensor([[1 / 3, 1.0, 1 / 3], [1 / 3, 1 / 3, 1.0]])
    for fn in (rvn_bonus, rvn_bonus_loop):
        assert torch.allclose(fn(S_2x3, I2I_3, k=2), expected), fn.__name__
    for fn in (rvn_rerank, rvn_rerank_loop):
        assert torch.allclose(fn(S_2x3, I2I_3, k=2, weight=0.5), S_2x3 + 0.5 * expected), fn.__name__
    # Default K = 5 is clipped to the 3 images: N(T) = V(I) = all images, Jaccard 1 everywhere.
    assert torch.equal(rvn_bonus(S_2x3, I2I_3), torch.ones(2, 3))
    assert torch.equal(rvn_bonus_loop(S_2x3, I2I_3), torch.ones(2, 3))


def test_rvn_official_hand_worked():
    # K = 2 on 2 texts × 3 images: A(i) = top-2 texts of column i = {0, 1} for every image (K clipped to 2 texts).
    # Official matrix B[i, j] = |A(i) ∩ V(j)| / |A(i) ∪ V(j)| for columns j < min(n_img, n_txt) = 2, V read as indices:
    # B[i, 0] = |{0,1} ∩ {0,2}| / |{0,1,2}| = 1/3, B[i, 1] = |{0,1} ∩ {0,1}| / 2 = 1. t2i bonus = Bᵀ: the bonus of
    # text T is the same for every image — text and image indices are mixed.
    expected = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 1.0, 1.0]])
    for fn in (rvn_bonus, rvn_bonus_loop):
        assert torch.allclose(fn(S_2x3, I2I_3, k=2, mode="official"), expected), fn.__name__
    # K = 1: A(0) = {0} (0.9 > 0.2), A(1) = {1}, A(2) = {1}; V(j) = {j}. B[i, j] = [A(i) = {j}]:
    # a reciprocal top-1 boost, T0: (I0) 1; T1: (I1, I2) 1.
    expected1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    assert torch.equal(rvn_bonus(S_2x3, I2I_3, k=1, mode="official"), expected1)
    assert torch.equal(rvn_bonus_loop(S_2x3, I2I_3, k=1, mode="official"), expected1)


def test_rvn_official_only_touches_texts_below_n_images():
    # 3 texts × 2 images, K = 1: A(0) = top text of column 0 = {0}, A(1) = {1}; V(0) = {0}, V(1) = {1}.
    # Official: T0 (1, 0), T1 (0, 1), T2 nothing (index 2 ≥ n_img). Intended: N(T2) = {1} → (0, 1).
    s = torch.tensor([[0.9, 0.1], [0.3, 0.8], [0.6, 0.7]])
    i2i = torch.tensor([[1.0, 0.2], [0.2, 1.0]])
    official = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    intended = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    for fn in (rvn_bonus, rvn_bonus_loop):
        assert torch.equal(fn(s, i2i, k=1, mode="official"), official)
        assert torch.equal(fn(s, i2i, k=1, mode="intended"), intended)


@pytest.mark.parametrize("shape", [(17, 9), (9, 17), (12, 12), (1, 4), (4, 1)])
@pytest.mark.parametrize("k", [1, 3, 5, 40])
def test_rvn_vectorised_matches_loop(shape, k):
    g = torch.Generator().manual_seed(shape[0] * 100 + shape[1] + k)
    n_texts, n_images = shape
    s = torch.randint(0, 5, shape, generator=g).float() / 4  # ties
    f = torch.randn(n_images, 3, generator=g)
    vis = visual_similarity(f)
    vis[:, : n_images // 2] = vis[:, : n_images // 2].round(decimals=1)
    for mode in ("intended", "official"):
        fast = rvn_rerank(s, vis, k=k, mode=mode, weight=0.7)
        ref = rvn_rerank_loop(s, vis, k=k, mode=mode, weight=0.7)
        assert torch.equal(fast, ref), mode
        assert torch.equal(stable_ranking(fast), stable_ranking(ref)), mode


def test_rvn_off_inputs_untouched_and_checks():
    s, i2i = S_2x3.clone(), I2I_3.clone()
    assert torch.equal(rvn_rerank(s, i2i, mode="off"), S_2x3)
    out = rvn_rerank(s, i2i, k=2)
    assert out is not s and torch.equal(s, S_2x3) and torch.equal(i2i, I2I_3)
    assert torch.equal(rvn_rerank(s, i2i, k=2), out)  # deterministic
    with pytest.raises(ValueError, match="mode"):
        rvn_bonus(s, i2i, mode="paper")
    with pytest.raises(ValueError, match="i2i_scores"):
        rvn_bonus(s, i2i[:2, :2])
    with pytest.raises(ValueError, match="k must be positive"):
        rvn_bonus(s, i2i, k=0)


def test_rvn_loop_rows_subset():
    g = torch.Generator().manual_seed(9)
    s, vis = torch.randn(8, 6, generator=g), visual_similarity(torch.randn(6, 4, generator=g))
    full = rvn_bonus(s, vis, k=3, mode="intended")
    part = rvn_bonus_loop(s, vis, k=3, mode="intended", rows=[1, 5])
    assert torch.equal(part[[1, 5]], full[[1, 5]]) and torch.isnan(part[0]).all()
    full = rvn_bonus(s, vis, k=3, mode="official")
    part = rvn_bonus_loop(s, vis, k=3, mode="official", rows=[0, 4])
    assert torch.equal(part[:, [0, 4]], full[:, [0, 4]]) and torch.isnan(part[:, 1]).all()
