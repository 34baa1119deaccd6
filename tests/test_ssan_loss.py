"""Hand-worked checks of SSAN's compound ranking loss (docs/ssan.md §3.2, §7 items 3–7).

Every feature is a 2-D unit vector at a chosen angle, so S_ij = cos(a_i − t_j) exactly (a: images,
t: captions, w: weak captions; angles in degrees). ℓ = S_neg − S_pos + margin; a negative is semi-hard
when 0 < ℓ < margin ("*" below), hard when ℓ ≥ margin ("H"), easy when ℓ ≤ 0. α1 = 0.2, β = 0.1.
Designs have at most one semi-hard negative per anchor unless a test is about the random draw.
"""
import math

import pytest
import torch

from tireid_core.losses import compound_ranking_loss, ranking_hinges, semi_hard_triplets, ssan_weak_margins


def unit(*degrees: float) -> torch.Tensor:
    r = torch.tensor([math.radians(d) for d in degrees], dtype=torch.float64)
    return torch.stack([torch.cos(r), torch.sin(r)], dim=1)


def c(degrees: float) -> float:
    return math.cos(math.radians(degrees))


def cr(a, t, w, pids, **kw):
    kw.setdefault("epoch", 0)
    return compound_ranking_loss(unit(*a), unit(*t), unit(*w), torch.tensor(pids), **kw).item()


def strong(a, t, pids, **kw):
    return cr(a, t, t, pids, weak_term=False, **kw)


