"""A detectron2 ``DatasetMapper`` whose outputs the core :class:`~lossmix.data.mixer.Mixer` can mix.

This module only adapts data structures; what is mixed with what, and how, is the core's:

- :meth:`LossMixDatasetMapper.load`: detectron2's own ``DatasetMapper`` on one dataset dict (read in
  ``INPUT.FORMAT``, ``INPUT.*`` augmentations, annotations to ``Instances``), its random draws
  taken from a passed ``numpy.random.Generator`` instead of the global numpy state;
- :meth:`LossMixDatasetMapper.to_sample`: such a dict -> the core's numpy sample (``HxWx3`` uint8
  RGB, boxes, classes, incoming weights from ``gt_weights``);
- :meth:`LossMixDatasetMapper.to_input`: a (mixed) core sample -> a detectron2 model input
  ``{"image": CxHxW uint8 tensor in INPUT.FORMAT, "instances": Instances, "lossmix_lam": float, ...}``.

``instances`` carries detectron2's ``gt_boxes`` / ``gt_classes`` plus, per instance:
``gt_weights`` (float32, the loss weight), ``gt_from_partner`` (bool), ``gt_lam`` (float32, the
image's lambda, i.e. A's share) -- the last two are what ``LOSSMIX.FORMULATION interpolate`` reads --
and ``gt_box_weights`` when the sample has ``box_weights`` (pseudo-labels).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.structures import Boxes, Instances

from ..data.mixer import Mixer

logger = logging.getLogger(__name__)

MIXABLE_FORMATS = ("BGR", "RGB")
_META = ("file_name", "image_id", "height", "width")


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


def stream_seed(cfg) -> int:
    """``SEED``, or (``SEED < 0``) one seed drawn at start and shared by all processes (all ranks must call this)."""
    from detectron2.utils import comm

    return int(cfg.SEED) if cfg.SEED >= 0 else int(comm.shared_random_seed())


class LossMixDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` plus the conversions the core mixer needs; see the module docstring.

    Called on a single dict (``mapper(dataset_dict)``) it behaves like ``DatasetMapper`` and adds the
    weight fields (weights 1): mixing needs a partner, which :func:`lossmix.d2.build_lossmix_train_loader`
    supplies. In inference (``is_train=False``) it is ``DatasetMapper`` exactly.

    Args (beyond ``DatasetMapper``'s): ``mixer``, the core :class:`Mixer` (``LOSSMIX.*``; default: no mixing).
    """

    @configurable
    def __init__(self, is_train: bool = True, *, mixer: Optional[Mixer] = None, **kwargs):
        super().__init__(is_train, **kwargs)
        self.mixer = mixer if mixer is not None else Mixer()
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
            ret["mixer"] = Mixer.from_config(cfg, seed=stream_seed(cfg))
        return ret

    @property
    def mixes(self) -> bool:
        return self.is_train and self.mixer.mixes

    # ------------------------------------------------------------------ stages
    def load(self, dataset_dict: dict, rng: Optional[np.random.Generator] = None) -> dict:
        """``DatasetMapper.__call__`` on one dict, augmentation draws from ``rng`` (global numpy state kept)."""
        with numpy_global_seed(rng):
            return DatasetMapper.__call__(self, dataset_dict)

    def load_sample(self, dataset_dict: dict, rng: Optional[np.random.Generator] = None) -> dict:
        """:meth:`load` as a core numpy sample (what the core loaders and :class:`Mixer` take)."""
        return self.to_sample(self.load(dataset_dict, rng))

    def __call__(self, dataset_dict: dict) -> dict:
        out = self.load(dataset_dict)
        if not self.is_train:
            return out
        if self.mixes and not self._warned:
            logger.warning("LossMixDatasetMapper called on single dicts: nothing is mixed. Build the loader with "
                           "lossmix.d2.build_lossmix_train_loader to pair samples with partners.")
            self._warned = True
        return self.to_input(self.to_sample(out))

    # ------------------------------------------------------------------ conversions
    def _image_to_rgb(self, image: torch.Tensor) -> np.ndarray:
        arr = image.permute(1, 2, 0).numpy()
        if arr.dtype != np.uint8:
            raise ValueError(f"LossMix mixes uint8 images; this one is {arr.dtype}")
        return np.ascontiguousarray(arr[..., ::-1] if self.image_format == "BGR" else arr)

    def _rgb_to_image(self, rgb: np.ndarray) -> torch.Tensor:
        arr = rgb[..., ::-1] if self.image_format == "BGR" else rgb
        return torch.as_tensor(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def to_sample(self, d: dict) -> dict:
        """A loaded dict -> the core's numpy sample (RGB HxWx3 uint8, boxes, classes, incoming weights)."""
        inst = d.get("instances")
        if inst is None:  # e.g. an unlabelled image: no boxes
            boxes, classes, weights = np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)
        else:
            boxes = inst.gt_boxes.tensor.numpy().astype(np.float32).reshape(-1, 4)
            classes = inst.gt_classes.numpy().astype(np.int64)
            weights = (inst.gt_weights.numpy().astype(np.float32) if inst.has("gt_weights")
                       else np.ones(len(inst), np.float32))
            if len(weights) != len(inst):
                raise ValueError(f"{d.get('file_name', 'a sample')}: {len(inst)} instances but {len(weights)} gt_weights")
        sample = {k: d[k] for k in _META if k in d}
        sample.update(image=self._image_to_rgb(d["image"]), boxes=boxes, classes=classes, weights=weights)
        return sample

    def to_input(self, sample: dict) -> dict:
        """A core (mixed) numpy sample -> a detectron2 model input (weights 1, lambda 1 where the sample has none)."""
        image = sample["image"]
        h, w = image.shape[:2]
        n = len(sample["boxes"])
        lam = float(sample.get("lam", 1.0))
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.as_tensor(np.asarray(sample["boxes"]), dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.as_tensor(np.asarray(sample["classes"]), dtype=torch.int64)
        inst.gt_weights = torch.as_tensor(np.asarray(sample.get("weights", np.ones(n))), dtype=torch.float32)
        inst.gt_from_partner = torch.as_tensor(np.asarray(sample.get("from_partner", np.zeros(n, bool))),
                                               dtype=torch.bool)
        inst.gt_lam = torch.full((n,), lam, dtype=torch.float32)
        if "box_weights" in sample:
            inst.gt_box_weights = torch.as_tensor(np.asarray(sample["box_weights"]), dtype=torch.float32)
        out = {k: sample[k] for k in _META if k in sample}
        out.update(image=self._rgb_to_image(image), instances=inst, lossmix_lam=lam)
        return out
