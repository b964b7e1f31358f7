"""A detectron2 ``DatasetMapper`` that mixes a sample with a partner and weighs every instance.

Two stages, so partner choice stays outside the mapper (see :mod:`lossmix.d2.data`):

- :meth:`LossMixDatasetMapper.load`: detectron2's own ``DatasetMapper`` on one dataset dict (read in
  ``INPUT.FORMAT``, ``INPUT.*`` augmentations, annotations to ``Instances``), its random draws
  taken from a passed ``numpy.random.Generator`` instead of the global numpy state;
- :meth:`LossMixDatasetMapper.mix`: two loaded dicts -> one model input
  ``{"image": CxHxW uint8 tensor in INPUT.FORMAT, "instances": Instances, "lossmix_lam": float, ...}``
  via :func:`lossmix.data.mixing.mix_pair` (the same maths as the torchvision side).

``instances`` carries detectron2's ``gt_boxes`` / ``gt_classes`` plus, per instance:
``gt_weights`` (float32, the loss weight), ``gt_from_partner`` (bool) and ``gt_lam`` (float32, the
image's lambda, i.e. A's share) -- the last two are what ``LOSSMIX.FORMULATION interpolate`` reads.
An incoming ``gt_weights`` (e.g. pseudo-label confidences) is multiplied, as in ``mix_pair``.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.structures import Boxes, Instances

from ..data.mixing import METHODS, MODES, PASTE_MODES, SALIENCY_METHODS, mix_pair, sample_lambda

logger = logging.getLogger(__name__)

MIXABLE_FORMATS = ("BGR", "RGB")


@dataclass(frozen=True)
class MixPlan:
    """What :meth:`LossMixDatasetMapper.plan` drew for one sample: the mode actually applied
    (``"none"`` when not mixed) and its lambda / noise weight."""

    mode: str
    lam: Optional[float] = None
    noise_weight: Optional[float] = None


NO_MIX = MixPlan("none")


@contextlib.contextmanager
def numpy_global_seed(rng: Optional[np.random.Generator]):
    """Run a block with numpy's global RNG seeded from ``rng`` (detectron2's augmentations draw from
    it), then put the previous global state back. ``rng=None`` leaves the global RNG alone."""
    if rng is None:
        yield
        return
    state = np.random.get_state()
    np.random.seed(int(rng.integers(0, 2**32, dtype=np.uint64)))
    try:
        yield
    finally:
        np.random.set_state(state)


class LossMixDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` plus LossMix mixing (``LOSSMIX.*``); see the module docstring.

    Called on a single dict (``mapper(dataset_dict)``) it behaves like ``DatasetMapper`` and adds the
    weight fields (weights 1): mixing needs a partner, which :func:`lossmix.d2.build_lossmix_train_loader`
    supplies. In inference (``is_train=False``) it is ``DatasetMapper`` exactly.

    Args (beyond ``DatasetMapper``'s): ``mode``, ``method``, ``alpha``, ``prob``, ``noise_range``,
    ``min_visible``, ``saliency``, ``paste``: the ``LOSSMIX.*`` keys of the same names.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, mode: str = "none", method: str = "mixup", alpha: float = 1.0,
                 prob: float = 1.0, noise_range=(0.0, 0.1), min_visible: float = 0.1, saliency: str = "fine_grained",
                 paste: str = "stretch", **kwargs):
        super().__init__(is_train, **kwargs)
        if mode not in MODES:
            raise ValueError(f"LOSSMIX.MODE must be one of {MODES}, got {mode!r}")
        if method not in METHODS:
            raise ValueError(f"LOSSMIX.METHOD must be one of {METHODS}, got {method!r}")
        self.mode, self.method, self.alpha, self.prob = mode, method, float(alpha), float(prob)
        self.noise_range = tuple(float(v) for v in noise_range)
        self.min_visible = float(min_visible)
        if saliency not in SALIENCY_METHODS:
            raise ValueError(f"LOSSMIX.SALIENCY must be one of {SALIENCY_METHODS}, got {saliency!r}")
        if paste not in PASTE_MODES:
            raise ValueError(f"LOSSMIX.PASTE must be one of {PASTE_MODES}, got {paste!r}")
        self.saliency, self.paste = saliency, paste
        if self.mixes:
            if self.image_format not in MIXABLE_FORMATS:
                raise ValueError(f"LossMix mixes {'/'.join(MIXABLE_FORMATS)} images; INPUT.FORMAT is {self.image_format!r}")
            if self.use_instance_mask or self.use_keypoint:
                raise NotImplementedError("LossMix mixing covers boxes only (MODEL.MASK_ON / KEYPOINT_ON must be off)")
        self._warned = False

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        if is_train:
            m = cfg.LOSSMIX
            ret.update(mode=m.MODE, method=m.METHOD, alpha=m.ALPHA, prob=m.PROB, noise_range=m.NOISE_RANGE,
                       min_visible=m.MIN_VISIBLE, saliency=m.SALIENCY, paste=m.PASTE)
        return ret

    @property
    def mixes(self) -> bool:
        return self.is_train and self.mode != "none" and self.prob > 0

    # ------------------------------------------------------------------ stages
    def load(self, dataset_dict: dict, rng: Optional[np.random.Generator] = None) -> dict:
        """``DatasetMapper.__call__`` on one dict, augmentation draws from ``rng`` (global numpy state kept)."""
        with numpy_global_seed(rng):
            return DatasetMapper.__call__(self, dataset_dict)

    def plan(self, rng: np.random.Generator) -> MixPlan:
        """Draw whether to mix and with what, in ``lossmix.data.mapper``'s order: the ``PROB`` draw,
        then lambda (uniform / lossmix) or the noise weight (noise)."""
        if not self.mixes or rng.random() >= self.prob:
            return NO_MIX
        lam = sample_lambda(self.alpha, rng) if self.mode in ("uniform", "lossmix") else None
        noise = float(rng.uniform(*self.noise_range)) if self.mode == "noise" else None
        return MixPlan(self.mode, lam, noise)

    def mix(self, base: dict, partner: Optional[dict], plan: MixPlan, rng: np.random.Generator) -> dict:
        """Mix two :meth:`load` outputs per ``plan`` (``rng`` continues the stream ``plan`` drew from:
        CutMix's patch, SaliencyMix's tie-breaks). Unmixed, ``base`` itself gains the weight fields."""
        if plan.mode == "none" or partner is None:
            return self._with_weight_fields(base)
        mixed = mix_pair(self._to_sample(base, "base"), self._to_sample(partner, "partner"), mode=plan.mode,
                         method=self.method, lam=plan.lam, rng=rng, min_visible=self.min_visible,
                         noise_weight=plan.noise_weight, saliency=self.saliency, paste=self.paste)
        return self._from_sample(base, mixed)

    def __call__(self, dataset_dict: dict) -> dict:
        out = self.load(dataset_dict)
        if not self.is_train:
            return out
        if self.mixes and not self._warned:
            logger.warning("LossMixDatasetMapper called on single dicts: nothing is mixed. Build the loader with "
                           "lossmix.d2.build_lossmix_train_loader to pair samples with partners.")
            self._warned = True
        return self._with_weight_fields(out)

    # ------------------------------------------------------------------ conversions
    def _image_to_rgb(self, image: torch.Tensor) -> np.ndarray:
        arr = image.permute(1, 2, 0).numpy()
        if arr.dtype != np.uint8:
            raise ValueError(f"LossMix mixes uint8 images; this one is {arr.dtype}")
        return np.ascontiguousarray(arr[..., ::-1] if self.image_format == "BGR" else arr)

    def _rgb_to_image(self, rgb: np.ndarray) -> torch.Tensor:
        arr = rgb[..., ::-1] if self.image_format == "BGR" else rgb
        return torch.as_tensor(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def _to_sample(self, d: dict, name: str) -> dict:
        """A loaded dict -> ``mix_pair``'s sample (RGB HxWx3 uint8, boxes, classes, incoming weights)."""
        inst = d.get("instances")
        if inst is None:  # e.g. an unlabelled partner: no boxes
            n = 0
            boxes, classes, weights = np.zeros((0, 4), np.float32), np.zeros(0, np.int64), None
        else:
            n = len(inst)
            boxes = inst.gt_boxes.tensor.numpy().astype(np.float32).reshape(-1, 4)
            classes = inst.gt_classes.numpy().astype(np.int64)
            weights = inst.gt_weights.numpy().astype(np.float32) if inst.has("gt_weights") else None
        if n and weights is not None and len(weights) != n:
            raise ValueError(f"{name}: {n} instances but {len(weights)} gt_weights")
        return {"image": self._image_to_rgb(d["image"]), "boxes": boxes, "classes": classes, "weights": weights}

    def _from_sample(self, base: dict, mixed: dict) -> dict:
        out = {k: v for k, v in base.items() if k not in ("image", "instances")}
        image = mixed["image"]
        h, w = image.shape[:2]
        n = len(mixed["boxes"])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.as_tensor(mixed["boxes"], dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.as_tensor(mixed["classes"], dtype=torch.int64)
        inst.gt_weights = torch.as_tensor(mixed["weights"], dtype=torch.float32)
        inst.gt_from_partner = torch.as_tensor(mixed["from_partner"], dtype=torch.bool)
        inst.gt_lam = torch.full((n,), float(mixed["lam"]), dtype=torch.float32)
        out.update(image=self._rgb_to_image(image), instances=inst, lossmix_lam=float(mixed["lam"]))
        return out

    @staticmethod
    def _with_weight_fields(d: dict) -> dict:
        """An unmixed dict with the weight fields (incoming ``gt_weights`` kept, else ones), lambda 1."""
        out = dict(d)
        inst = out.get("instances")
        if inst is not None:
            n = len(inst)
            if not inst.has("gt_weights"):
                inst.gt_weights = torch.ones(n, dtype=torch.float32)
            inst.gt_from_partner = torch.zeros(n, dtype=torch.bool)
            inst.gt_lam = torch.ones(n, dtype=torch.float32)
        out["lossmix_lam"] = 1.0
        return out
