"""Weighted detection losses (pure functions).

Each reduces like torchvision's unweighted loss (same normaliser), so all weights 1 reproduce
torchvision's ``RegionProposalNetwork.compute_loss`` and ``fastrcnn_loss`` exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BOX_BETA = 1.0 / 9  # smooth-L1 beta used by torchvision for both RPN and ROI box regression


def weighted_objectness_loss(logits: Tensor, labels: Tensor, weights: Tensor, normaliser: int | None = None) -> Tensor:
    """Binary cross-entropy of sampled anchors, ``sum(w * bce) / normaliser``.

    logits, labels, weights: [S] (labels 0/1 float). ``normaliser`` defaults to ``S``, the sampled
    count (torchvision's divisor; detectron2 divides by ``batch_size_per_image * num_images``).
    Returns a scalar.
    """
    per_anchor = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (per_anchor * weights).sum() / max(logits.numel() if normaliser is None else normaliser, 1)


def weighted_box_loss(pred: Tensor, target: Tensor, weights: Tensor, normaliser: int, beta: float = BOX_BETA) -> Tensor:
    """Smooth-L1 of foreground samples, ``sum(w * sl1) / normaliser``.

    pred, target: [P, 4]; weights: [P]; normaliser: the sampled count (torchvision's divisor);
    beta: the smooth-L1 transition (torchvision's 1/9 by default; 0 is plain L1, detectron2's default).
    """
    per_box = F.smooth_l1_loss(pred, target, beta=beta, reduction="none").sum(dim=1)
    return (per_box * weights).sum() / max(normaliser, 1)


def weighted_classification_loss(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Cross-entropy of sampled proposals, ``sum(w * ce) / num_sampled``. logits [S, C+1], labels [S]."""
    per_proposal = F.cross_entropy(logits, labels, reduction="none")
    return (per_proposal * weights).sum() / max(labels.numel(), 1)


def weighted_fastrcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    cls_weights: Tensor,
    box_weights: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """torchvision's ``fastrcnn_loss`` with a weight per sampled proposal.

    class_logits [S, C+1], box_regression [S, (C+1)*4], labels [S] (0 = background),
    regression_targets [S, 4], cls_weights / box_weights [S]. ``box_weights=None`` skips the
    box term (returns a zero that keeps the graph connected).
    """
    cls_loss = weighted_classification_loss(class_logits, labels, cls_weights)
    if box_weights is None:
        return cls_loss, box_regression.sum() * 0.0
    pos = torch.where(labels > 0)[0]
    box_regression = box_regression.reshape(labels.numel(), -1, 4)
    box_loss = weighted_box_loss(
        box_regression[pos, labels[pos]], regression_targets[pos], box_weights[pos], labels.numel()
    )
    return cls_loss, box_loss
