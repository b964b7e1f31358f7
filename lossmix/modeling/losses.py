"""Weighted detection losses (pure functions).

Each reduces like torchvision's unweighted loss (same normaliser), so all weights 1 reproduce
torchvision's ``RegionProposalNetwork.compute_loss`` and ``fastrcnn_loss`` exactly, and (below) the
losses of its ``RetinaNet`` (focal, L1 / IoU box losses) and ``FCOS`` (focal, GIoU, centre-ness).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss, sigmoid_focal_loss

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


# ------------------------------------------------------------------ one-stage detectors (RetinaNet, FCOS)
# Each is ``sum(w * loss) / max(1, normaliser)`` over anchors / locations with one weight per anchor, the
# weight multiplying the element-wise loss before torchvision's own ``.sum()``: with all weights 1 the
# summed tensor is torchvision's, so the loss is too (bit for bit on CPU).


def weighted_sigmoid_focal_loss(logits: Tensor, targets: Tensor, weights: Tensor, normaliser: float,
                                alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss (torchvision's ``sigmoid_focal_loss``) summed over classes and anchors, each anchor's
    row times its weight: ``sum_k w_k sum_c focal(logits[k, c], targets[k, c]) / max(1, normaliser)``.

    logits, targets: [..., C] (targets one-hot 0/1 float); weights: [...] (one per anchor / location).
    """
    per_element = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
    return (per_element * weights.unsqueeze(-1)).sum() / max(1, normaliser)


def weighted_giou_loss(pred_boxes: Tensor, gt_boxes: Tensor, weights: Tensor, normaliser: float) -> Tensor:
    """Generalised-IoU loss (torchvision's ``generalized_box_iou_loss``), ``sum(w * (1 - giou)) / max(1, normaliser)``.

    pred_boxes, gt_boxes: [P, 4] (x1, y1, x2, y2); weights: [P].
    """
    return (generalized_box_iou_loss(pred_boxes, gt_boxes, reduction="none") * weights).sum() / max(1, normaliser)


def weighted_centerness_loss(logits: Tensor, targets: Tensor, weights: Tensor, normaliser: float) -> Tensor:
    """FCOS centre-ness: binary cross-entropy with logits against a soft target in [0, 1],
    ``sum(w * bce) / max(1, normaliser)``. logits, targets, weights: [P]."""
    per_location = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (per_location * weights).sum() / max(1, normaliser)


_IOU_LOSSES = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}


def weighted_anchor_box_loss(loss_type: str, box_coder, anchors: Tensor, gt_boxes: Tensor, deltas: Tensor,
                             weights: Tensor, normaliser: float, beta: float = 1.0, eps: float = 1e-7) -> Tensor:
    """torchvision's ``_box_loss`` (RetinaNet's regression loss) with a weight per foreground anchor:
    ``sum(w * loss) / max(1, normaliser)``.

    loss_type: ``l1`` / ``smooth_l1`` (on ``box_coder``-encoded targets; ``beta`` for smooth-L1) or
    ``giou`` / ``diou`` / ``ciou`` (on decoded boxes). anchors, gt_boxes, deltas: [P, 4]; weights: [P].
    """
    if loss_type in ("l1", "smooth_l1"):
        target = box_coder.encode_single(gt_boxes, anchors)
        if loss_type == "l1":
            per_element = F.l1_loss(deltas, target, reduction="none")
        else:
            per_element = F.smooth_l1_loss(deltas, target, reduction="none", beta=beta)
        return (per_element * weights.unsqueeze(-1)).sum() / max(1, normaliser)
    if loss_type not in _IOU_LOSSES:
        raise ValueError(f"box loss type {loss_type!r} is not one of l1, smooth_l1, {', '.join(_IOU_LOSSES)}")
    per_box = _IOU_LOSSES[loss_type](box_coder.decode_single(deltas, anchors), gt_boxes, reduction="none", eps=eps)
    return (per_box * weights).sum() / max(1, normaliser)
