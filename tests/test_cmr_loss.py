"""CMR's losses by hand (docs/cmr.md §3): SDM, the semi-hard ranking loss, the rescaled margins of L_CMR (mined with
the unscaled margin, floored), the score normalisations, the four commonality definitions, and the gradient that
must not flow through the commonality."""
import math

import pytest
import torch

from tireid_core.losses import (cmr_loss, commonality_margins, commonality_scores, part_commonality, ranking_hinges,
                                ranking_loss, sdm_loss)

S19 = math.sqrt(0.19)
# Two people. img = one-hot rows, so S_ij = cos(img_i, txt_j) is read off the captions: S = [[0.9, 0.8], [S19, 0.6]].
IMG2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
TXT2 = torch.tensor([[0.9, S19], [0.8, 0.6]])
PIDS2 = torch.tensor([0, 1])
# Image anchors (rows): 0: 0.8 - 0.9 + 0.2 = 0.1 (semi-hard); 1: S19 - 0.6 + 0.2 = 0.0359 (semi-hard).
# Caption anchors (columns): 0: S19 - 0.9 + 0.2 < 0 (easy); 1: 0.8 - 0.6 + 0.2 = 0.4 >= m (hard): no triplet, so
# the fallback triplet: the last anchor (caption 1) with its first negative (image 0), clamped: 0.4.


def test_sdm_by_hand():
    img, txt, pids = torch.eye(2), torch.eye(2), torch.tensor([0, 1])
    # tau = 1: each row's logits are (1, 0) on its own pair; q = (1, 0); KL = p0 log p0 + p1 (log p1 - log 1e-8)
    p0 = math.e / (math.e + 1)
    row = p0 * math.log(p0 / (1 + 1e-8)) + (1 - p0) * (math.log(1 - p0) - math.log(1e-8))
    assert float(sdm_loss(img, txt, pids, tau=1.0)) == pytest.approx(2 * row, rel=1e-5)
    # same identity in both samples: q is uniform over the two, and the uniform prediction of equal logits is perfect
    assert float(sdm_loss(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([4, 4]), tau=0.02)) == pytest.approx(
        2 * math.log(1 / (0.5 + 1e-8) * 0.5), abs=1e-6)


def test_sdm_pulls_the_pair_together():
    img = torch.tensor([[1.0, 0.2], [0.1, 1.0]], requires_grad=True)
    sdm_loss(img, torch.eye(2), torch.tensor([0, 1]), tau=0.1).backward()
    assert img.grad[0, 1] > 0 and img.grad[1, 0] > 0  # descending moves image 0 away from caption 1 and vice versa


def test_ranking_loss_fixed_margin_by_hand():
    loss = ranking_loss(IMG2, TXT2, PIDS2, margin=0.2, generator=torch.Generator().manual_seed(0))
    assert float(loss) == pytest.approx(0.1 + (S19 - 0.6 + 0.2) + 0.4, abs=1e-6)


def test_rescaled_margins_keep_the_unscaled_mining():
    pos = torch.tensor([0.5, 0.5])
    neg = torch.tensor([[0.0, 0.4], [0.1, 0.0]])
    valid = torch.tensor([[False, True], [True, False]])
    m = torch.tensor([0.2, 0.2])
    # anchor 0: 0.4 - 0.5 + 0.2 = 0.1, semi-hard; anchor 1: 0.1 - 0.5 + 0.2 = -0.2, easy under m = 0.2 (under its own
    # m̃ = 0.5 it would be semi-hard, 0.1: mining must use m). Hinge of anchor 0 with m̃ = 0.15: 0.05.
    out = ranking_hinges(pos, neg, valid, m, hinge_margin=torch.tensor([0.15, 0.5]))
    assert out.tolist() == pytest.approx([0.05], abs=1e-6)
    # a margin small enough turns the mined triplet's hinge negative: clamped to 0, still in the graph
    assert ranking_hinges(pos, neg, valid, m, hinge_margin=torch.tensor([0.05, 0.5])).tolist() == [0.0]
    # without hinge_margin: SSAN's behaviour, unchanged
    assert ranking_hinges(pos, neg, valid, m).tolist() == pytest.approx([0.1], abs=1e-6)


