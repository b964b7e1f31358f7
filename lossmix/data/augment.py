"""Per-image augmentation: weak (resize + flip, moves boxes) and strong (photometric only).

The weak geometry is drawn separately from its application (:meth:`WeakAugment.draw_geometry`
then :func:`apply_geometry`), so the weak view a teacher sees and the strong view a student
sees can share one geometry and therefore one set of boxes.

Conventions: images are ``HxWx3`` ``uint8`` **RGB**; boxes are float32 ``[N, 4]`` xyxy in
continuous pixel coordinates (``0..W``, ``0..H``); randomness comes from a passed-in
``numpy.random.Generator``. No input array is modified in place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import cv2
import numpy as np

from ..structures import as_boxes

__all__ = [
    "Geometry",
    "resize_shortest_edge",
    "choose_short_edge",
    "hflip",
    "apply_geometry",
    "WeakAugment",
    "StrongAugment",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
]


def _shortest_edge_size(h: int, w: int, short: int, max_size: int) -> Tuple[int, int, float]:
    """(out_h, out_w, scale) for detectron2's ResizeShortestEdge rule."""
    scale = short / min(h, w)
    if max_size > 0 and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)), float(scale)


def _resize(img: np.ndarray, boxes: np.ndarray, out_h: int, out_w: int) -> Tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    if (h, w) == (out_h, out_w):
        return img, boxes.copy()
    out = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    # per-axis factors of the rounded output size, so boxes follow the pixels exactly
    factor = np.array([out_w / w, out_h / h, out_w / w, out_h / h], dtype=np.float64)
    return out, (boxes.astype(np.float64) * factor).astype(np.float32)


def resize_shortest_edge(
    img: np.ndarray, boxes: np.ndarray, short: int, max_size: int
) -> Tuple[np.ndarray, np.ndarray, float]:
    """Resize so the shorter side is ``short`` px, unless the longer side would pass ``max_size``.

    detectron2's ``ResizeShortestEdge`` rule: ``scale = short / min(H, W)``, lowered to
    ``max_size / max(H, W)`` when needed; output size ``int(H * scale + 0.5)`` x
    ``int(W * scale + 0.5)``; bilinear (``cv2.INTER_LINEAR``).

    Args:
        img: ``H x W x 3`` uint8 RGB.
        boxes: float32 ``[N, 4]`` xyxy pixels.
        short: target shorter side in pixels (``> 0``).
        max_size: cap on the longer side in pixels (``<= 0``: no cap).

    Returns:
        ``(image, boxes, scale)``: the resized uint8 image, boxes scaled by the per-axis factors
        ``out_w / W`` and ``out_h / H`` (which differ from ``scale`` only by the size rounding),
        and the nominal ``scale`` (float). The image object is returned as is when the size does
        not change.
    """
    if short <= 0:
        raise ValueError(f"short must be positive, got {short}")
    boxes = as_boxes(boxes)
    h, w = img.shape[:2]
    out_h, out_w, scale = _shortest_edge_size(h, w, int(short), int(max_size))
    out, boxes = _resize(img, boxes, out_h, out_w)
    return out, boxes, scale


def choose_short_edge(choices: Sequence[int], rng: np.random.Generator) -> int:
    """Draw one shorter-side length uniformly from ``choices`` (a non-empty sequence of ints)."""
    if len(choices) == 0:
        raise ValueError("choices must not be empty")
    return int(choices[int(rng.integers(0, len(choices)))])


