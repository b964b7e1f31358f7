"""Faster R-CNN (``MODEL.META_ARCHITECTURE FasterRCNN``, the default): torchvision's, with the weighted RPN
(:mod:`.rpn`) and ROI heads (:mod:`.roi_heads`)."""
from __future__ import annotations

from typing import Optional, Sequence

from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from .build import _anchor_generator, backbone_kwargs, build_fpn_backbone, detector_transform, register_meta_arch
from .roi_heads import WeightedRoIHeads
from .rpn import WeightedRPN


@register_meta_arch("FasterRCNN")
class LossMixFasterRCNN(FasterRCNN):
    """torchvision's ``FasterRCNN`` (unchanged behaviour); :func:`make_detector` swaps in the weighted heads."""

    @classmethod
    def from_config(cls, cfg) -> "LossMixFasterRCNN":
        return make_detector(**detector_kwargs(cfg))


def make_weighted(model: FasterRCNN, *, bg_weight: float = 1.0, formulation: str = "instance") -> FasterRCNN:
    """Swap a torchvision Faster R-CNN's RPN and ROI heads for the weighted ones, in place (parameters kept)."""
    model.rpn = WeightedRPN.from_rpn(model.rpn, bg_weight=bg_weight, formulation=formulation)
    model.roi_heads = WeightedRoIHeads.from_roi_heads(model.roi_heads, bg_weight=bg_weight, formulation=formulation)
    return model


def make_detector(
    *,
    backbone: str = "R50-FPN",
    norm: str = "FrozenBN",
    trainable_layers: int = 3,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    fpn_channels: int = 256,
    top_block: str = "maxpool",
    num_classes: int = 20,
    anchor_sizes: Sequence[Sequence[int]] = ((32,), (64,), (128,), (256,), (512,)),
    aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),),
    pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
    pixel_std: Sequence[float] = (0.229, 0.224, 0.225),
    rpn: Optional[dict] = None,
    roi_heads: Optional[dict] = None,
    box_head_dim: int = 1024,
    pooler_resolution: int = 7,
    bg_weight: float = 1.0,
    formulation: str = "instance",
) -> LossMixFasterRCNN:
    """Faster R-CNN with LossMix-weighted RPN and ROI heads, from keyword arguments (random init).

    ``backbone`` / ``norm`` / ``top_block``: registered names (:func:`~lossmix.modeling.build.build_fpn_backbone`).
    ``rpn`` and ``roi_heads`` are torchvision ``FasterRCNN`` keyword arguments without their ``rpn_`` /
    ``box_`` prefix (e.g. ``{"batch_size_per_image": 64}``).
    """
    body, num_levels = build_fpn_backbone(backbone=backbone, norm=norm, trainable_layers=trainable_layers,
                                          returned_layers=returned_layers, fpn_channels=fpn_channels,
                                          top_block=top_block)
    featmaps = [str(i) for i in range(num_levels - 1)]  # every level but the "pool" one, as torchvision
    res = pooler_resolution
    model = LossMixFasterRCNN(
        body,
        box_head=TwoMLPHead(body.out_channels * res**2, box_head_dim),
        box_predictor=FastRCNNPredictor(box_head_dim, num_classes + 1),
        image_mean=list(pixel_mean),
        image_std=list(pixel_std),
        rpn_anchor_generator=_anchor_generator(anchor_sizes, aspect_ratios, num_levels),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=featmaps, output_size=res, sampling_ratio=2),
        **{f"rpn_{k}": v for k, v in (rpn or {}).items()},
        **{f"box_{k}": v for k, v in (roi_heads or {}).items()},
    )
    model.transform = detector_transform(pixel_mean, pixel_std)
    return make_weighted(model, bg_weight=bg_weight, formulation=formulation)


def detector_kwargs(cfg) -> dict:
    """:func:`make_detector`'s keyword arguments from ``cfg.MODEL`` and ``cfg.LOSSMIX``."""
    m = cfg.MODEL
    rpn, roi, head = m.RPN, m.ROI_HEADS, m.ROI_BOX_HEAD
    return dict(
        **backbone_kwargs(cfg),
        num_classes=roi.NUM_CLASSES, anchor_sizes=m.ANCHOR_GENERATOR.SIZES, aspect_ratios=m.ANCHOR_GENERATOR.ASPECT_RATIOS,
        pixel_mean=list(m.PIXEL_MEAN), pixel_std=list(m.PIXEL_STD),
        rpn=dict(pre_nms_top_n_train=rpn.PRE_NMS_TOPK_TRAIN, pre_nms_top_n_test=rpn.PRE_NMS_TOPK_TEST,
                 post_nms_top_n_train=rpn.POST_NMS_TOPK_TRAIN, post_nms_top_n_test=rpn.POST_NMS_TOPK_TEST,
                 nms_thresh=rpn.NMS_THRESH, bg_iou_thresh=rpn.IOU_THRESHOLDS[0], fg_iou_thresh=rpn.IOU_THRESHOLDS[1],
                 batch_size_per_image=rpn.BATCH_SIZE_PER_IMAGE, positive_fraction=rpn.POSITIVE_FRACTION),
        roi_heads=dict(score_thresh=roi.SCORE_THRESH_TEST, nms_thresh=roi.NMS_THRESH_TEST,
                       detections_per_img=roi.DETECTIONS_PER_IMAGE, fg_iou_thresh=roi.IOU_THRESHOLD,
                       bg_iou_thresh=roi.IOU_THRESHOLD, batch_size_per_image=roi.BATCH_SIZE_PER_IMAGE,
                       positive_fraction=roi.POSITIVE_FRACTION),
        box_head_dim=head.FC_DIM, pooler_resolution=head.POOLER_RESOLUTION,
        bg_weight=cfg.LOSSMIX.BG_WEIGHT, formulation=cfg.LOSSMIX.FORMULATION,
    )


__all__ = ["LossMixFasterRCNN", "make_detector", "make_weighted", "detector_kwargs"]
