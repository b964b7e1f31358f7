"""``build_detector(cfg)``: the detector ``MODEL.META_ARCHITECTURE`` names, with LossMix-weighted losses.

Three registries, each a name -> builder table with a ``register_*`` decorator:

- :data:`META_ARCHITECTURES` (``MODEL.META_ARCHITECTURE``): detector classes with ``from_config(cfg)``;
  ``FasterRCNN`` (:mod:`.faster_rcnn`, the default), ``RetinaNet`` (:mod:`.retinanet`), ``FCOS`` (:mod:`.fcos`).
  How to add one: ``docs/detectors.md``.
- :data:`BACKBONES` (``MODEL.BACKBONE.NAME``): FPN backbones; :data:`NORM_LAYERS` (``MODEL.BACKBONE.NORM``).

Every detector built here is random-initialised and unloaded: no code path downloads weights, and
``MODEL.WEIGHTS`` (a local file) is loaded by the engine (:func:`lossmix.engine.checkpoint.load_weights`).
Every detector takes the data loader's images as they are (uint8 or float CHW, already resized by the
mapper): :class:`PreResizedTransform` converts, normalises and batches them.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN, mobilenet_backbone
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from .layers import FrozenBatchNorm2d

NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "FrozenBN": FrozenBatchNorm2d,
    "BN": nn.BatchNorm2d,
    "GN": lambda channels: nn.GroupNorm(32, channels),
}

# name -> fn(norm_layer, trainable_layers, returned_layers, out_channels, extra_blocks=None) -> backbone with FPN
BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str):
    """Register ``fn(norm_layer, trainable_layers, returned_layers, out_channels, extra_blocks=None) -> backbone``
    (with ``out_channels``); ``extra_blocks``: the FPN's levels above the last stage (None: one max-pooled level)."""

    def wrap(fn):
        if name in BACKBONES:
            raise KeyError(f"backbone {name!r} is already registered")
        BACKBONES[name] = fn
        return fn

    return wrap


def _resnet_fpn(depth: int, norm_layer, trainable_layers: int, returned_layers, out_channels: int,
                extra_blocks: Optional[nn.Module] = None) -> nn.Module:
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
        extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks,
    )


for _depth in (18, 34, 50, 101):
    register_backbone(f"R{_depth}-FPN")(partial(_resnet_fpn, _depth))


@register_backbone("MNV3-FPN")
def _mobilenet_v3_fpn(norm_layer, trainable_layers, returned_layers, out_channels, extra_blocks=None):
    if out_channels != 256:
        raise ValueError("MNV3-FPN uses torchvision's 256-channel FPN; leave MODEL.FPN.OUT_CHANNELS at 256")
    return mobilenet_backbone(
        backbone_name="mobilenet_v3_large",
        weights=None,
        fpn=True,
        norm_layer=norm_layer,
        trainable_layers=min(trainable_layers, 6),
        extra_blocks=extra_blocks,
    )


class PreResizedTransform(GeneralizedRCNNTransform):
    """Converts, normalises and batches only: the dataset mapper already resized (detectron2's split of work).

    Images may be uint8 (0-255, as the data loader gives them: converted here to float 0-1, as
    torchvision's and detectron2's models convert inside the model) or float 0-1. Detections therefore
    come out in the mapper's input coordinates; :func:`lossmix.engine.inference` rescales them to the
    original image size.
    """

    def normalize(self, image):
        if image.dtype == torch.uint8:
            image = image.float().div_(255.0)
        return super().normalize(image)

    def resize(self, image, target=None):
        return image, target