APPROX = dict(rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------ strong term


def test_positive_is_the_diagonal_only():
    # pids [0, 0, 1]; a = [0, 40, 65], t = [0, 22, 65]
    # image anchors (row i, positive S_ii, negatives: captions of id ≠ pid_i)
    #   I0: pos cos0 = 1;    neg D2: cos65 − 1 + .2 < 0 easy → skipped.
    #       (D1 is same-id: as a negative it would be semi-hard, cos22 − 1 + .2 = .127)
    #   I1: pos cos18;       neg D2: cos25 − cos18 + .2 = .1553 *
    #       (if the same-id caption D0, cos40 = .766, were a positive, D2 (.906) would be hard)
    #   I2: pos 1;           negs D0: cos65 − 1 + .2 < 0, D1: cos43 − 1 + .2 < 0 → skipped
    # caption anchors (column j, negatives: images of id ≠ pid_j)
    #   D0: pos 1,           neg I2: cos65 − 1 + .2 < 0 → skipped
    #   D1: pos cos18,       neg I2: cos43 − cos18 + .2 = −.020 → skipped
    #       (same-id I0, cos22, would be semi-hard: .176)
    #   D2: pos 1,           negs I0: easy, I1: cos25 − 1 + .2 = .1063 *
    expected = (c(25) - c(18) + 0.2) + (c(25) - 1 + 0.2)
    assert strong([0, 40, 65], [0, 22, 65], [0, 0, 1]) == pytest.approx(expected, **APPROX)


def test_hard_negatives_excluded_and_anchors_without_semi_hard_skipped():
    # pids [0, 1, 2]; a = [0, 60, −100], t = [20, 5, −35]
    #   I0: pos cos20; D1: cos5 − cos20 + .2 = .256 H; D2: cos35 − cos20 + .2 = .0795 *
    #   I1: pos cos55; D0: cos40 ≥ cos55 H; D2: cos95 easy → skipped (only hard/easy)
    #   I2: pos cos65; D0: cos120, D1: cos105 easy → skipped
    #   D0: pos cos20; I1: cos40 − cos20 + .2 = .0264 *; I2 easy
    #   D1: pos cos55; I0: cos5 H; I2: easy → skipped
    #   D2: pos cos65; I0: cos35 H; I1: cos95 easy → skipped
    expected = (c(35) - c(20) + 0.2) + (c(40) - c(20) + 0.2)
    assert strong([0, 60, -100], [20, 5, -35], [0, 1, 2]) == pytest.approx(expected, **APPROX)


def test_both_directions_are_summed_and_the_text_direction_is_the_transpose():
    a, t, pids = [0, 40, 65], [0, 22, 65], [0, 0, 1]
    # swapping images and captions transposes S: the two directions swap, the sum does not change
    assert strong(t, a, pids) == pytest.approx(strong(a, t, pids), **APPROX)
    # with one direction only semi-hard in the image direction (I1) and one in the text direction (D2)
    # (test_positive_is_the_diagonal_only), the total is their sum, not either one alone
    assert strong(a, t, pids) > c(25) - c(18) + 0.2 + 1e-3


def test_features_are_l2_normalised():
    a, t, pids = [0, 60, -100], [20, 5, -35], torch.tensor([0, 1, 2])
    scale = torch.tensor([[3.0], [0.5], [7.0]], dtype=torch.float64)
    plain = compound_ranking_loss(unit(*a), unit(*t), unit(*t), pids, epoch=0)
    scaled = compound_ranking_loss(unit(*a) * scale, unit(*t) / scale, unit(*t) * 2, pids, epoch=0)
    assert scaled.item() == pytest.approx(plain.item(), **APPROX)


def test_random_semi_hard_choice_is_seeded_and_uniform():
    # pids [0, 1, 2]; a = [0, 110, −55], t = [0, 25, −30]
    #   I0: pos 1; D1: cos25 − 1 + .2 = .1063 *; D2: cos30 − 1 + .2 = .0660 *  ← two candidates
    #   I1: pos cos85; D0: cos110, D2: cos140 easy.   I2: pos cos25; D0: cos55, D1: cos80 easy
    #   D0: pos 1; I1, I2 easy.  D1: pos cos85; I0: cos25 H, I2: cos80 − cos85 + .2 = .287 H
    #   D2: pos cos25; I0: cos30 − cos25 + .2 = .1597 *; I1: cos140 easy
    a, t, pids = [0, 110, -55], [0, 25, -30], [0, 1, 2]
    text_part = c(30) - c(25) + 0.2
    candidates = [c(25) - 1 + 0.2 + text_part, c(30) - 1 + 0.2 + text_part]
    seen = set()
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        value = strong(a, t, pids, generator=g)
        again = strong(a, t, pids, generator=torch.Generator().manual_seed(seed))
        assert again == value
        hits = [k for k, cand in enumerate(candidates) if value == pytest.approx(cand, **APPROX)]
        assert len(hits) == 1
        seen.add(hits[0])
    assert seen == {0, 1}
    # generator=None draws from the global torch RNG (the SSAN model passes its own stream, reseeded by start_epoch)
    torch.manual_seed(123)
    first = strong(a, t, pids)
    torch.manual_seed(123)
    assert strong(a, t, pids) == first


def test_semi_hard_triplets_draws_only_among_candidates():
    # 1 anchor, 5 columns: hinges with margin .2 → candidates are columns 1 and 3 (0 < ℓ < .2);
    # column 0 is hard (.25), 2 easy (−.1), 4 semi-hard but not a valid negative (same identity)
    hinge = torch.tensor([[0.25, 0.05, -0.1, 0.15, 0.1]])
    valid = torch.tensor([[True, True, True, True, False]])
    margin = torch.tensor([0.2])
    chosen = {int(semi_hard_triplets(hinge, valid, margin, generator=torch.Generator().manual_seed(s))[0, 1])
              for s in range(60)}
    assert chosen == {1, 3}
    gated = semi_hard_triplets(hinge, valid, margin, anchor_ok=torch.tensor([False]))
    assert gated.shape == (0, 2)


# ------------------------------------------------------------------ fallback and degenerate batches


def test_fallback_is_per_direction_last_anchor_first_negative():
    # pids [0, 1, 2]; a = [100, −140, 0], t = [10, −25, 60]
    # image direction: no semi-hard negative at all
    #   I0: pos cos90 = 0; D1: cos125 easy; D2: cos40 H
    #   I1: pos cos115; D0: cos150 easy; D2: cos200 easy
    #   I2: pos cos60; D0: cos10 H; D1: cos25 H
    #   → fallback: last anchor I2 with its first negative D0: [cos10 − cos60 + .2]₊ = .6848
    #     (D1 would give .606, I0's first negative .. other values)
    # text direction mines its own triplet, so it does not fall back:
    #   D1: pos cos115; I0: cos125 − cos115 + .2 = .0490 *; I2: cos25 H; D0 and D2 only hard/easy
    expected = (c(10) - c(60) + 0.2) + (c(125) - c(115) + 0.2)
    assert strong([100, -140, 0], [10, -25, 60], [0, 1, 2]) == pytest.approx(expected, **APPROX)


def test_official_fallback_pairs_the_last_anchor_even_when_gated():
    # pids [0, 1, 0], pos .5, margin .2; nothing is semi-hard (every hinge is easy, −.3, or hard):
    #   row 1 (pid 1): col 0 → .95 − .5 + .2 = .65 H, col 2 → −.3;   row 2 (pid 0): col 0 (same pid!) → .9 − .5 + .2
    # anchors 0 and 2 are gated, so anchor 1 is the last eligible one; its first negative is column 0.
    pids = torch.tensor([0, 1, 0])
    valid = pids[:, None] != pids[None, :]
    pos, margin = torch.full((3,), 0.5, dtype=torch.float64), torch.full((3,), 0.2, dtype=torch.float64)
    neg = torch.zeros(3, 3, dtype=torch.float64)
    neg[1, 0], neg[2, 0] = 0.95, 0.9
    gate = torch.tensor([False, True, False])
    project = ranking_hinges(pos, neg, valid, margin, anchor_ok=gate)
    official = ranking_hinges(pos, neg, valid, margin, anchor_ok=gate, fallback_anchor="official")
    assert project.tolist() == pytest.approx([0.65])  # anchor 1, its own first negative
    # the official loop: the batch's last anchor (gated, pid 0) with column 0, which has its own identity
    assert official.tolist() == pytest.approx([0.6])
    # every anchor gated: the official code fails (its negative list is undefined); both modes give nothing
    none = torch.zeros(3, dtype=torch.bool)
    for mode in ("last_eligible", "official"):
        assert ranking_hinges(pos, neg, valid, margin, anchor_ok=none, fallback_anchor=mode).numel() == 0
    # without a gate the last anchor is eligible, so both modes agree
    torch.testing.assert_close(ranking_hinges(pos, neg, valid, margin),
                               ranking_hinges(pos, neg, valid, margin, fallback_anchor="official"))
    with pytest.raises(ValueError, match="fallback_anchor"):
        compound_ranking_loss(unit(0, 90), unit(0, 90), unit(0, 90), torch.tensor([0, 1]), epoch=0,
                              fallback_anchor="first")


def test_fallback_on_easy_negative_is_zero_but_differentiable():
    # a = t = [0, 90, 180], pids distinct: every negative is easy (S_ij ≤ 0 < S_ii − .2)
    # fallback I2/D0: [cos180 − 1 + .2]₊ = 0, in both directions and both terms
    img = unit(0, 90, 180).requires_grad_()
    loss = compound_ranking_loss(img, unit(0, 90, 180), unit(0, 90, 180), torch.tensor([0, 1, 2]), epoch=0)
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.equal(img.grad, torch.zeros_like(img))


@pytest.mark.parametrize("pids", [[4], [2, 2, 2]])
def test_no_negatives_returns_zero_with_grad(pids):
    # B = 1 or a single identity: no candidate negative anywhere (the official code would crash)
    n = len(pids)
    img = torch.randn(n, 5, requires_grad=True)
    txt = torch.randn(n, 5, requires_grad=True)
    weak = torch.randn(n, 5, requires_grad=True)
    loss = compound_ranking_loss(img, txt, weak, torch.tensor(pids), epoch=9, weak_gate=0.16)
    assert loss.item() == 0.0 and not math.copysign(1.0, loss.item()) < 0
    assert loss.grad_fn is not None
    loss.backward()
    for x in (img, txt, weak):
        assert torch.equal(x.grad, torch.zeros_like(x))


# ------------------------------------------------------------------ weak term

# Design W: pids [0, 1]; a = [−10, 0], t = [−20, 10], w = [0, 10]; epoch 0 → α2 = .1
#   strong: I0: pos cos10, D1: cos20 *; I1: pos cos10, D0: cos20 *; D0, D1 likewise → 4·(cos20 − cos10 + .2)
#   weak, positives S'_00 = cos10, S'_11 = cos10:
#     I0: paper neg D1 = S_01 = cos20 → cos20 − cos10 + .1 = .0549 *;  official neg D'1 = S'_01 = cos20 *
#     I1: paper neg D0 = S_10 = cos20 *;                                 official neg D'0 = S'_10 = cos0 H
#     D'0: neg I1 = S'_10 = cos0 H;   D'1: neg I0 = S'_01 = cos20 *
#   → weak (paper negatives) = 3·(cos20 − cos10 + .1); weak (official negatives) = 2·(cos20 − cos10 + .1)
W = dict(a=[-10, 0], t=[-20, 10], w=[0, 10], pids=[0, 1])
W_STRONG = 4 * (c(20) - c(10) + 0.2)
W_HINGE = c(20) - c(10) + 0.1


def test_weak_term_false_is_the_strong_term_alone():
    assert cr(**W, weak_term=False) == pytest.approx(W_STRONG, **APPROX)
    assert cr(**W, beta=0.0) == pytest.approx(W_STRONG, **APPROX)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_weak_term_scaled_by_beta_with_main_caption_negatives(beta):
    assert cr(**W, beta=beta) == pytest.approx(W_STRONG + beta * 3 * W_HINGE, **APPROX)


def test_weak_negatives_official_weak_captions():
    assert cr(**W, weak_neg="weak_captions") == pytest.approx(W_STRONG + 0.1 * 2 * W_HINGE, **APPROX)


# Design L: pids [0, 1]; a = [10, 15], t = [50, 35], w = [30, 60]
#   S_00 = cos40, S'_00 = cos20 → λ0 = cos20/cos40 = 1.23 → clipped to 1 → α2_0 = .2 (unclipped .2227)
#   S_11 = cos20, S'_11 = cos45 → λ1 = cos45/cos20 = .7525 → α2_1 = .1·(1 + cos45/cos20) = .1752
#   strong: I0: D1 = cos25 vs cos40 H; I1: D0 = cos35 − cos20 + .2 = .0795 *
#           D0: I1 = cos35 vs cos40 H; D1: I0 = cos25 − cos20 + .2 = .1666 *
#   weak (paper negatives): I0: D1 = S_01 = cos25 (ℓ = cos25 − cos20 + α2_0); I1: D0 = S_10 = cos35 vs cos45 H
#                           D'0: I1 = S'_10 = cos15 (ℓ = cos15 − cos20 + α2_0: .126 H at α2 .1, .226 H at .2)
#                           D'1: I0 = S'_01 = cos50 (ℓ = cos50 − cos45 + α2_1)
L = dict(a=[10, 15], t=[50, 35], w=[30, 60], pids=[0, 1])
L_STRONG = (c(35) - c(20) + 0.2) + (c(25) - c(20) + 0.2)
L_ALPHA2_1 = 0.1 * (1 + c(45) / c(20))


def test_alpha2_fixed_before_start_epoch():
    # epochs 0..4: α2 = α1/2 = .1 for both anchors: I0 .0666 *, D'1 cos50 − cos45 + .1 = .0357 *
    weak = (c(25) - c(20) + 0.1) + (c(50) - c(45) + 0.1)
    for epoch in (0, 4):
        assert cr(**L, epoch=epoch) == pytest.approx(L_STRONG + 0.1 * weak, **APPROX)
    # a later start keeps the fixed margin at epoch 5
    assert cr(**L, epoch=5, alpha2_start_epoch=6) == pytest.approx(L_STRONG + 0.1 * weak, **APPROX)


def test_alpha2_adaptive_from_start_epoch_with_lambda_clip():
    # epoch 5: α2_0 = .2 (clipped λ), α2_1 = .1752: I0 cos25 − cos20 + .2 = .1666 *, D'1 .1109 *
    # (without the clip, I0 would give cos25 − cos20 + .2227)
    weak = (c(25) - c(20) + 0.2) + (c(50) - c(45) + L_ALPHA2_1)
    assert cr(**L, epoch=5) == pytest.approx(L_STRONG + 0.1 * weak, **APPROX)
    assert cr(**L, epoch=3, alpha2_start_epoch=3) == pytest.approx(L_STRONG + 0.1 * weak, **APPROX)


def test_weak_gate():
    adaptive = (c(25) - c(20) + 0.2) + (c(50) - c(45) + L_ALPHA2_1)
    # gate .16 (official): α2 = [.2, .1752] both ≥ .16 → nothing skipped
    assert cr(**L, epoch=5, weak_gate=0.16) == pytest.approx(L_STRONG + 0.1 * adaptive, **APPROX)
    # gate .18: anchor 1 (α2 .1752) skipped in both weak directions. Image direction keeps I0 (.1666).
    # Text direction: D'0 is only hard, D'1 gated → fallback on the last *ungated* anchor D'0 with its
    # first negative I1: [cos15 − cos20 + .2]₊ = .2262
    gated = (c(25) - c(20) + 0.2) + (c(15) - c(20) + 0.2)
    assert cr(**L, epoch=5, weak_gate=0.18) == pytest.approx(L_STRONG + 0.1 * gated, **APPROX)
    # gate .25: every anchor gated → the weak term is empty (no fallback either)
    assert cr(**L, epoch=5, weak_gate=0.25) == pytest.approx(L_STRONG, **APPROX)
    # before the start epoch the gate is off (α2 = .1 would otherwise skip every anchor)
    fixed = (c(25) - c(20) + 0.1) + (c(50) - c(45) + 0.1)
    assert cr(**L, epoch=4, weak_gate=0.18) == pytest.approx(L_STRONG + 0.1 * fixed, **APPROX)


def test_lambda_official_abs_vs_paper():
    # pids [0, 1]; a = [35, 45], t = [5, 0], w = [−125, 20], epoch 5
    #   S_00 = cos30, S'_00 = cos160 = −cos20: paper λ0 = −cos20/cos30 → clipped to 0 → α2_0 = .1
    #                                           official_abs λ0 = cos20/cos30 = 1.085 → 1 → α2_0 = .2
    #   S_11 = cos45, S'_11 = cos25: λ1 = 1.28 → 1 → α2_1 = .2 in both modes
    #   strong: I0: D1 = cos35 − cos30 + .2 = .1531 *; I1: D0 = cos40 vs cos45 H
    #           D0: I1 = cos40 − cos30 + .2 = .1000 *; D1: I0 = cos35 vs cos45 H
    #   weak: I0: D1 = S_01 = cos35 vs −cos20 H; I1: D0 = S_10 = cos40 − cos25 + .2 = .0597 *
    #         D'0: I1 = S'_10 = cos170 = −cos10 → −cos10 + cos20 + α2_0 *; D'1: I0 = S'_01 = cos145 vs cos25 H
    o = dict(a=[35, 45], t=[5, 0], w=[-125, 20], pids=[0, 1], epoch=5)
    strong_part = (c(35) - c(30) + 0.2) + (c(40) - c(30) + 0.2)
    paper = (c(40) - c(25) + 0.2) + (c(20) - c(10) + 0.1)
    official = (c(40) - c(25) + 0.2) + (c(20) - c(10) + 0.2)
    assert cr(**o) == pytest.approx(strong_part + 0.1 * paper, **APPROX)
    assert cr(**o, lambda_mode="official_abs") == pytest.approx(strong_part + 0.1 * official, **APPROX)


def test_weak_margins_by_hand():
    s_pos = torch.tensor([0.5, 0.8, -0.4, 0.0, 0.0, 0.5, -0.3])
    s_weak = torch.tensor([-0.25, 0.4, -0.2, 0.3, 0.0, 0.75, 0.3])
    # paper λ = S'/S: [−.5 → 0, .5, .5, +inf → 1, 0/0 → 0, 1.5 → 1, −1 → 0]; α2 = .1·(λ + 1)
    alpha2, ok = ssan_weak_margins(s_pos, s_weak, epoch=5)
    assert torch.allclose(alpha2, torch.tensor([0.1, 0.15, 0.15, 0.2, 0.1, 0.2, 0.1])) and ok is None
    # official_abs λ = |S'|/|S|: [.5, .5, .5, inf → 1, 0/0 → 0, 1.5 → 1, exactly 1 → 2 (official [λ≤1]·λ + [λ≥1])]
    alpha2, _ = ssan_weak_margins(s_pos, s_weak, epoch=5, lambda_mode="official_abs")
    assert torch.allclose(alpha2, torch.tensor([0.15, 0.15, 0.15, 0.2, 0.1, 0.2, 0.3]))
    # gate .16 keeps α2 ≥ .16; before the start epoch: α2 = α1/2 everywhere and no gate
    _, ok = ssan_weak_margins(s_pos, s_weak, epoch=5, weak_gate=0.16)
    assert ok.tolist() == [False, False, False, True, False, True, False]
    alpha2, ok = ssan_weak_margins(s_pos, s_weak, epoch=4, weak_gate=0.16, alpha1=0.3)
    assert torch.allclose(alpha2, torch.full((7,), 0.15)) and ok is None
    # λ is detached
    s = s_pos.clone().requires_grad_()
    assert not ssan_weak_margins(s, s_weak, epoch=5)[0].requires_grad


# ------------------------------------------------------------------ reduction, gradients, options


def test_reduction_mean_pools_the_triplets_of_each_term():
    # pids [0, 1, 2]; a = [15, 45, 5], t = [5, 45, 55]
    #   I0: pos cos10; D1: cos30 − cos10 + .2 = .0812 *; D2: cos40 easy
    #   I1: pos 1; D0: cos40 easy; D2: cos10 − 1 + .2 = .1848 *      I2: pos cos50; D0, D1 H
    #   D0: I1 easy, I2 H;  D1: pos 1; I0: cos30 − 1 + .2 = .0660 *, I2 easy;  D2: I0, I1 H
    h = [c(30) - c(10) + 0.2, c(10) - 1 + 0.2, c(30) - 1 + 0.2]
    m = dict(a=[15, 45, 5], t=[5, 45, 55], pids=[0, 1, 2])
    assert strong(**m) == pytest.approx(sum(h), **APPROX)
    # mean over the 3 triplets of the term (both directions pooled), not (h0 + h1)/2 + h2
    assert strong(**m, reduction="mean") == pytest.approx(sum(h) / 3, **APPROX)
    # design L, epoch 5: strong mean over 2 triplets + β · weak mean over 2 triplets
    strong_mean = L_STRONG / 2
    weak_mean = ((c(25) - c(20) + 0.2) + (c(50) - c(45) + L_ALPHA2_1)) / 2
    assert cr(**L, epoch=5, reduction="mean") == pytest.approx(strong_mean + 0.1 * weak_mean, **APPROX)


def test_gradient_reaches_all_three_inputs():
    img = unit(*W["a"]).requires_grad_()
    txt = unit(*W["t"]).requires_grad_()
    weak = unit(*W["w"]).requires_grad_()
    loss = compound_ranking_loss(img, txt, weak, torch.tensor(W["pids"]), epoch=0)
    loss.backward()
    for x in (img, txt, weak):
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_random_batch_float32_gradients_and_determinism():
    g = torch.Generator().manual_seed(0)
    img, txt, weak = (torch.randn(16, 8, generator=g, requires_grad=True) for _ in range(3))
    pids = torch.arange(8).repeat_interleave(2)
    loss = compound_ranking_loss(img, txt, weak, pids, epoch=6, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert loss.item() > 0 and all(x.grad.abs().sum() > 0 for x in (img, txt, weak))
    again = compound_ranking_loss(img, txt, weak, pids, epoch=6, generator=torch.Generator().manual_seed(1))
    assert again.item() == loss.item()


@pytest.mark.parametrize("option", ["weak_neg", "lambda_mode", "reduction"])
def test_invalid_options_raise(option):
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=option):
        compound_ranking_loss(x, x, x, torch.tensor([0, 1]), epoch=0, **{option: "bogus"})


def test_shape_mismatch_raises():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError):
        compound_ranking_loss(x, x[:2], x, torch.tensor([0, 1, 2]), epoch=0)
    with pytest.raises(ValueError):
        compound_ranking_loss(x, x, x, torch.tensor([0, 1]), epoch=0)
