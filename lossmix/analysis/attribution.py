"""Feature attribution for one detection of a Faster R-CNN: maps over the input and where their mass lies.

The detection-specific part is :class:`DetectionScore`, a differentiable scalar per image with the
proposals held fixed: normalise and pad the image as ``model.transform`` does, run the backbone,
``box_roi_pool`` over ONE fixed box, ``box_head``, ``box_predictor``, and return the softmax score
of one class. The attribution methods themselves are Captum's (:func:`attribution_map`):

==============  ===============================================================  ===============
method          Captum                                                           map (H x W)
==============  ===============================================================  ===============
``gradcam``     ``LayerGradCam`` w.r.t. a backbone layer (ReLU'd)                bilinear upsample
``smoothgrad``  ``NoiseTunnel(Saliency)``, Gaussian noise in 0-1 pixel units     sum_c abs
``ig``          ``IntegratedGradients`` from a black image                       sum_c abs
``guided``      ``GuidedBackprop``                                               sum_c abs
==============  ===============================================================  ===============

Guided Backprop overrides the gradient of ``nn.ReLU`` *modules* only (Captum hooks them and removes
the hooks afterwards). torchvision's ResNet and FPN use modules (``inplace=True`` is fine: Captum's
pre-hook clones the input), but ``TwoMLPHead`` (the box head) calls ``F.relu``, whose gradient stays
the plain one: the box head is back-propagated as in vanilla gradients.

Which box to explain: a detection's score is computed by the ROI head from its *source proposal*
(the RPN box the detection was regressed from). :func:`detect_with_proposals` recovers it, and
``DetectionScore(model, proposal, label)`` on the unmodified image reproduces the detector's reported
score. Any other box (the final regressed box, a ground-truth box) is explained as "the class score
the ROI head gives to this box"; that differs from the reported score of a detection.

Where the mass lies (:func:`box_shares`): the map's share inside a box, in a ring around it and
elsewhere. A pixel ``(row i, column j)`` belongs to a region when its centre ``(j + 0.5, i + 0.5)``
does (boxes are ``[x1, y1, x2, y2]`` in input pixels, ``x2``/``y2`` exclusive). The ring is the box
grown by ``ring`` times its width (left and right) and height (top and bottom), minus the box:
``ring=0.5`` doubles each side, so the ring's area is three times the box's (before image clipping).
"""
from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop, IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops

METHODS = ("gradcam", "smoothgrad", "ig", "guided")
REGIONS = ("inside", "ring", "outside")
AUTO_LAYER = "auto"  # Grad-CAM on the FPN output level the box is pooled from


