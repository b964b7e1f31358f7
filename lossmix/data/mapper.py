"""Dataset dict -> numpy sample (read + weak augmentation) -> model input.

- :meth:`LossMixDatasetMapper.load`: read + weak augmentation (and, with ``strong_prob``, sometimes
  Adaptive Teacher's strong photometric augmentation) of one dataset dict -> a *sample*
  ``{"image": HxWx3 uint8 RGB, "boxes": float32 [N,4] xyxy, "classes": int64 [N] (0-based),
  "weights": float32 [N], plus "file_name", "image_id", "height", "width" of the original}``;
- :func:`to_model_input`: a (mixed) sample -> the torchvision detector's input.

The mapper never mixes: the loaders pair loaded samples and mix them with the one
:class:`~lossmix.data.mixer.Mixer` (``LOSSMIX.*``), so one decode serves every output image.
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch

from ..structures import to_xyxy
from .augment import StrongAugment, WeakAugment, apply_geometry
from .errors import BadSampleError
from .image_io import read_image


def annotations_to_arrays(dataset_dict: dict, use_difficult: bool) -> tuple[np.ndarray, np.ndarray]:
    """Boxes float32 [N,4] xyxy and classes int64 [N] of a dataset dict (difficult ones dropped unless asked)."""
    anns = [a for a in dataset_dict.get("annotations", []) if use_difficult or not a.get("difficult", 0)]
    boxes = np.array([to_xyxy(a["bbox"], a.get("bbox_mode", 0)) for a in anns], dtype=np.float32).reshape(-1, 4)
    classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
    return boxes, classes


def to_model_input(sample: dict) -> dict:
    """A (mixed) numpy sample -> ``{"image": uint8 CHW tensor, "target": dict, ...}``.

    ``target`` holds torchvision's ``boxes`` and ``labels`` (class + 1; 0 is background) plus
    ``weights``, ``from_partner`` and ``lam`` read by the weighted heads.
    """
    image = torch.from_numpy(np.ascontiguousarray(sample["image"].transpose(2, 0, 1)))
    n = len(sample["boxes"])
    target = {
        "boxes": torch.from_numpy(np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4)),
        "labels": torch.from_numpy(np.asarray(sample["classes"], dtype=np.int64) + 1),
        "weights": torch.from_numpy(np.asarray(sample.get("weights", np.ones(n)), dtype=np.float32)),
        "from_partner": torch.from_numpy(np.asarray(sample.get("from_partner", np.zeros(n, bool)), dtype=bool)),
        "lam": torch.tensor(float(sample.get("lam", 1.0))),
    }
    if "box_weights" in sample:
        target["box_weights"] = torch.from_numpy(np.asarray(sample["box_weights"], dtype=np.float32))
    out = {k: sample[k] for k in ("file_name", "image_id", "height", "width") if k in sample}
    out.update(image=image, target=target)
    return out


class LossMixDatasetMapper:
    """Reads and weak-augments samples (no mixing); see the module docstring for the keys.

    Args:
        min_sizes / max_size / flip_prob: weak augmentation (short side drawn from ``min_sizes``).
        use_difficult: keep VOC ``difficult`` boxes as targets.
        strong_prob: probability that a loaded image also gets ``strong`` (default :class:`StrongAugment`,
            Adaptive Teacher's colour jitter, greyscale, blur and erasing; boxes unchanged) after the
            geometry (``INPUT.STRONG_AUGMENT_PROB``). At 0 no random number is drawn for it, so loading
            is unchanged. :meth:`weak_only` is the same mapper without it (the target's weak view).
    """

    def __init__(
        self,
        *,
        min_sizes: Sequence[int],
        max_size: int,
        flip_prob: float = 0.5,
        use_difficult: bool = False,
        strong_prob: float = 0.0,
        strong: StrongAugment | None = None,
    ):
        self.augment = WeakAugment(short_edges=tuple(min_sizes), max_size=max_size, flip_prob=flip_prob)
        self.use_difficult = use_difficult
        self.strong_prob = float(strong_prob)
        self.strong = strong if strong is not None else StrongAugment()

    def weak_only(self) -> "LossMixDatasetMapper":
        """A copy that never applies the strong augmentation (``strong_prob`` 0)."""
        out = copy.copy(self)
        out.strong_prob = 0.0
        return out

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> "LossMixDatasetMapper":
        if not is_train:
            return cls(min_sizes=(cfg.INPUT.MIN_SIZE_TEST,), max_size=cfg.INPUT.MAX_SIZE_TEST, flip_prob=0.0,
                       use_difficult=True)
        return cls(
            min_sizes=cfg.INPUT.MIN_SIZE_TRAIN,
            max_size=cfg.INPUT.MAX_SIZE_TRAIN,
            flip_prob=cfg.INPUT.RANDOM_FLIP,
            use_difficult=cfg.DATASETS.TRAIN_USE_DIFFICULT,
            strong_prob=cfg.INPUT.STRONG_AUGMENT_PROB,
        )

    def read(self, dataset_dict: dict) -> np.ndarray:
        """The image of a dataset dict, checked against its recorded size."""
        image = read_image(dataset_dict["file_name"])
        expected = (dataset_dict.get("height"), dataset_dict.get("width"))
        if None not in expected and image.shape[:2] != tuple(expected):
            raise BadSampleError(
                dataset_dict["file_name"],
                f"image is {image.shape[1]}x{image.shape[0]} (WxH) but its annotation says {expected[1]}x{expected[0]}",
                kind="size_mismatch",
            )
        return image

    def load(self, dataset_dict: dict, rng: np.random.Generator, geometry=None) -> dict:
        """Read and weak-augment one dataset dict into a sample (``geometry`` reuses a drawn one)."""
        image = self.read(dataset_dict)
        boxes, classes = annotations_to_arrays(dataset_dict, self.use_difficult)
        if geometry is None:
            geometry = self.augment.draw_geometry(image.shape[0], image.shape[1], rng)
        image, boxes = apply_geometry(image, boxes, geometry)
        if self.strong_prob > 0 and rng.random() < self.strong_prob:
            image = self.strong.apply_image(image, rng)
        h, w = image.shape[:2]
        np.clip(boxes, 0, [w, h, w, h], out=boxes)  # float rounding of the resize only; the reader clipped already
        sample = {k: dataset_dict[k] for k in ("file_name", "image_id", "height", "width") if k in dataset_dict}
        sample.update(image=image, boxes=boxes, classes=classes, weights=np.ones(len(boxes), np.float32),
                      geometry=geometry)
        return sample
