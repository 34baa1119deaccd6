"""LCR²S distillation losses, by hand: feature KD, the relation matrix and relation KD (docs/lcr2s.md §3.2)."""
import math

import pytest
import torch

from tireid_core.losses import feature_kd_loss, relation_kd_loss, relation_matrix


def test_feature_kd_is_zero_when_the_student_equals_the_teacher():
    x = torch.randn(5, 7)
    assert feature_kd_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert feature_kd_loss(x, x.clone(), normalise=False).item() == 0.0
    # normalised: only the direction matters
    assert feature_kd_loss(3.0 * x, x).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_kd_by_hand():
    s = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    # normalised: s0 -> (0.6, 0.8), t0 -> (1, 0): (0.4² + 0.8²) = 0.8 = 2 - 2·cos; row 1 is the same direction: 0
    assert feature_kd_loss(s, t).item() == pytest.approx((0.8 + 0.0) / 2, rel=1e-6)
    # raw: (2² + 4²) = 20 and (0 + 3²) = 9, averaged over the two samples
    assert feature_kd_loss(s, t, normalise=False).item() == pytest.approx((20 + 9) / 2)
    with pytest.raises(ValueError, match="one shape"):
        feature_kd_loss(s, t[:1])


def test_feature_kd_pulls_the_student_towards_the_teacher_and_never_trains_the_teacher():
    s = torch.tensor([[1.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, 1.0]], requires_grad=True)
    feature_kd_loss(s, t).backward()
    assert t.grad is None  # the target is detached
    # d/ds (2 - 2 s·t/|s|) at s = (1, 0): the gradient's second component is -2 (move towards t), the first 0
    assert s.grad[0].tolist() == pytest.approx([0.0, -2.0], abs=1e-6)
    with torch.no_grad():
        moved = s - 0.1 * s.grad
    assert feature_kd_loss(moved, t) < feature_kd_loss(s, t)


def test_relation_matrix_cosine_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    txt = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    r = relation_matrix(img, txt)
    h = 1 / math.sqrt(2)
    assert r.flatten().tolist() == pytest.approx([h, 0.0, h, 1.0], abs=1e-6)  # R_ij = cos(image i, text j)


def test_relation_matrix_softmax_rows_are_distributions_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    txt = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    r = relation_matrix(img, txt, relation="softmax_t", temperature=0.5)
    h = 1 / math.sqrt(2)
    row0 = [math.exp(h / 0.5), math.exp(0.0)]
    row1 = [math.exp(h / 0.5), math.exp(1.0 / 0.5)]
    assert r[0].tolist() == pytest.approx([v / sum(row0) for v in row0], rel=1e-5)
    assert r[1].tolist() == pytest.approx([v / sum(row1) for v in row1], rel=1e-5)
    assert r.sum(1).tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="relation"):
        relation_matrix(img, txt, relation="dot")


def test_relation_kd_by_hand_and_zero_for_equal_models():
    eye = torch.eye(2)
    # student: R^S = I; teacher texts both along the first axis: R^T = [[1, 1], [0, 0]]
    teacher_txt = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # ‖R^S − R^T‖²_F = (0 − 1)² + (1 − 0)² = 2, divided by B² = 4
    assert relation_kd_loss(eye, eye, eye, teacher_txt).item() == pytest.approx(0.5)
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    assert relation_kd_loss(x, y, x, y).item() == pytest.approx(0.0, abs=1e-7)


def test_relation_kd_does_not_depend_on_the_batch_size():
    """1/B²: the mean squared entry. Repeating the batch repeats every entry of both matrices."""
    torch.manual_seed(0)
    si, st, ti, tt = (torch.randn(3, 4) for _ in range(4))
    once = relation_kd_loss(si, st, ti, tt)
    twice = relation_kd_loss(*(torch.cat([v, v]) for v in (si, st, ti, tt)))
    assert twice.item() == pytest.approx(once.item(), rel=1e-6)


def test_relation_kd_gradient_moves_the_student_relations_towards_the_teacher():
    torch.manual_seed(1)
    si = torch.randn(4, 3, requires_grad=True)
    st = torch.randn(4, 3, requires_grad=True)
    ti, tt = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    before = relation_kd_loss(si, st, ti, tt)
    before.backward()
    assert ti.grad is None and tt.grad is None  # the teacher's relations are fixed targets
    with torch.no_grad():
        after = relation_kd_loss(si - 0.1 * si.grad, st - 0.1 * st.grad, ti, tt)
    assert after < before