def test_fallback_triplet_uses_the_rescaled_margin():
    pos, neg = torch.tensor([0.9, 0.9]), torch.tensor([[0.0, 0.1], [0.1, 0.0]])
    valid = torch.tensor([[False, True], [True, False]])
    m = torch.tensor([0.2, 0.2])
    # everything easy: one triplet, the last anchor with its first negative, clamped: [0.1 - 0.9 + m̃_1]+
    assert ranking_hinges(pos, neg, valid, m, hinge_margin=torch.tensor([0.2, 0.85])).tolist() == pytest.approx([0.05], abs=1e-6)
    assert ranking_hinges(pos, neg, valid, m).tolist() == [0.0]


def test_ranking_loss_with_anchor_margins_by_hand():
    m_img, m_txt = torch.tensor([0.05, 0.2]), torch.tensor([0.2, 0.1])
    loss = ranking_loss(IMG2, TXT2, PIDS2, margin=0.2, anchor_margins=(m_img, m_txt))
    # image anchor 0: [0.8 - 0.9 + 0.05]+ = 0; image anchor 1: S19 - 0.6 + 0.2; caption fallback: [0.8 - 0.6 + 0.1]+
    assert float(loss) == pytest.approx((S19 - 0.6 + 0.2) + 0.3, abs=1e-6)


def test_margin_floor():
    s = torch.tensor([0.0, 0.1, 0.5, 1.0, 1.5])
    assert commonality_margins(s, margin=0.2, floor=0.05).tolist() == pytest.approx([0.05, 0.05, 0.1, 0.2, 0.3], abs=1e-6)


def test_score_normalisations():
    c = torch.tensor([0.2, 0.5, 0.8, float("nan")])  # 1 - c = 0.8, 0.5, 0.2; the last anchor has no other identity
    assert commonality_scores(c, "minmax").tolist() == pytest.approx([1.0, 0.5, 0.0, 1.0], abs=1e-6)
    assert commonality_scores(torch.tensor([-0.5, 0.5, 1.5]), "clip").tolist() == pytest.approx([1.0, 0.5, 0.0], abs=1e-6)
    assert commonality_scores(torch.tensor([-0.5, 0.5, 1.5]), "none").tolist() == pytest.approx([1.5, 0.5, -0.5], abs=1e-6)
    assert commonality_scores(torch.tensor([0.3, 0.3]), "minmax").tolist() == [1.0, 1.0]  # nothing to rank
    with pytest.raises(ValueError, match="score_norm"):
        commonality_scores(c, "rank")


# Three samples, the first two of one person: img = (1, 0), (0, 1), (0.6, 0.8); txt = (0.8, 0.6), (0, 1), (1, 0).
IMG3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
TXT3 = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
PIDS3 = torch.tensor([0, 0, 1])


@pytest.mark.parametrize("definition, c_img, c_txt", [
    # own modality, other identities only: img0·img2, img1·img2, mean(img2·img0, img2·img1); captions likewise
    ("H1_intra", [0.6, 0.8, 0.7], [0.8, 0.0, 0.4]),
    # the other modality: img0·txt2, img1·txt2, mean(img2·txt0 = 0.96, img2·txt1 = 0.8); txt0·img2, txt1·img2,
    # mean(txt2·img0, txt2·img1)
    ("H2_cross", [1.0, 0.0, 0.88], [0.96, 0.8, 0.5]),
    # S = [[0.8, 0, 1], [0.6, 1, 0], [0.96, 0.8, 0.6]]: share of other-identity captions (images) above the own pair
    ("H3_rank", [1.0, 0.0, 1.0], [1.0, 0.0, 0.5]),
])
def test_commonality_definitions_by_hand(definition, c_img, c_txt):
    got_img, got_txt = part_commonality(IMG3 * 3, TXT3 * 0.5, PIDS3, definition)  # cosines: the scale is irrelevant
    assert got_img.tolist() == pytest.approx(c_img, abs=1e-6)
    assert got_txt.tolist() == pytest.approx(c_txt, abs=1e-6)