class DetectionScore(nn.Module):
    """``forward(images[B,3,H,W] float RGB 0-1) -> scores[B]``: the class score of one fixed box.

    Args:
        model: a torchvision ``FasterRCNN`` (e.g. from ``build_detector``) in eval mode; shared, not copied.
        box: ``[x1, y1, x2, y2]`` in input pixels (the coordinates of ``images``), pooled as an RoI.
        label: the model's class index (torchvision's: 0 is background, class ``k`` is ``k + 1``).

    Every image in the batch gets the same box (Captum batches interpolated / noisy copies). The
    images are normalised with ``model.transform``'s mean/std and zero-padded at the bottom/right to
    a multiple of ``size_divisible`` after normalising, as ``GeneralizedRCNNTransform.batch_images``
    does; the pooler sees the unpadded size. No resizing: the inputs are already the model's inputs.
    """

    def __init__(self, model: nn.Module, box, label: int):
        super().__init__()
        self.model = model
        self.box = torch.as_tensor(box, dtype=torch.float32).detach().reshape(4).clone()
        self.label = int(label)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The batched tensor's size for an ``height x width`` input (what the backbone sees)."""
        div = self.model.transform.size_divisible
        return int(math.ceil(height / div) * div), int(math.ceil(width / div) * div)

    def features(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        """Backbone features of normalised, padded ``images`` (as in the detector's own forward)."""
        transform = self.model.transform
        mean = torch.as_tensor(transform.image_mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.as_tensor(transform.image_std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        height, width = images.shape[-2:]
        padded_h, padded_w = self.padded_size(height, width)
        x = F.pad((images - mean) / std, (0, padded_w - width, 0, padded_h - height))
        features = self.model.backbone(x)
        return OrderedDict([("0", features)]) if isinstance(features, Tensor) else features

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4:
            raise ValueError(f"images must be [B,3,H,W], got shape {tuple(images.shape)}")
        if self.model.training:
            raise RuntimeError("DetectionScore needs the detector in eval mode (BatchNorm statistics, no dropout)")
        heads = self.model.roi_heads
        size = tuple(images.shape[-2:])
        box = self.box.to(images)[None]
        pooled = heads.box_roi_pool(self.features(images), [box] * len(images), [size] * len(images))
        class_logits, _ = heads.box_predictor(heads.box_head(pooled))
        return class_logits.softmax(-1)[:, self.label]


@torch.no_grad()
def detect_with_proposals(model: nn.Module, image: Tensor) -> dict[str, Tensor]:
    """The detector's detections of one image (input coordinates, torchvision labels) and their proposals.

    Args:
        image: ``[3,H,W]`` float RGB 0-1, the model's input (already resized by the mapper).

    Returns ``{"boxes": [N,4], "scores": [N], "labels": [N], "proposals": [N,4]}``: ``proposals[k]``
    is the RPN box detection ``k`` was regressed from, found by matching the detection's score and
    box against every proposal's (hooks on ``roi_heads`` and its ``box_predictor``, removed after).
    The model is run in eval mode and its mode restored.
    """
    heads = model.roi_heads
    captured: dict[str, Tensor] = {}

    def keep_proposals(module, args):
        captured["proposals"] = args[1][0]  # RoIHeads.forward(features, proposals, image_shapes, targets)

    def keep_outputs(module, args, output):
        captured["class_logits"], captured["box_regression"] = output

    handles = [heads.register_forward_pre_hook(keep_proposals), heads.box_predictor.register_forward_hook(keep_outputs)]
    was_training = model.training
    model.eval()
    try:
        detections = model([image])[0]
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    proposals = captured["proposals"]
    scores = captured["class_logits"].softmax(-1)
    boxes = box_ops.clip_boxes_to_image(heads.box_coder.decode(captured["box_regression"], [proposals]),
                                        tuple(image.shape[-2:]))
    sources = []
    for box, score, label in zip(detections["boxes"], detections["scores"], detections["labels"]):
        error = (scores[:, label] - score).abs() + (boxes[:, label] - box).abs().amax(-1)
        index = int(error.argmin())
        if float(error[index]) > 1e-4:
            raise RuntimeError(f"no proposal reproduces detection {box.tolist()} (score {float(score):.4f}); "
                               "the ROI head's post-processing differs from torchvision's")
        sources.append(proposals[index])
    detections = dict(detections)
    detections["proposals"] = torch.stack(sources) if sources else proposals.new_zeros(0, 4)
    return detections


def pooled_level(model: nn.Module, box) -> int:
    """Index of the feature map ``box_roi_pool`` pools ``box`` from (call after one forward of the pooler)."""
    pool = model.roi_heads.box_roi_pool
    if getattr(pool, "map_levels", None) is None:
        raise RuntimeError("box_roi_pool has not run yet: evaluate a DetectionScore once first")
    return int(pool.map_levels([torch.as_tensor(box, dtype=torch.float32).reshape(1, 4)])[0])


def resolve_layer(model: nn.Module, name: str, box=None) -> tuple[str, nn.Module]:
    """``(name, module)`` for Grad-CAM: a dotted submodule path of ``model`` (its output must be a tensor,
    e.g. ``backbone.body.layer4`` or ``backbone.fpn.layer_blocks.0``) or ``"auto"``: the FPN output
    block of the level ``box`` is pooled from (torchvision's ``BackboneWithFPN``)."""
    if name == AUTO_LAYER:
        if box is None:
            raise ValueError("gradcam layer 'auto' needs the explained box")
        fpn = getattr(model.backbone, "fpn", None)
        if fpn is None:
            raise ValueError("gradcam layer 'auto' needs an FPN backbone; name a layer instead")
        featmap = model.roi_heads.box_roi_pool.featmap_names[pooled_level(model, box)]
        name = f"backbone.fpn.layer_blocks.{int(featmap)}"
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"model has no submodule {name!r} for Grad-CAM") from None


def reduce_channels(attribution: Tensor) -> Tensor:
    """``[1,C,H,W]`` or ``[C,H,W]`` signed attribution -> ``[H,W]`` non-negative: ``abs`` summed over channels."""
    if attribution.dim() == 4:
        if len(attribution) != 1:
            raise ValueError(f"expected one image, got a batch of {len(attribution)}")
        attribution = attribution[0]
    return attribution.detach().abs().sum(0)


def upsample_cam(cam: Tensor, size: tuple[int, int], padded: Optional[tuple[int, int]] = None) -> Tensor:
    """``[1,1,h,w]`` layer map -> ``[H,W]``: bilinear to the extent the layer covers (``padded``, default
    ``size``), cropped to ``size`` (padding sits at the bottom/right), negatives set to 0."""
    padded = tuple(padded or size)
    full = LayerAttribution.interpolate(cam.detach(), padded, interpolate_mode="bilinear")
    return full[0, 0, : size[0], : size[1]].clamp(min=0)


def attribution_map(
    score_fn: nn.Module,
    image: Tensor,
    method: str,
    *,
    layer: Optional[nn.Module] = None,
    padded_size: Optional[tuple[int, int]] = None,
    ig_steps: int = 32,
    smoothgrad_samples: int = 16,
    smoothgrad_stdev: float = 0.1,
    internal_batch_size: int = 16,
) -> Tensor:
    """One ``[H,W]`` non-negative map of ``score_fn(images[B,3,H,W]) -> [B]`` at ``image`` (``[3,H,W]``).

    Args:
        method: one of :data:`METHODS`.
        layer: Grad-CAM's layer, a submodule called inside ``score_fn`` whose output is ``[B,C,h,w]``.
        padded_size: the input extent ``layer`` covers when ``score_fn`` pads (Grad-CAM only), e.g.
            ``DetectionScore.padded_size(H, W)``; default the image's size.
        ig_steps: Integrated Gradients' steps from the black (all-zero) baseline.
        smoothgrad_samples / smoothgrad_stdev: noisy copies and their Gaussian std (0-1 pixel units).
        internal_batch_size: at most this many copies per forward (IG steps, SmoothGrad samples).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x = (image[None] if image.dim() == 3 else image).detach().clone().requires_grad_(True)
    if method == "gradcam":
        if layer is None:
            raise ValueError("Grad-CAM needs a layer")
        cam = LayerGradCam(score_fn, layer).attribute(x, relu_attributions=True)
        return upsample_cam(cam, tuple(x.shape[-2:]), padded_size)
    if method == "smoothgrad":
        attribution = NoiseTunnel(Saliency(score_fn)).attribute(
            x, nt_type="smoothgrad", nt_samples=smoothgrad_samples, stdevs=smoothgrad_stdev,
            nt_samples_batch_size=internal_batch_size)
    elif method == "ig":
        attribution = IntegratedGradients(score_fn).attribute(
            x, baselines=torch.zeros_like(x), n_steps=ig_steps, internal_batch_size=internal_batch_size)
    else:
        with warnings.catch_warnings():  # Captum announces its (temporary) ReLU hooks on every call
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
            attribution = GuidedBackprop(score_fn).attribute(x)
    return reduce_channels(attribution)


@dataclass
class Explanation:
    """Maps of one box's class score: ``maps[method]`` is ``[H,W]`` non-negative (CPU)."""

    box: list[float]
    label: int
    score: float
    gradcam_layer: str = ""
    maps: dict[str, Tensor] = field(default_factory=dict)


def explain(
    model: nn.Module,
    image: Tensor,
    box,
    label: int,
    *,
    methods: Sequence[str] = METHODS,
    gradcam_layer: str = AUTO_LAYER,
    **settings,
) -> Explanation:
    """Attribution maps of ``DetectionScore(model, box, label)`` at ``image`` (``[3,H,W]`` float 0-1).

    ``model`` must be in eval mode. ``settings`` go to :func:`attribution_map` (``ig_steps``, ...).
    """
    score_fn = DetectionScore(model, box, label)
    with torch.no_grad():
        score = float(score_fn(image[None]))
    explanation = Explanation(box=[float(v) for v in score_fn.box], label=int(label), score=score)
    padded = score_fn.padded_size(*image.shape[-2:])
    for method in methods:
        layer = None
        if method == "gradcam":
            explanation.gradcam_layer, layer = resolve_layer(model, gradcam_layer, score_fn.box)
        heat = attribution_map(score_fn, image, method, layer=layer, padded_size=padded, **settings)
        explanation.maps[method] = heat.detach().float().cpu()
    return explanation


def region_masks(size: tuple[int, int], box, ring: float = 0.5) -> dict[str, Tensor]:
    """Boolean ``[H,W]`` masks ``inside`` / ``ring`` / ``outside`` (a partition; see the module docstring)."""
    if ring < 0:
        raise ValueError(f"ring must be >= 0, got {ring}")
    height, width = size
    x1, y1, x2, y2 = (float(v) for v in box)
    cx = torch.arange(width, dtype=torch.float64) + 0.5
    cy = torch.arange(height, dtype=torch.float64) + 0.5

    def covered(a1, b1, a2, b2):
        return ((cy >= b1) & (cy < b2))[:, None] & ((cx >= a1) & (cx < a2))[None, :]

    dx, dy = ring * (x2 - x1), ring * (y2 - y1)
    inside = covered(x1, y1, x2, y2)
    grown = covered(x1 - dx, y1 - dy, x2 + dx, y2 + dy)
    return {"inside": inside, "ring": grown & ~inside, "outside": ~grown}


def box_shares(heat: Tensor, box, *, ring: float = 0.5) -> dict[str, float]:
    """Shares of ``heat``'s (``[H,W]``, non-negative) mass inside ``box``, in its ring and elsewhere.

    The three sum to 1. A map with zero total mass (or a non-finite one) has no shares: all NaN.
    """
    heat = torch.as_tensor(heat, dtype=torch.float64)
    if heat.dim() != 2:
        raise ValueError(f"heat must be [H,W], got shape {tuple(heat.shape)}")
    if bool((heat < 0).any()):
        raise ValueError("heat must be non-negative (reduce signed attributions first)")
    total = float(heat.sum())
    if not math.isfinite(total) or total <= 0:
        return {region: math.nan for region in REGIONS}
    masks = region_masks(tuple(heat.shape), box, ring)
    return {region: float(heat[mask].sum()) / total for region, mask in masks.items()}


def summarize_shares(records: Iterable[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{region: {"mean", "std", "n"}}`` over records from :func:`box_shares`, NaN records left out.

    ``std`` is the sample standard deviation (NaN with fewer than two records); ``n`` the records used.
    """
    values = np.array([[r[region] for region in REGIONS] for r in records], dtype=np.float64).reshape(-1, len(REGIONS))
    values = values[~np.isnan(values).any(1)]
    n = len(values)
    mean = values.mean(0) if n else np.full(len(REGIONS), np.nan)
    std = values.std(0, ddof=1) if n > 1 else np.full(len(REGIONS), np.nan)
    return {region: {"mean": float(mean[i]), "std": float(std[i]), "n": n} for i, region in enumerate(REGIONS)}


__all__ = [
    "AUTO_LAYER", "METHODS", "REGIONS", "DetectionScore", "Explanation", "attribution_map", "box_shares",
    "detect_with_proposals", "explain", "pooled_level", "reduce_channels", "region_masks", "resolve_layer",
    "summarize_shares", "upsample_cam",
]
