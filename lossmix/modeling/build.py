"""``make_detector(**kwargs)`` / ``build_detector(cfg)``: torchvision's Faster R-CNN with LossMix-weighted RPN and ROI heads.

No code path downloads weights: every backbone is built with ``weights=None`` and
``MODEL.WEIGHTS`` (a local file) is loaded by :func:`load_weights`.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN, mobilenet_backbone
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from .layers import FrozenBatchNorm2d
from .roi_heads import WeightedRoIHeads
from .rpn import WeightedRPN

logger = logging.getLogger(__name__)

NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "FrozenBN": FrozenBatchNorm2d,
    "BN": nn.BatchNorm2d,
    "GN": lambda channels: nn.GroupNorm(32, channels),
}

# name -> fn(norm_layer, trainable_layers, returned_layers, out_channels) -> backbone with FPN
BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str):
    """Register ``fn(norm_layer, trainable_layers, returned_layers, out_channels) -> backbone`` (with ``out_channels``)."""

    def wrap(fn):
        if name in BACKBONES:
            raise KeyError(f"backbone {name!r} is already registered")
        BACKBONES[name] = fn
        return fn

    return wrap


def _resnet_fpn(depth: int, norm_layer, trainable_layers: int, returned_layers, out_channels: int) -> nn.Module:
    """A ResNet-``depth`` body (random init) with an FPN over ``returned_layers`` (torchvision's pieces)."""
    body = getattr(resnet, f"resnet{depth}")(weights=None, norm_layer=norm_layer)
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"MODEL.BACKBONE.TRAINABLE_LAYERS must be in [0, 5], got {trainable_layers}")
    trained = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        trained.append("bn1")
    for name, param in body.named_parameters():
        if not any(name.startswith(prefix) for prefix in trained):
            param.requires_grad_(False)
    stage_channels = body.inplanes // 8  # channels out of layer1 (64 for ResNet-18/34, 256 for 50/101)
    return BackboneWithFPN(
        body,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(returned_layers)},
        in_channels_list=[stage_channels * 2 ** (k - 1) for k in returned_layers],
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
    )


for _depth in (18, 34, 50, 101):
    register_backbone(f"R{_depth}-FPN")(partial(_resnet_fpn, _depth))


@register_backbone("MNV3-FPN")
def _mobilenet_v3_fpn(norm_layer, trainable_layers, returned_layers, out_channels):
    if out_channels != 256:
        raise ValueError("MNV3-FPN uses torchvision's 256-channel FPN; leave MODEL.FPN.OUT_CHANNELS at 256")
    return mobilenet_backbone(
        backbone_name="mobilenet_v3_large",
        weights=None,
        fpn=True,
        norm_layer=norm_layer,
        trainable_layers=min(trainable_layers, 6),
    )


class PreResizedTransform(GeneralizedRCNNTransform):
    """Normalises and batches only: the dataset mapper already resized (detectron2's split of work).

    Detections therefore come out in the mapper's input coordinates; :func:`lossmix.engine.inference`
    rescales them to the original image size.
    """

    def resize(self, image, target=None):
        return image, target


def _anchor_generator(anchor_sizes, aspect_ratios, num_levels: int) -> AnchorGenerator:
    sizes = [tuple(s) for s in anchor_sizes]
    ratios = [tuple(r) for r in aspect_ratios]
    if len(sizes) != num_levels:  # e.g. MobileNet's 3 levels: every size on every level
        sizes = [tuple(s for level in sizes for s in level)] * num_levels
    if len(ratios) == 1:
        ratios = ratios * num_levels
    return AnchorGenerator(sizes=tuple(sizes), aspect_ratios=tuple(ratios))


def _lookup(table: dict, key: str, value: str):
    if value not in table:
        raise KeyError(f"{key} = {value!r} is not registered; allowed: {', '.join(sorted(table))}")
    return table[value]