def detector_transform(pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> PreResizedTransform:
    """The transform every registered detector uses (sizes are the mapper's business)."""
    return PreResizedTransform(1, 1, list(pixel_mean), list(pixel_std))


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
        allowed = ", ".join(name or repr(name) for name in sorted(table))  # "" (no norm, detectron2's) shown as ''
        raise KeyError(f"{key} = {value!r} is not registered; allowed: {allowed}")
    return table[value]


# MODEL.FPN.TOP_BLOCK: the FPN levels above the last returned stage, from the FPN width
TOP_BLOCKS: dict[str, Callable[[int], nn.Module]] = {
    "maxpool": lambda channels: LastLevelMaxPool(),  # P6 = max-pool of the last level (Faster R-CNN)
    "p6p7": lambda channels: LastLevelP6P7(channels, channels),  # P6, P7 = stride-2 convs from P5 (RetinaNet, FCOS)
}


def build_fpn_backbone(
    *,
    backbone: str = "R50-FPN",
    norm: str = "FrozenBN",
    trainable_layers: int = 3,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    fpn_channels: int = 256,
    top_block: str = "maxpool",
) -> tuple[nn.Module, int]:
    """``(backbone with FPN, number of feature levels)`` from registered names (an unknown one raises
    ``KeyError`` listing the registered names). The levels are counted by a probe in eval mode, so no
    BatchNorm statistics move."""
    backbone_fn = _lookup(BACKBONES, "MODEL.BACKBONE.NAME", backbone)
    norm_layer = _lookup(NORM_LAYERS, "MODEL.BACKBONE.NORM", norm)
    extra = _lookup(TOP_BLOCKS, "MODEL.FPN.TOP_BLOCK", top_block)(fpn_channels)
    body = backbone_fn(norm_layer, trainable_layers, list(returned_layers), fpn_channels, extra_blocks=extra)
    body.eval()  # the probe must not move BatchNorm running statistics
    with torch.no_grad():
        num_levels = len(body(torch.zeros(1, 3, 64, 64)))
    body.train()
    return body, num_levels


def backbone_kwargs(cfg) -> dict:
    """:func:`build_fpn_backbone`'s keyword arguments from ``cfg.MODEL`` (shared by every meta-architecture)."""
    m = cfg.MODEL
    return dict(backbone=m.BACKBONE.NAME, norm=m.BACKBONE.NORM, trainable_layers=m.BACKBONE.TRAINABLE_LAYERS,
                returned_layers=list(m.BACKBONE.RETURNED_LAYERS), fpn_channels=m.FPN.OUT_CHANNELS,
                top_block=m.FPN.TOP_BLOCK)


# ---------------------------------------------------------------------------------------------- detectors
# name -> detector class with ``from_config(cfg) -> instance`` (see register_meta_arch)
META_ARCHITECTURES: dict[str, type] = {}


def register_meta_arch(name: str):
    """Class decorator: register a detector under ``MODEL.META_ARCHITECTURE = name``.

    The class needs ``from_config(cfg) -> nn.Module`` (a random-initialised model; weights are the
    engine's business) and torchvision's detection contract: ``model(images, targets)`` in training
    returns ``{"loss_*": Tensor}``, ``model(images)`` in eval mode returns one
    ``{"boxes", "scores", "labels"}`` per image in the images' coordinates. ``images``: CHW tensors,
    uint8 or float 0-1, already resized (use :func:`detector_transform`); ``targets``: per image
    ``boxes`` [N, 4] (x1, y1, x2, y2), ``labels`` [N] (1..NUM_CLASSES, 0 is background), optional
    ``weights`` / ``box_weights`` [N] (absent = 1), ``from_partner`` [N] and ``lam`` (the interpolate
    formulation). Detection labels are 1..NUM_CLASSES too.
    """

    def wrap(cls):
        if name in META_ARCHITECTURES:
            raise KeyError(f"meta-architecture {name!r} is already registered")
        if not callable(getattr(cls, "from_config", None)):
            raise TypeError(f"{cls.__name__} needs a from_config(cfg) classmethod to be registered")
        META_ARCHITECTURES[name] = cls
        return cls

    return wrap


def build_detector(cfg) -> nn.Module:
    """The ``MODEL.META_ARCHITECTURE`` detector per ``cfg``, random-initialised (``MODEL.WEIGHTS`` not loaded)."""
    return _lookup(META_ARCHITECTURES, "MODEL.META_ARCHITECTURE", cfg.MODEL.META_ARCHITECTURE).from_config(cfg)


# the built-in detectors register themselves (they import the helpers above)
from . import fcos, retinanet  # noqa: E402,F401
from .faster_rcnn import LossMixFasterRCNN, detector_kwargs, make_detector, make_weighted  # noqa: E402,F401