def hflip(img: np.ndarray, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: pixel column ``x`` goes to ``W - 1 - x``, box ``(x1, x2)`` to ``(W - x2, W - x1)``.

    Returns ``(image, boxes)``: a new contiguous ``H x W x 3`` uint8 array and float32 ``[N, 4]``.
    """
    boxes = as_boxes(boxes)
    w = img.shape[1]
    out = np.ascontiguousarray(img[:, ::-1])
    flipped = boxes.copy()
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    return out, flipped


@dataclass(frozen=True)
class Geometry:
    """One draw of the weak geometry: output size in pixels and whether to mirror left-right."""

    out_h: int
    out_w: int
    flip: bool


def apply_geometry(img: np.ndarray, boxes: np.ndarray, geom: Geometry) -> Tuple[np.ndarray, np.ndarray]:
    """Resize to ``(geom.out_h, geom.out_w)`` (bilinear, boxes scaled per axis), then flip if asked.

    Deterministic: two views given the same ``geom`` (and the same input) get identical boxes and
    the same size.

    Returns:
        ``(image, boxes)``: ``out_h x out_w x 3`` uint8 RGB and float32 ``[N, 4]``. May return the
        input image object when nothing changes; never modifies it.
    """
    boxes = as_boxes(boxes)
    img, boxes = _resize(img, boxes, int(geom.out_h), int(geom.out_w))
    if geom.flip:
        img, boxes = hflip(img, boxes)
    return img, boxes


class WeakAugment:
    """Weak augmentation: resize to a shorter side drawn from ``short_edges``, random h-flip.

    ``draw_geometry(h, w, rng)`` draws a :class:`Geometry`; :func:`apply_geometry` applies it.
    Calling the object does both. With one short edge and ``flip_prob=0`` it is the test-time
    resize.
    """

    def __init__(self, *, short_edges: Sequence[int] = (600,), max_size: int = 1000, flip_prob: float = 0.5):
        """
        Args:
            short_edges: candidate shorter-side lengths in pixels, one drawn uniformly per image.
            max_size: cap on the longer side in pixels (``<= 0``: no cap).
            flip_prob: probability of a horizontal flip, ``[0, 1]``.
        """
        self.short_edges = tuple(int(s) for s in short_edges)
        if not self.short_edges or min(self.short_edges) <= 0:
            raise ValueError(f"short_edges must be positive ints, got {short_edges}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must lie in [0, 1], got {flip_prob}")
        self.max_size = int(max_size)
        self.flip_prob = float(flip_prob)

    def draw_geometry(self, height: int, width: int, rng: np.random.Generator) -> Geometry:
        """Draw the output size (for an input of ``height x width`` px) and the flip."""
        short = choose_short_edge(self.short_edges, rng)
        out_h, out_w, _ = _shortest_edge_size(int(height), int(width), short, self.max_size)
        flip = bool(rng.random() < self.flip_prob)
        return Geometry(out_h=out_h, out_w=out_w, flip=flip)

    def __call__(
        self, img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator
    ) -> Tuple[np.ndarray, np.ndarray, Geometry]:
        """Draw and apply a geometry. Returns ``(image, boxes, geometry)``."""
        geom = self.draw_geometry(img.shape[0], img.shape[1], rng)
        out, out_boxes = apply_geometry(img, boxes, geom)
        return out, out_boxes, geom

    def __repr__(self) -> str:
        return (f"WeakAugment(short_edges={self.short_edges}, max_size={self.max_size}, "
                f"flip_prob={self.flip_prob})")


# --------------------------------------------------------------------------------------------
# strong (photometric) augmentation
# --------------------------------------------------------------------------------------------
def _blend(img: np.ndarray, other, factor: float) -> np.ndarray:
    """round(factor * img + (1 - factor) * other), saturated to uint8; ``other`` image or scalar."""
    if np.isscalar(other):
        return cv2.addWeighted(img, factor, img, 0.0, (1.0 - factor) * float(other))
    return cv2.addWeighted(img, factor, other, 1.0 - factor, 0.0)


def _gray3(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """Multiply every channel by ``factor >= 0`` (torchvision's ``adjust_brightness``)."""
    return cv2.convertScaleAbs(img, alpha=factor)


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the mean grey level of the image (torchvision's ``adjust_contrast``)."""
    mean = float(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).mean())
    return _blend(img, mean, factor)


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the image's own greyscale (torchvision's ``adjust_saturation``)."""
    return _blend(img, _gray3(img), factor)


def adjust_hue(img: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue by ``shift`` turns, ``shift`` in ``[-0.5, 0.5]`` (OpenCV's 8-bit HSV, 2-degree steps)."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # 8-bit hue lies in [0, 180)
    lut = ((np.arange(256) + int(round(shift * 180.0))) % 180).astype(np.uint8)
    hsv[..., 0] = cv2.LUT(hsv[..., 0], lut)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


class StrongAugment:
    """Strong photometric augmentation of Unbiased / Adaptive Teacher; boxes are not touched.

    In order, each with its own probability: colour jitter (brightness, contrast, saturation
    factors drawn from ``[1 - s, 1 + s]``, hue shift from ``[-hue, hue]`` turns, applied in a
    random order as torchvision's ``ColorJitter``), greyscale, Gaussian blur (sigma drawn from
    ``blur_sigma``), then the random-erasing passes. An erased rectangle is filled with uniform
    random pixels in ``[0, 255]`` (the uint8 counterpart of torchvision's ``value="random"``).
    Apply it after the shared weak geometry.
    """

    def __init__(
        self,
        *,
        jitter_prob: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        grayscale_prob: float = 0.2,
        blur_prob: float = 0.5,
        blur_sigma: Tuple[float, float] = (0.1, 2.0),
        erasing: Sequence[Tuple[float, Tuple[float, float], Tuple[float, float]]] = (
            (0.7, (0.05, 0.2), (0.3, 3.3)),
            (0.5, (0.02, 0.2), (0.1, 6.0)),
            (0.3, (0.02, 0.2), (0.05, 8.0)),
        ),
    ):
        """
        Args:
            jitter_prob: probability of applying the colour jitter at all.
            brightness, contrast, saturation: jitter strengths ``s`` in ``[0, 1]``.
            hue: hue jitter in turns, ``[0, 0.5]``.
            grayscale_prob: probability of converting to (3-channel) greyscale.
            blur_prob: probability of a Gaussian blur; ``blur_sigma``: its sigma range in pixels.
            erasing: passes of ``(probability, area fraction range, aspect ratio range)``.
        """
        self.jitter_prob = float(jitter_prob)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)
        self.hue = float(hue)
        self.grayscale_prob = float(grayscale_prob)
        self.blur_prob = float(blur_prob)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.erasing = tuple((float(p), tuple(map(float, s)), tuple(map(float, r))) for p, s, r in erasing)

    def color_jitter(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Brightness, contrast, saturation and hue jitter in a random order (always applied)."""
        for op in rng.permutation(4):
            if op == 0 and self.brightness > 0:
                img = adjust_brightness(img, rng.uniform(max(0.0, 1 - self.brightness), 1 + self.brightness))
            elif op == 1 and self.contrast > 0:
                img = adjust_contrast(img, rng.uniform(max(0.0, 1 - self.contrast), 1 + self.contrast))
            elif op == 2 and self.saturation > 0:
                img = adjust_saturation(img, rng.uniform(max(0.0, 1 - self.saturation), 1 + self.saturation))
            elif op == 3 and self.hue > 0:
                img = adjust_hue(img, rng.uniform(-self.hue, self.hue))
        return img

    @staticmethod
    def erase(img: np.ndarray, scale: Tuple[float, float], ratio: Tuple[float, float],
              rng: np.random.Generator) -> np.ndarray:
        """One random-erasing draw (torchvision's rejection sampling, 10 tries); returns a new image."""
        h, w = img.shape[:2]
        area = h * w
        log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
        for _ in range(10):
            target = area * rng.uniform(scale[0], scale[1])
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            eh = int(round(math.sqrt(target * aspect)))
            ew = int(round(math.sqrt(target / aspect)))
            if not (0 < eh < h and 0 < ew < w):
                continue
            y = int(rng.integers(0, h - eh + 1))
            x = int(rng.integers(0, w - ew + 1))
            out = img.copy()
            out[y:y + eh, x:x + ew] = rng.integers(0, 256, size=(eh, ew, img.shape[2]), dtype=np.uint8)
            return out
        return img

    def apply_image(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment an ``H x W x 3`` uint8 RGB image; returns one of the same size (maybe the input)."""
        if rng.random() < self.jitter_prob:
            img = self.color_jitter(img, rng)
        if rng.random() < self.grayscale_prob:
            img = _gray3(img)
        if rng.random() < self.blur_prob:
            sigma = rng.uniform(*self.blur_sigma)
            img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)
        for prob, scale, ratio in self.erasing:
            if rng.random() < prob:
                img = self.erase(img, scale, ratio, rng)
        return img

    def __call__(self, img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """Returns ``(augmented image, boxes)``; the boxes are returned unchanged (same object)."""
        return self.apply_image(img, rng), boxes

    def __repr__(self) -> str:
        return (f"StrongAugment(jitter_prob={self.jitter_prob}, brightness={self.brightness}, "
                f"contrast={self.contrast}, saturation={self.saturation}, hue={self.hue}, "
                f"grayscale_prob={self.grayscale_prob}, blur_prob={self.blur_prob}, "
                f"blur_sigma={self.blur_sigma}, erasing={self.erasing})")
