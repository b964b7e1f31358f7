"""FCOS (``MODEL.META_ARCHITECTURE FCOS``): torchvision's, with per-instance loss weights (LossMix).

As for RetinaNet (:mod:`.retinanet`), the override is the head's ``compute_loss(targets, head_outputs,
anchors, matched_idxs)``: torchvision's ``FCOS.compute_loss`` assigns locations to boxes (centre
sampling, scale ranges, smallest box wins) and hands the head the targets, still carrying
``weights`` / ``box_weights``. Over the batch, as torchvision:

- classification: focal loss over every location (FCOS ignores none), a foreground location's row
  weighing its instance's ``weights`` entry, a background one ``bg_weight`` (``LOSSMIX.BG_WEIGHT``);
- box regression (GIoU) and centre-ness (BCE against the location's centre-ness in its box):
  foreground locations, each weighing its instance's ``box_weights`` entry (``weights`` when absent).
  Centre-ness takes the box weight because its target is computed from the box geometry: a
  pseudo-label whose box is not trusted (box weight 0) teaches neither;
- all three divided by the number of foreground locations in the batch, **unweighted**, for the
  reasons given in :mod:`.retinanet` (weights act as loss weights: ``c`` everywhere scales every loss
  by ``c``; no division by a small sum of weights; torchvision's value with all weights 1).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.fcos import FCOS, FCOSHead

from .build import _anchor_generator, backbone_kwargs, build_fpn_backbone, detector_transform, register_meta_arch
from .losses import weighted_centerness_loss, weighted_giou_loss, weighted_sigmoid_focal_loss
from .one_stage import OneStageMixin
from .targets import WeightedLossMixin, instance_weights, loss_scale, per_sample_weights


def centerness_targets(box_coder, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """FCOS's centre-ness of each location in its box, ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``
    (torchvision's formula; meaningful for foreground locations only). anchors, gt_boxes: [N, K, 4] -> [N, K]."""
    deltas = box_coder.encode(anchors, gt_boxes)
    if len(deltas) == 0:
        return deltas.new_zeros(deltas.size()[:-1])
    left_right, top_bottom = deltas[:, :, [0, 2]], deltas[:, :, [1, 3]]
    return torch.sqrt((left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0])
                      * (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0]))


class WeightedFCOSHead(WeightedLossMixin, FCOSHead):
    """``FCOSHead`` whose ``compute_loss`` weighs each location by its matched instance (module docstring).

    Args (beyond torchvision's): ``bg_weight`` — loss weight of background locations; ``formulation`` —
    read by :class:`~lossmix.modeling.one_stage.OneStageMixin`.
    """

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                     matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        labels, boxes, cls_w, box_w = [], [], [], []
        for target, matched in zip(targets, matched_idxs):
            foreground = matched >= 0
            if len(target["labels"]) == 0:
                labels.append(target["labels"].new_zeros((len(matched),)))
                boxes.append(target["boxes"].new_zeros((len(matched), 4)))
            else:
                labels.append(target["labels"][matched.clip(min=0)])
                boxes.append(target["boxes"][matched.clip(min=0)])
            scale = loss_scale(target)
            cls_w.append(per_sample_weights(instance_weights(target), matched, foreground, self.bg_weight) * scale)
            box_w.append(per_sample_weights(instance_weights(target, "box_weights"), matched, foreground, 0.0) * scale)
        foreground = torch.stack(matched_idxs) >= 0  # [N, HWA]
        labels, boxes, anchors = torch.stack(labels), torch.stack(boxes), torch.stack(anchors)
        cls_w, box_w = torch.stack(cls_w), torch.stack(box_w)[foreground]
        num_foreground = foreground.sum().item()

        cls_logits = head_outputs["cls_logits"]  # [N, HWA, C]
        one_hot = torch.zeros_like(cls_logits)
        one_hot[foreground, labels[foreground]] = 1.0
        loss_cls = weighted_sigmoid_focal_loss(cls_logits, one_hot, cls_w, num_foreground)

        pred_boxes = self.box_coder.decode(head_outputs["bbox_regression"], anchors)
        loss_box = weighted_giou_loss(pred_boxes[foreground], boxes[foreground], box_w, num_foreground)

        ctrness = centerness_targets(self.box_coder, anchors, boxes)
        pred_ctrness = head_outputs["bbox_ctrness"].squeeze(dim=2)
        loss_ctr = weighted_centerness_loss(pred_ctrness[foreground], ctrness[foreground], box_w, num_foreground)
        return {"classification": loss_cls, "bbox_regression": loss_box, "bbox_ctrness": loss_ctr}


@register_meta_arch("FCOS")
class LossMixFCOS(OneStageMixin, FCOS):
    """torchvision's ``FCOS`` with :class:`WeightedFCOSHead` (its parameters kept) and the project's label
    convention (:mod:`.one_stage`). ``num_classes``: object classes, background excluded. FCOS wants one
    anchor per location whose size is the level's stride (its scale ranges are 4x and 8x that size)."""

    weighted_head = WeightedFCOSHead

    @classmethod
    def from_config(cls, cfg) -> "LossMixFCOS":
        m, f = cfg.MODEL, cfg.MODEL.FCOS
        body, num_levels = build_fpn_backbone(**backbone_kwargs(cfg))
        anchors = _anchor_generator(m.ANCHOR_GENERATOR.SIZES, m.ANCHOR_GENERATOR.ASPECT_RATIOS, num_levels)
        if any(n != 1 for n in anchors.num_anchors_per_location()):
            raise ValueError(
                f"MODEL.META_ARCHITECTURE FCOS needs one anchor per location: MODEL.ANCHOR_GENERATOR.SIZES one size "
                f"per level (the level's stride, e.g. [[8], [16], [32], [64], [128]]) and ASPECT_RATIOS [[1.0]]; got "
                f"SIZES {m.ANCHOR_GENERATOR.SIZES}, ASPECT_RATIOS {m.ANCHOR_GENERATOR.ASPECT_RATIOS}")
        model = cls(body, m.ROI_HEADS.NUM_CLASSES, anchor_generator=anchors,
                    center_sampling_radius=f.CENTER_SAMPLING_RADIUS, score_thresh=f.SCORE_THRESH_TEST,
                    nms_thresh=f.NMS_THRESH_TEST, detections_per_img=f.DETECTIONS_PER_IMAGE,
                    topk_candidates=f.TOPK_CANDIDATES_TEST,
                    bg_weight=cfg.LOSSMIX.BG_WEIGHT, formulation=cfg.LOSSMIX.FORMULATION)
        model.transform = detector_transform(m.PIXEL_MEAN, m.PIXEL_STD)
        torch.nn.init.constant_(model.head.regression_head.bbox_reg.bias, f.BBOX_REG_BIAS)
        return model


__all__ = ["LossMixFCOS", "WeightedFCOSHead", "centerness_targets"]
