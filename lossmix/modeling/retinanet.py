"""RetinaNet (``MODEL.META_ARCHITECTURE RetinaNet``): torchvision's, with per-instance loss weights (LossMix).

The override is the head's ``compute_loss(targets, head_outputs, anchors, matched_idxs)``: torchvision's
``RetinaNet.compute_loss`` matches anchors to boxes (IoU, ``Matcher`` with low-quality matches) and
hands the head the targets, which still carry ``weights`` / ``box_weights``, with each anchor's
matched index. :class:`WeightedRetinaNetHead` looks each foreground anchor's weight up there.

Per image, as torchvision:

- classification: focal loss over the anchors that are not between the IoU thresholds, summed over
  classes; a foreground anchor's row weighs its instance's ``weights`` entry, a background one
  ``bg_weight`` (``LOSSMIX.BG_WEIGHT``);
- box regression (L1 on encoded deltas by default): foreground anchors only, each weighing its
  instance's ``box_weights`` entry (``weights`` when absent);
- both divided by the image's number of foreground anchors, then averaged over images.

**Normaliser: the count of foreground anchors, unweighted.** Not the sum of their weights, because
(1) the weights are then true loss weights: weight ``c`` on every instance and on background scales
each loss by ``c``, as in the weighted Faster R-CNN heads, whose normalisers (sampled counts) are
unweighted too; a weight-normalised loss would be unchanged by ``c`` and would undo LossMix's
down-weighting of a mixed image whose instances all weigh lambda; (2) it never divides by a small
number: a mixed image whose instances weigh 0.05, or a pseudo-label with box weight 0, would
otherwise have its few foreground anchors blown up to full weight; (3) with all weights 1 both agree
with torchvision, so nothing is lost there. Anchors matched to a weight-0 instance still count in
the normaliser (they are foreground): its label changes no loss, its presence does, as in the other
heads.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead

from .build import (NORM_LAYERS, _anchor_generator, _lookup, backbone_kwargs, build_fpn_backbone, detector_transform,
                    register_meta_arch)
from .losses import weighted_anchor_box_loss, weighted_sigmoid_focal_loss
from .one_stage import OneStageMixin
from .targets import WeightedLossMixin, instance_weights, loss_scale, per_sample_weights


class WeightedRetinaNetHead(WeightedLossMixin, RetinaNetHead):
    """``RetinaNetHead`` whose ``compute_loss`` weighs each anchor by its matched instance (module docstring).

    Args (beyond torchvision's): ``bg_weight`` — loss weight of background anchors; ``formulation`` —
    read by :class:`~lossmix.modeling.one_stage.OneStageMixin`.
    """

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                     matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        reg = self.regression_head
        between = self.classification_head.BETWEEN_THRESHOLDS
        cls_losses, box_losses = [], []
        for target, logits, deltas, anchors_i, matched in zip(
                targets, head_outputs["cls_logits"], head_outputs["bbox_regression"], anchors, matched_idxs):
            foreground = matched >= 0
            fg = torch.where(foreground)[0]
            num_foreground = fg.numel()
            scale = loss_scale(target)
            cls_w = per_sample_weights(instance_weights(target), matched, foreground, self.bg_weight) * scale
            one_hot = torch.zeros_like(logits)
            one_hot[fg, target["labels"][matched[fg]]] = 1.0
            valid = matched != between
            cls_losses.append(weighted_sigmoid_focal_loss(logits[valid], one_hot[valid], cls_w[valid], num_foreground))
            box_w = instance_weights(target, "box_weights")[matched[fg]] * scale
            box_losses.append(weighted_anchor_box_loss(reg._loss_type, reg.box_coder, anchors_i[fg],
                                                       target["boxes"][matched[fg]], deltas[fg], box_w, num_foreground))
        return {"classification": _sum(cls_losses) / len(targets),
                "bbox_regression": _sum(box_losses) / max(1, len(targets))}


def _sum(values: list[Tensor]) -> Tensor:
    """Left to right, as torchvision's ``retinanet._sum`` (same rounding)."""
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


HEAD_NORMS = {"": None, "GN": NORM_LAYERS["GN"]}  # MODEL.RETINANET.NORM -> norm_layer; GN as MODEL.BACKBONE.NORM's


def head_norm_layer(norm: str) -> Optional[Callable[[int], nn.Module]]:
    """``MODEL.RETINANET.NORM`` as torchvision's ``norm_layer`` of the head's conv towers: "" none (torchvision's
    RetinaNet: its towers start at std 0.01, so from scratch the signal and gradient through four of them are
    tiny and the focal loss barely moves), "GN" GroupNorm with 32 groups (``retinanet_resnet50_fpn_v2``)."""
    return _lookup(HEAD_NORMS, "MODEL.RETINANET.NORM", norm)


@register_meta_arch("RetinaNet")
class LossMixRetinaNet(OneStageMixin, RetinaNet):
    """torchvision's ``RetinaNet`` with :class:`WeightedRetinaNetHead` (its parameters kept) and the project's
    label convention (:mod:`.one_stage`). ``num_classes``: object classes, background excluded."""

    weighted_head = WeightedRetinaNetHead

    @classmethod
    def from_config(cls, cfg) -> "LossMixRetinaNet":
        m, r = cfg.MODEL, cfg.MODEL.RETINANET
        body, num_levels = build_fpn_backbone(**backbone_kwargs(cfg))
        anchors = _anchor_generator(m.ANCHOR_GENERATOR.SIZES, m.ANCHOR_GENERATOR.ASPECT_RATIOS, num_levels)
        head = RetinaNetHead(body.out_channels, anchors.num_anchors_per_location()[0], m.ROI_HEADS.NUM_CLASSES,
                             norm_layer=head_norm_layer(r.NORM))
        model = cls(body, m.ROI_HEADS.NUM_CLASSES, anchor_generator=anchors, head=head,
                    bg_iou_thresh=r.IOU_THRESHOLDS[0], fg_iou_thresh=r.IOU_THRESHOLDS[1],
                    score_thresh=r.SCORE_THRESH_TEST, nms_thresh=r.NMS_THRESH_TEST,
                    detections_per_img=r.DETECTIONS_PER_IMAGE, topk_candidates=r.TOPK_CANDIDATES_TEST,
                    bg_weight=cfg.LOSSMIX.BG_WEIGHT, formulation=cfg.LOSSMIX.FORMULATION)
        model.transform = detector_transform(m.PIXEL_MEAN, m.PIXEL_STD)
        return model


__all__ = ["HEAD_NORMS", "LossMixRetinaNet", "WeightedRetinaNetHead", "head_norm_layer"]