def test_bank_commonality_by_hand():
    bank_img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [5.0, 5.0]])
    bank_pids = torch.tensor([1, 2, 0, -1])  # the last slot is empty
    c_img, c_txt = part_commonality(IMG3, TXT3, PIDS3, "H4_bank", bank=(bank_img, bank_img, bank_pids))
    # img0 (person 0): slots of persons 1 and 2: mean(1, 0); img2 (person 1): persons 2 and 0: mean(0.8, -0.6)
    assert c_img.tolist() == pytest.approx([0.5, 0.5, 0.1], abs=1e-6)
    assert c_txt.tolist() == pytest.approx([(0.8 + 0.6) / 2, 0.5, (0.0 - 1.0) / 2], abs=1e-6)
    with pytest.raises(ValueError, match="memory bank"):
        part_commonality(IMG3, TXT3, PIDS3, "H4_bank")


def test_commonality_without_another_identity_is_undefined_and_gets_the_full_margin():
    c_img, _ = part_commonality(IMG3, TXT3, torch.tensor([7, 7, 7]), "H1_intra")
    assert torch.isnan(c_img).all()
    assert commonality_scores(c_img, "minmax").tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="commonality must be one of"):
        part_commonality(IMG3, TXT3, PIDS3, "H5")


def test_cmr_loss_end_to_end_by_hand():
    # H1, no normalisation: c_img = cos(img0, img1) = 0 -> s = 1 -> m̃ = 0.2; c_txt = txt0·txt1 = 0.72 + 0.6·S19 ->
    # s = 0.0185 -> 0.2·s < 0.05 -> the floor. Image anchors as in the fixed case (0.1, S19 - 0.4); the captions'
    # fallback triplet with the floor: [0.8 - 0.6 + 0.05]+ = 0.25.
    loss, (m_img, m_txt) = cmr_loss(IMG2, TXT2, PIDS2, margin=0.2, floor=0.05, commonality="H1_intra",
                                    score_norm="none")
    assert m_img.tolist() == pytest.approx([0.2, 0.2], abs=1e-6) and m_txt.tolist() == pytest.approx([0.05, 0.05], abs=1e-6)
    assert float(loss) == pytest.approx(0.1 + (S19 - 0.6 + 0.2) + 0.25, abs=1e-6)


def test_margin_gate_keeps_low_margin_anchors_from_mining():
    # gate 0.1: the captions (m̃ = 0.05) may not mine and no fallback brings them back; the images still count
    loss, _ = cmr_loss(IMG2, TXT2, PIDS2, commonality="H1_intra", score_norm="none", gate=0.1)
    assert float(loss) == pytest.approx(0.1 + (S19 - 0.6 + 0.2), abs=1e-6)


def test_no_gradient_flows_through_the_commonality():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g)
    pids = torch.arange(12) // 2
    a_img, a_txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    loss, (m_img, m_txt) = cmr_loss(a_img, a_txt, pids, margin=0.4, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert not m_img.requires_grad and not m_txt.requires_grad
    assert len(set(m_img.tolist())) > 2, "the margins vary over the anchors"
    b_img, b_txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    same = ranking_loss(b_img, b_txt, pids, margin=0.4, anchor_margins=(m_img, m_txt),
                        generator=torch.Generator().manual_seed(1))
    same.backward()
    assert float(loss.detach()) > 0 and float(same.detach()) == pytest.approx(float(loss.detach()))
    assert torch.allclose(a_img.grad, b_img.grad) and torch.allclose(a_txt.grad, b_txt.grad)


def test_lower_margins_give_a_smaller_loss_and_gradient_direction():
    img, txt = IMG2.clone().requires_grad_(), TXT2.clone()
    loss = ranking_loss(img, txt, PIDS2, margin=0.2)
    loss.backward()
    # image 0's semi-hard negative is caption 1 = (0.8, 0.6): descending moves image 0 away from it
    assert img.grad[0, 1] > 0
    lower = ranking_loss(IMG2, TXT2, PIDS2, margin=0.2,
                         anchor_margins=(torch.full((2,), 0.1), torch.full((2,), 0.1)))
    assert float(lower) < float(loss)


def test_one_identity_gives_a_zero_that_backpropagates():
    img = torch.randn(3, 4, requires_grad=True)
    loss, _ = cmr_loss(img, torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    loss.backward()
    assert float(loss) == 0.0 and img.grad is not None
