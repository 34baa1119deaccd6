"""Hand-worked checks of the shared losses."""
import math

import pytest
import torch

from tireid_core.losses import cmpm_loss, id_loss, identity_labels_match


def _kl_row(logits, q, eps=1e-8):
    z = sum(math.exp(v) for v in logits)
    p = [math.exp(v) / z for v in logits]
    return sum(pi * (math.log(pi) - math.log(qi + eps)) for pi, qi in zip(p, q))


def test_cmpm_two_identities_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pids = torch.tensor([3, 7])
    # each row: logits [1, 0] against target [1, 0]; both rows and both directions are equal
    row = _kl_row([1.0, 0.0], [1.0, 0.0])
    assert row == pytest.approx(4.3713, abs=1e-3)
    assert cmpm_loss(img, txt, pids).item() == pytest.approx(4 * row / 2, rel=1e-5)


def test_cmpm_uses_unnormalised_anchor_and_normalised_other_side():
    img = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # image 0 has norm 2
    txt = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # text 0 has norm 3
    pids = torch.tensor([0, 1])
    # i2t: f_i · t̂_j → row0 logits [2, 0], row1 [0, 1]; t2i: t_i · f̂_j → row0 [3, 0], row1 [0, 1]
    i2t = (_kl_row([2, 0], [1, 0]) + _kl_row([0, 1], [0, 1])) / 2
    t2i = (_kl_row([3, 0], [1, 0]) + _kl_row([0, 1], [0, 1])) / 2
    assert cmpm_loss(img, txt, pids).item() == pytest.approx(i2t + t2i, rel=1e-5)


def test_cmpm_target_normalisation_l1_vs_l2():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = img.clone()
    pids = torch.tensor([5, 5])  # same identity: q = [1/2, 1/2] (L1) or [1/√2, 1/√2] (L2)
    l1 = 2 * _kl_row([1.0, 0.0], [0.5, 0.5])
    r = 1 / math.sqrt(2)
    l2 = 2 * _kl_row([1.0, 0.0], [r, r])
    assert cmpm_loss(img, txt, pids, q_norm="l1").item() == pytest.approx(l1, rel=1e-5)
    assert cmpm_loss(img, txt, pids, q_norm="l2").item() == pytest.approx(l2, rel=1e-5)
    with pytest.raises(ValueError, match="q_norm"):
        cmpm_loss(img, txt, pids, q_norm="l3")


def test_cmpm_gradient_pushes_matching_pairs_together():
    torch.manual_seed(0)
    img = torch.randn(6, 8, requires_grad=True)
    txt = torch.randn(6, 8)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    before = cmpm_loss(img, txt, pids)
    before.backward()
    with torch.no_grad():
        moved = img - 0.1 * img.grad
    assert cmpm_loss(moved, txt, pids) < before


def test_id_loss_and_label_matrix():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    expected = (-(2 - math.log(math.exp(2) + 1)) + math.log(2)) / 2
    assert id_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    y = identity_labels_match(torch.tensor([1, 2, 1]), torch.tensor([1, 3]))
    assert y.tolist() == [[1, 0], [0, 0], [1, 0]]


def test_matching_target_l1_and_l2_by_hand():
    from tireid_core.losses import matching_target

    pids = torch.tensor([3, 3, 7])
    torch.testing.assert_close(matching_target(pids, pids, "l1"),
                               torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    r = 2 ** -0.5
    torch.testing.assert_close(matching_target(pids, pids, "l2"),
                               torch.tensor([[r, r, 0.0], [r, r, 0.0], [0.0, 0.0, 1.0]]))


def test_cmpc_projects_on_the_paired_feature_then_classifies_by_hand():
    from tireid_core.losses import cmpc_loss

    img = torch.tensor([[3.0, 4.0]])
    txt = torch.tensor([[1.0, 0.0]])
    w = torch.tensor([[2.0, 0.0], [0.0, 5.0]])  # columns normalise to e1, e2
    labels = torch.tensor([0])
    # image projected on t̂ = e1: (3, 0) -> logits (3, 0); text projected on f̂ = (0.6, 0.8): 0.6·(0.6, 0.8)
    img_logits = torch.tensor([[3.0, 0.0]])
    txt_logits = torch.tensor([[0.36, 0.48]])
    expected = (torch.nn.functional.cross_entropy(img_logits, labels)
                + torch.nn.functional.cross_entropy(txt_logits, labels))
    assert cmpc_loss(img, txt, labels, w).item() == pytest.approx(expected.item(), rel=1e-6)


def test_local_matching_loss_is_image_to_text_kl_by_hand():
    from tireid_core.losses import local_matching_loss

    scores = torch.tensor([[0.5, 0.1], [0.2, 0.4]])  # rows: images, columns: texts
    pids = torch.tensor([0, 1])
    p = torch.softmax(20 * scores, dim=1)
    expected = (p * (p.log() - torch.log(torch.eye(2) + 1e-8))).sum(1).mean()
    assert local_matching_loss(scores, pids).item() == pytest.approx(expected.item(), rel=1e-5)
    # only the image→text direction: transposing the scores changes the loss
    assert local_matching_loss(scores.t(), pids).item() != pytest.approx(expected.item(), rel=1e-3)
