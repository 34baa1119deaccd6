"""SAN's losses by hand: label smoothing, batch-hard triplet (ties included), texture L1 shapes, L_TR's fixed triplets
and hinge values, batch-hard mining on pooled decoder maps."""
import math

import pytest
import torch

from tireid_core.losses import (batch_hard_map_triplets, batch_hard_triplet_loss, decoder_triplet_loss,
                                official_ltr_triplets, smoothed_id_loss, texture_l1_loss)


def test_label_smoothing_by_hand():
    # two classes, logits (0, ln 3): p = (1/4, 3/4); label 1, eps 0.1 -> targets (0.05, 0.95)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    want = -(0.05 * math.log(0.25) + 0.95 * math.log(0.75))
    assert smoothed_id_loss(logits, torch.tensor([1]), 0.1).item() == pytest.approx(want, abs=1e-6)
    assert smoothed_id_loss(logits, torch.tensor([1]), 0.0).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    # batch mean: a second sample with label 0 and logits (0, 0): -(0.95 ln 0.5 + 0.05 ln 0.5) = ln 2
    two = smoothed_id_loss(torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]), torch.tensor([1, 0]), 0.1)
    assert two.item() == pytest.approx((want + math.log(2.0)) / 2, abs=1e-6)


def test_label_smoothing_keeps_a_gradient_on_a_confident_correct_logit():
    logits = torch.tensor([[0.0, 20.0]], requires_grad=True)
    smoothed_id_loss(logits, torch.tensor([1]), 0.1).backward()
    assert logits.grad[0, 1] > 0 and logits.grad[0, 0] < 0  # pushes back towards 0.95, unlike plain cross-entropy


