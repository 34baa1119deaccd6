"""Losses shared by the papers, as plain functions (one docstring each).

Paper-specific losses (SSAN's compound ranking loss, CMR's commonality margin, ...) live
here too, one function per loss, so "where is loss X?" has one answer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def identity_labels_match(pids_a: torch.Tensor, pids_b: torch.Tensor) -> torch.Tensor:
    """y_ij = 1 where sample i of A and sample j of B share an identity (float matrix)."""
    return (pids_a.view(-1, 1) == pids_b.view(1, -1)).float()


def id_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Identity (classification) loss: cross-entropy over training identities, batch mean.

    The classifier is shared by image and text features in every method here, so calling this
    once per modality with the same head is what makes the two embedding spaces agree on identity.
    """
    return F.cross_entropy(logits, labels)


def cmpm_loss(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    pids: torch.Tensor,
    *,
    q_norm: str = "l1",
    eps: float = 1e-8,
) -> torch.Tensor:
    """Cross-Modal Projection Matching (Zhang & Lu, ECCV 2018), both directions summed.

    p_ij = softmax_j(f_i · t̂_j) projects each (unnormalised) image feature on every normalised text
    feature of the batch; the loss is KL(p_i || q_i) where q_i spreads the mass uniformly over the
    batch entries of the same identity. `q_norm="l1"` is the CMPM paper's target (a distribution);
    `"l2"` divides by the row's L2 norm as NAFS's official code does (nafs.md §3).
    """
    if q_norm not in ("l1", "l2"):
        raise ValueError(f"q_norm must be 'l1' or 'l2', got {q_norm!r}")
    y = identity_labels_match(pids, pids)
    q = y / (y.sum(1, keepdim=True) if q_norm == "l1" else y.norm(dim=1, keepdim=True))
    text_unit = F.normalize(text_feats, dim=1)
    image_unit = F.normalize(image_feats, dim=1)

    def one_direction(a: torch.Tensor, b_unit: torch.Tensor) -> torch.Tensor:
        logits = a @ b_unit.t()
        log_p = F.log_softmax(logits, dim=1)
        return (log_p.exp() * (log_p - torch.log(q + eps))).sum(1).mean()

    return one_direction(image_feats, text_unit) + one_direction(text_feats, image_unit)