def make_detector(
    *,
    backbone: str = "R50-FPN",
    norm: str = "FrozenBN",
    trainable_layers: int = 3,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    fpn_channels: int = 256,
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
    weights: str = "",
) -> FasterRCNN:
    """Faster R-CNN with LossMix-weighted RPN and ROI heads, from keyword arguments.

    ``backbone`` / ``norm`` are names in :data:`BACKBONES` / :data:`NORM_LAYERS` (an unknown one
    raises ``KeyError`` listing the registered names). ``rpn`` and ``roi_heads`` are torchvision
    ``FasterRCNN`` keyword arguments without their ``rpn_`` / ``box_`` prefix (e.g.
    ``{"batch_size_per_image": 64}``). ``weights``: a local file for :func:`load_weights` ("" = random init).
    """
    backbone_fn = _lookup(BACKBONES, "MODEL.BACKBONE.NAME", backbone)
    norm_layer = _lookup(NORM_LAYERS, "MODEL.BACKBONE.NORM", norm)
    body = backbone_fn(norm_layer, trainable_layers, list(returned_layers), fpn_channels)
    body.eval()  # the probe must not move BatchNorm running statistics
    with torch.no_grad():
        num_levels = len(body(torch.zeros(1, 3, 64, 64)))
    body.train()
    featmaps = [str(i) for i in range(num_levels - 1)]  # every level but the "pool" one, as torchvision
    res = pooler_resolution
    model = FasterRCNN(
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
    model.transform = PreResizedTransform(1, 1, list(pixel_mean), list(pixel_std))
    make_weighted(model, bg_weight=bg_weight, formulation=formulation)
    if weights:
        load_weights(model, weights)
    return model


def detector_kwargs(cfg) -> dict:
    """:func:`make_detector`'s keyword arguments from ``cfg.MODEL`` and ``cfg.LOSSMIX``."""
    m = cfg.MODEL
    rpn, roi, head = m.RPN, m.ROI_HEADS, m.ROI_BOX_HEAD
    return dict(
        backbone=m.BACKBONE.NAME, norm=m.BACKBONE.NORM, trainable_layers=m.BACKBONE.TRAINABLE_LAYERS,
        returned_layers=list(m.BACKBONE.RETURNED_LAYERS), fpn_channels=m.FPN.OUT_CHANNELS,
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
        box_head_dim=m.ROI_BOX_HEAD.FC_DIM, pooler_resolution=head.POOLER_RESOLUTION,
        bg_weight=cfg.LOSSMIX.BG_WEIGHT, formulation=cfg.LOSSMIX.FORMULATION, weights=m.WEIGHTS,
    )


def build_detector(cfg) -> FasterRCNN:
    """Faster R-CNN per ``cfg.MODEL`` (:func:`make_detector` with :func:`detector_kwargs`)."""
    return make_detector(**detector_kwargs(cfg))
# torchvision classification models whose ImageNet weights fit each backbone (for the advice below)
_IMAGENET_MODELS = {"R18-FPN": "resnet18", "R34-FPN": "resnet34", "R50-FPN": "resnet50", "R101-FPN": "resnet101",
                    "MNV3-FPN": "mobilenet_v3_large"}


def require_weights(cfg, *, eval_only: bool = False) -> None:
    """Refuse a run that would use random weights where pretrained ones are needed, saying how to get them.

    ``--eval-only`` without ``MODEL.WEIGHTS`` is an error (it would evaluate a random model). Training
    without ``MODEL.WEIGHTS`` is an error when the backbone cannot learn from scratch: frozen BatchNorm
    (``MODEL.BACKBONE.NORM FrozenBN``) or frozen stages (``TRAINABLE_LAYERS`` < 5).
    """
    from ..config.setup import ConfigError

    if cfg.MODEL.WEIGHTS:
        return
    if eval_only:
        raise ConfigError("--eval-only needs MODEL.WEIGHTS (a checkpoint such as OUTPUT_DIR/model_final.pth); "
                          "without it a randomly initialised model would be evaluated")
    backbone = cfg.MODEL.BACKBONE
    if backbone.NORM != "FrozenBN" and backbone.TRAINABLE_LAYERS >= 5:
        return
    arch = _IMAGENET_MODELS.get(backbone.NAME, "resnet50")
    raise ConfigError(
        f"MODEL.WEIGHTS is empty but MODEL.BACKBONE.NORM = {backbone.NORM} and TRAINABLE_LAYERS = "
        f"{backbone.TRAINABLE_LAYERS}: this {backbone.NAME} would train from random weights with frozen "
        f"normalisation / stages. Give MODEL.WEIGHTS an ImageNet state dict saved on a machine with internet: "
        f"python -c \"import torch, torchvision; torch.save(torchvision.models.{arch}(weights='IMAGENET1K_V1')"
        f".state_dict(), '{arch}_imagenet.pth')\" then MODEL.WEIGHTS {arch}_imagenet.pth; or train from scratch with "
        f"MODEL.BACKBONE.NORM BN MODEL.BACKBONE.TRAINABLE_LAYERS 5")


def make_weighted(model: FasterRCNN, *, bg_weight: float = 1.0, formulation: str = "instance") -> FasterRCNN:
    """Swap a torchvision Faster R-CNN's RPN and ROI heads for the weighted ones, in place (parameters kept)."""
    model.rpn = WeightedRPN.from_rpn(model.rpn, bg_weight=bg_weight, formulation=formulation)
    model.roi_heads = WeightedRoIHeads.from_roi_heads(model.roi_heads, bg_weight=bg_weight, formulation=formulation)
    return model


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_weights(model: FasterRCNN, path: str) -> dict:
    """Load ``path`` into ``model``; returns ``{"kind", "missing", "unexpected", "skipped"}``.

    Accepted files (``torch.load(weights_only=True)``: a weights file is untrusted input):
    one of our checkpoints (``{"model": state_dict, ...}``), a torchvision detector state dict
    (``backbone.*``, ``rpn.*``, ``roi_heads.*``; tensors whose shape differs, e.g. the class
    predictor of another dataset, are skipped and listed) or an ImageNet classification backbone
    state dict (``conv1.*``/``layer*.*`` for ResNets, ``features.*`` for MobileNetV3).
    """
    import os

    from ..engine.checkpoint import UnreadableFileError, torch_load

    if not os.path.isfile(path):
        from ..config.setup import config_writing

        maker = config_writing(path)
        hint = (f"; it is written by python tools/train_net.py --config-file {maker}: run that first" if maker else
                " (weights are never downloaded; give a local path)")
        raise FileNotFoundError(f"MODEL.WEIGHTS: no such file {path!r}{hint}")
    state = torch_load(path, "MODEL.WEIGHTS")
    if not isinstance(state, dict):
        raise UnreadableFileError(f"MODEL.WEIGHTS {path!r}: holds a {type(state).__name__}, expected a state dict "
                                  "(a dict of tensors, e.g. torch.save(model.state_dict(), path)) or a lossmix checkpoint")
    kind = None
    if isinstance(state.get("model"), dict):
        state, kind = state["model"], "checkpoint"
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise UnreadableFileError(f"MODEL.WEIGHTS {path!r}: not a state dict: entry {bad[0]!r} is a "
                                  f"{type(state[bad[0]]).__name__}, expected a tensor")
    if kind == "checkpoint":
        pass
    elif any(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in state):
        kind = "detector"
    elif any(k.startswith(("conv1.", "layer1.", "features.")) for k in state):
        kind = "backbone"
        state = _strip(state, "features.") if any(k.startswith("features.") for k in state) else state
        state = {"backbone.body." + k: v for k, v in state.items() if not k.startswith("fc.")}
    else:
        raise UnreadableFileError(f"MODEL.WEIGHTS {path!r}: a state dict with none of the expected keys (first: "
                                  f"{list(state)[:3]}); expected a lossmix checkpoint, torchvision detector or "
                                  "ImageNet backbone")
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in skipped}
    body = [k for k in own if k.startswith("backbone.body.")]
    loaded = [k for k in body if k in state]
    if kind in ("backbone", "detector") and body and len(loaded) < len(body) / 2:  # e.g. R18 weights for an R50 model
        absent = len(body) - len(loaded) - len([k for k in skipped if k.startswith("backbone.body.")])
        raise UnreadableFileError(
            f"MODEL.WEIGHTS {path!r}: only {len(loaded)} of the backbone's {len(body)} tensors load from it "
            f"({len(body) - len(loaded) - absent} have another shape, {absent} are absent); weights of another "
            "backbone than MODEL.BACKBONE.NAME?")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if kind != "backbone" or k.startswith("backbone.body.")]
    if kind == "checkpoint" and (missing or result.unexpected_keys or skipped):
        raise ValueError(
            f"MODEL.WEIGHTS {path!r} does not match the model: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}, shape mismatch {skipped[:5]}"
        )
    logger.info("loaded %s weights from %s (missing %d, unexpected %d, skipped %d)", kind, path,
                len(missing), len(result.unexpected_keys), len(skipped))
    return {"kind": kind, "missing": missing, "unexpected": list(result.unexpected_keys), "skipped": skipped}