def test_batch_hard_triplet_by_hand():
    # 1-d features: identity A at 0 and 1, identity B at 3 and 5
    f = torch.tensor([[0.0], [1.0], [3.0], [5.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: [1 - 3 + 0.3]+ = 0; anchor 1: [1 - 2 + 0.3]+ = 0; anchor 2 (at 3): pos 2 (at 5), neg 2 (at 1) ->
    # 0.3; anchor 3 (at 5): [2 - 4 + 0.3]+ = 0
    loss = batch_hard_triplet_loss(f, labels, margin=0.3)
    assert loss.item() == pytest.approx(0.3 / 4, abs=1e-5)
    loss.backward()
    # only anchor 2 is active: it pulls 5 towards 3, 3 towards 5 and away from 1, and pushes 1 away from 3
    assert torch.allclose(f.grad[:, 0], torch.tensor([0.0, 0.25, -0.5, 0.25]), atol=1e-5)


def test_batch_hard_triplet_anchor_is_its_own_positive():
    # identities 1 and 2 have one member each: their hardest positive is the anchor itself, at sqrt(1e-12) = 1e-6
    f = torch.tensor([[0.0], [0.5], [-0.6], [0.6]])
    labels = torch.tensor([0, 0, 1, 2])
    # anchor 0: 0.5 - 0.6 + 0.3 = 0.2; anchor 1: 0.5 - 0.1 + 0.3 = 0.7; anchor 2: 1e-6 - 0.6 + 0.3 < 0 -> 0;
    # anchor 3: 1e-6 - 0.1 + 0.3 = 0.200001
    assert batch_hard_triplet_loss(f, labels, 0.3).item() == pytest.approx((0.2 + 0.7 + 0.0 + 0.200001) / 4, abs=1e-5)
    assert batch_hard_triplet_loss(f, torch.zeros(4, dtype=torch.long), 0.3).item() == 0.0  # no negative at all


def test_batch_hard_triplet_tied_negatives_share_the_gradient():
    # anchor 0 at 0 has two negatives tied at distance 1 (at -1 and +1); its hardest positive is at 0.9
    f = torch.tensor([[0.0], [0.9], [-1.0], [1.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    loss = batch_hard_triplet_loss(f, labels, margin=0.3)
    # anchors: 0: 0.9 - 1 + 0.3 = 0.2; 1: 0.9 - 0.1 + 0.3 = 1.1; 2 (at -1): 2 - 1 + 0.3 = 1.3; 3 (at 1): 2 - 0.1 + 0.3
    assert loss.item() == pytest.approx((0.2 + 1.1 + 1.3 + 2.2) / 4, abs=1e-5)
    loss.backward()
    # d loss / d x(-1): anchor 0 pushes its tied negatives apart with half of its unit push each, +0.5 / 4; anchor 3
    # pulls its positive at -1 closer, -1 / 4; anchor 2's own terms cancel. Total -0.125. For x(+1): anchor 0 gives
    # -0.5 / 4, anchor 1 pushes it away (-1 / 4), anchor 2 pulls it (+1 / 4): -0.125 as well.
    assert f.grad[2, 0].item() == pytest.approx(-0.125, abs=1e-5)
    assert f.grad[3, 0].item() == pytest.approx(-0.125, abs=1e-5)
    # break the tie (+1 -> 0.999): anchor 0's whole push goes to the nearer negative, none to -1
    g = f.detach().clone()
    g[3, 0] = 0.999
    g.requires_grad_(True)
    batch_hard_triplet_loss(g, labels, margin=0.3).backward()
    assert g.grad[2, 0].item() == pytest.approx(-0.25, abs=1e-4)


def test_texture_l1_needs_equal_shapes():
    pred = torch.zeros(2, 3, 4, 4)
    target = torch.full((2, 3, 4, 4), 0.5)
    target[1] = -1.0
    assert texture_l1_loss(pred, target).item() == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(ValueError, match=r"prediction \(2, 3, 4, 4\) and target \(1, 3, 4, 4\) differ"):
        texture_l1_loss(pred, target[:1])  # would broadcast silently in F.l1_loss
    with pytest.raises(ValueError, match="resize the target"):
        texture_l1_loss(pred, torch.zeros(2, 3, 2, 2))


def test_official_ltr_triplets_from_identity_blocks():
    labels = torch.tensor([7] * 4 + [3] * 4 + [9] * 4)  # P = 3 blocks of K = 4
    levels = official_ltr_triplets(labels)
    as_lists = [tuple(t.tolist() for t in level) for level in levels]
    assert as_lists == [([0, 4], [1, 5], [4, 8]),  # fd1: (4g, 4g+1, 4g+4)
                        ([1, 5], [2, 6], [5, 9]),  # fd2: (4g+1, 4g+2, 4g+5)
                        ([2, 6], [3, 7], [6, 10]),  # fd3: (4g+2, 4g+3, 4g+6)
                        ([3, 7], [0, 4], [4, 8])]  # fd4: D(4g, 4g+3) - D(4g+3, 4g+4)
    for a, p, n in levels:  # every positive shares the anchor's identity, every negative does not
        assert (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all()


def test_official_ltr_triplets_refuse_other_batches():
    with pytest.raises(ValueError, match="K = 4"):
        official_ltr_triplets(torch.tensor([0, 0, 0, 1, 1, 1]), k=3)
    with pytest.raises(ValueError, match="not in identity blocks"):
        official_ltr_triplets(torch.tensor([0, 0, 1, 1, 0, 0, 1, 1]))
    with pytest.raises(ValueError, match="not in identity blocks"):  # two consecutive blocks of one identity
        official_ltr_triplets(torch.tensor([0] * 8))
    with pytest.raises(ValueError, match="P >= 2"):
        official_ltr_triplets(torch.tensor([0] * 4))


def test_decoder_triplet_hinge_by_hand():
    # maps of 1 x 1 x 2: sample values chosen so that D (mean squared difference over the 2 entries) is easy
    maps = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 2.0], [2.0, 2.0]]).view(4, 1, 1, 2).requires_grad_(True)
    a, p, n = torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([3, 1])
    # triplet 1: D(0,1) = 1, D(0,3) = 4 -> [1 - 4 + 0.3]+ = 0;  triplet 2: D(0,2) = 2, D(0,1) = 1 -> 2 - 1 + 0.3 = 1.3
    loss = decoder_triplet_loss(maps, a, p, n, margin=0.3)
    assert loss.item() == pytest.approx(1.3)  # summed, not averaged
    loss.backward()
    # only triplet 2 is active: d D(0,2) / d x2 = 2 (x2 - x0) / 2 entries = (0, 2); d(-D(0,1)) / d x1 = -(x1 - x0)
    assert torch.allclose(maps.grad[2].flatten(), torch.tensor([0.0, 2.0]))
    assert torch.allclose(maps.grad[1].flatten(), torch.tensor([-1.0, -1.0]))  # descent pushes the negative away
    assert torch.allclose(maps.grad[3].flatten(), torch.zeros(2))  # inactive triplet


def test_batch_hard_map_mining_on_pooled_maps():
    # pooled values: id 0 at 0, 1, 5; id 1 at 1.2, 9
    pooled = torch.tensor([0.0, 1.0, 5.0, 1.2, 9.0])
    maps = pooled.view(5, 1, 1, 1).expand(5, 2, 3, 3).clone()
    labels = torch.tensor([0, 0, 0, 1, 1])
    a, p, n = batch_hard_map_triplets(maps, labels)
    assert a.tolist() == [0, 1, 2, 3, 4]
    assert p.tolist() == [2, 2, 0, 4, 3]  # farthest positive, never itself
    assert n.tolist() == [3, 3, 3, 1, 2]  # nearest other identity
    assert not p.requires_grad and not n.requires_grad
