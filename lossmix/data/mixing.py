"""Mixing maths for LossMix: draw lambda, blend / patch two images, and weigh their instances.

Everything here is a pure function of its inputs and a passed-in ``numpy.random.Generator``;
nothing seeds or reads global random state, and no input array is modified in place.

Conventions (shared with the rest of ``lossmix.data``):

- images are ``HxWx3`` ``uint8`` **RGB** arrays;
- boxes are ``float32`` arrays ``[N, 4]``, ``(x1, y1, x2, y2)`` in continuous pixel
  coordinates (``0..W``, ``0..H``), expected inside their own image;
- classes are ``int64`` arrays ``[N]`` (0-based); instance weights are ``float32`` ``[N]`` in ``[0, 1]``;
- a *patch* is a tuple of Python ints ``(x1, y1, x2, y2)`` with ``0 <= x1 <= x2 <= W`` and
  ``0 <= y1 <= y2 <= H``; it covers pixel rows ``y1:y2`` and columns ``x1:x2``.

The weight contract (see ``DESIGN.md``) is implemented by :func:`mix_pair`.
"""
from __future__ import annotations

import math
import threading
from typing import Optional, Tuple

import cv2
import numpy as np

from ..structures import as_boxes

Patch = Tuple[int, int, int, int]

MODES = ("none", "uniform", "noise", "lossmix")
METHODS = ("mixup", "cutmix", "saliencymix")
# How a mixed sample's two box sets enter the losses (LOSSMIX.FORMULATION; lossmix.modeling.targets implements them):
# per-instance weights | each anchor / proposal labelled against A and B, lambda L(A) + (1 - lambda) L(B)
FORMULATIONS = ("instance", "interpolate")

__all__ = [
    "MODES",
    "METHODS",
    "SALIENCY_METHODS",
    "PASTE_MODES",
    "Patch",
    "sample_lambda",
    "mixup_images",
    "rand_patch",
    "patch_lambda",
    "saliency_map",
    "fine_grained_map",
    "spectral_residual_map",
    "saliency_patch",
    "box_visible_fraction",
    "clip_boxes_to_patch",
    "paste_patch",
    "resize_to",
    "resize_cover",
    "mix_pair",
]


# --------------------------------------------------------------------------------------------
# lambda
# --------------------------------------------------------------------------------------------
def sample_lambda(alpha: float, rng: np.random.Generator) -> float:
    """Draw the mixing coefficient ``lambda ~ Beta(alpha, alpha)``.

    Args:
        alpha: Beta concentration, ``> 0`` (``alpha=1`` is uniform on ``[0, 1]``; small alpha
            pushes lambda towards 0 or 1).
        rng: the generator to draw from.

    Returns:
        a Python float in ``[0, 1]``.

    Raises:
        ValueError: if ``alpha <= 0`` (or is not finite).
    """
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha <= 0.0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    return float(rng.beta(alpha, alpha))


def _check_lambda(lam: float, name: str = "lam") -> float:
    lam = float(lam)
    if not (0.0 <= lam <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must lie in [0, 1], got {lam}")
    return lam


# --------------------------------------------------------------------------------------------
# mixup (geometry preserved)
# --------------------------------------------------------------------------------------------
def _check_image(img: np.ndarray, name: str) -> None:
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
        shape = getattr(img, "shape", None)
        dtype = getattr(img, "dtype", None)
        raise ValueError(f"{name} must be an HxWx3 uint8 array, got shape {shape} dtype {dtype}")


def _into(dst: np.ndarray, result: np.ndarray) -> None:
    # OpenCV writes into a matching ``dst=`` view; copy only if it chose to allocate instead
    if not np.may_share_memory(dst, result):
        dst[...] = result


def _scale_into(dst: np.ndarray, img: np.ndarray, factor: float) -> None:
    """dst = round(factor * img), saturated (factor >= 0, so convertScaleAbs's abs is a no-op)."""
    if dst.size:
        _into(dst, cv2.convertScaleAbs(img, dst=dst, alpha=factor))


def mixup_images(img_a: np.ndarray, img_b: np.ndarray, lam: float) -> np.ndarray:
    """Geometry-preserving mixup of two RGB images of possibly different sizes.

    Both images are placed top-left on a zero canvas and blended:
    ``out = round(lam * A_padded + (1 - lam) * B_padded)``. The canvas spans the images that
    contribute, i.e. ``max(H) x max(W)`` for ``0 < lam < 1``; with ``lam == 1`` the partner
    contributes nothing and the result is exactly a copy of ``img_a`` (``lam == 0``: of ``img_b``),
    so "mixing with lambda 1" equals "no mixing" bit for bit.

    The result is ``uint8`` (rounded once, saturated), not float32: every image in the data
    pipeline is uint8 RGB, the one rounding costs at most 0.5/255 per pixel, and a uint8 canvas is
    4x smaller to ship from loader workers. Cost: about 0.5 ms for two 600x1000 images on one core.

    Args:
        img_a: ``Ha x Wa x 3`` uint8 RGB.
        img_b: ``Hb x Wb x 3`` uint8 RGB.
        lam: weight of ``img_a`` in ``[0, 1]``.

    Returns:
        ``H x W x 3`` uint8 RGB, a new array.
    """
    _check_image(img_a, "img_a")
    _check_image(img_b, "img_b")
    lam = _check_lambda(lam)
    if lam == 1.0:
        return img_a.copy()
    if lam == 0.0:
        return img_b.copy()
    ha, wa = img_a.shape[:2]
    hb, wb = img_b.shape[:2]
    if (ha, wa) == (hb, wb):
        return cv2.addWeighted(img_a, lam, img_b, 1.0 - lam, 0.0)
    h, w = max(ha, hb), max(wa, wb)
    oh, ow = min(ha, hb), min(wa, wb)
    # write every canvas region once, straight into the canvas (temporaries cost page faults)
    out = np.empty((h, w, 3), dtype=np.uint8)
    _into(out[:oh, :ow], cv2.addWeighted(img_a[:oh, :ow], lam, img_b[:oh, :ow], 1.0 - lam, 0.0,
                                         dst=out[:oh, :ow]))
    wide, wide_f = (img_a, lam) if wa >= wb else (img_b, 1.0 - lam)
    tall, tall_f = (img_a, lam) if ha >= hb else (img_b, 1.0 - lam)
    _scale_into(out[:oh, ow:], wide[:oh, ow:], wide_f)  # right of the overlap
    _scale_into(out[oh:, :ow], tall[oh:, :ow], tall_f)  # below the overlap
    if out[oh:, ow:].size:  # bottom-right corner: the image that contains the other, or padding
        if wide is tall:
            _scale_into(out[oh:, ow:], wide[oh:, ow:], wide_f)
        else:
            out[oh:, ow:] = 0
    return out


# --------------------------------------------------------------------------------------------
# patches (CutMix / SaliencyMix)
# --------------------------------------------------------------------------------------------
def _patch_size(height: int, width: int, lam: float) -> Tuple[int, int]:
    """(cut_h, cut_w) of a patch covering about ``(1 - lam)`` of an ``height x width`` image."""
    cut_rat = math.sqrt(1.0 - lam)
    return int(height * cut_rat), int(width * cut_rat)


def rand_patch(height: int, width: int, lam: float, rng: np.random.Generator) -> Patch:
    """CutMix patch: a box of area about ``(1 - lam) * height * width`` with a uniform centre.

    As timm's ``rand_bbox``: side lengths ``int(H * sqrt(1 - lam))`` x ``int(W * sqrt(1 - lam))``,
    centre drawn uniformly over the integer pixel grid, then clipped to the image (so the area
    can shrink at the borders; use :func:`patch_lambda` for the corrected lambda).

    Args:
        height, width: image size in pixels (``>= 1``).
        lam: target fraction of the image kept from the base image, ``[0, 1]``.
        rng: generator for the centre.

    Returns:
        ``(x1, y1, x2, y2)`` Python ints, ``0 <= x1 <= x2 <= width``, ``0 <= y1 <= y2 <= height``.
    """
    lam = _check_lambda(lam)
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    cut_h, cut_w = _patch_size(height, width, lam)
    cy = int(rng.integers(0, height))
    cx = int(rng.integers(0, width))
    y1 = min(max(cy - cut_h // 2, 0), height)
    x1 = min(max(cx - cut_w // 2, 0), width)
    y2 = min(max(cy - cut_h // 2 + cut_h, 0), height)
    x2 = min(max(cx - cut_w // 2 + cut_w, 0), width)
    return x1, y1, x2, y2


def patch_lambda(patch: Patch, height: int, width: int) -> float:
    """Lambda corrected for the patch actually pasted: ``1 - patch_area / (height * width)``.

    Returns a Python float in ``[0, 1]`` (the fraction of the image still showing the base image).
    """
    x1, y1, x2, y2 = patch
    area = max(x2 - x1, 0) * max(y2 - y1, 0)
    return 1.0 - float(area) / float(height * width)


_SALIENCY = threading.local()  # cv2 saliency objects are not thread-safe: one per thread and kind
SALIENCY_METHODS = ("fine_grained", "spectral_residual")
PASTE_MODES = ("stretch", "keep_aspect")


def _saliency_object(kind: str):
    obj = getattr(_SALIENCY, kind, None)
    if obj is None:
        obj = (cv2.saliency.StaticSaliencyFineGrained_create() if kind == "fine_grained"
               else cv2.saliency.StaticSaliencySpectralResidual_create())
        setattr(_SALIENCY, kind, obj)
    return obj


def spectral_residual_map(gray: np.ndarray) -> np.ndarray:
    """Spectral-residual saliency (Hou & Zhang 2007) of a ``h x w`` uint8 grey image, at that size (float32)."""
    sr = _saliency_object("spectral_residual")
    h, w = gray.shape
    sr.setImageWidth(w)  # work at the given size itself: no second, aspect-distorting resize
    sr.setImageHeight(h)
    ok, sal = sr.computeSaliency(gray)
    if not ok:
        raise RuntimeError("cv2.saliency spectral residual failed")
    return np.asarray(sal, dtype=np.float32)


def fine_grained_map(gray: np.ndarray, pad_fraction: float = 0.25) -> np.ndarray:
    """Montabone & Soto's fine-grained static saliency (OpenCV's, the one SaliencyMix uses) of a ``h x w``
    uint8 grey image (float32, same size).

    The image is reflect-padded by ``pad_fraction`` of its longer side and the map cropped back:
    at small working sizes OpenCV's centre-surround pyramid otherwise puts its maximum on the image
    border (measured on a bright disc on a flat 600x1000 background at 64 px: the peak fell 160 px
    away from the disc without padding, inside it with).
    """
    h, w = gray.shape
    pad = max(1, int(round(pad_fraction * max(h, w))))
    padded = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    ok, sal = _saliency_object("fine_grained").computeSaliency(padded)
    if not ok:
        raise RuntimeError("cv2.saliency fine-grained failed")
    return np.asarray(sal, dtype=np.float32)[pad:pad + h, pad:pad + w]


def saliency_map(img: np.ndarray, max_side: int = 64, method: str = "fine_grained") -> np.ndarray:
    """Saliency of an RGB image on a downscaled copy: :func:`fine_grained_map` or :func:`spectral_residual_map`.

    The image is turned to grey and shrunk by the integer factor
    ``k = ceil(max(H, W) / max_side)`` (area averaging; integer factors take OpenCV's fast path),
    then the saliency runs at that size (64 px is the scale spectral residual was designed for,
    and keeps either method well under the cost of loading the image). The map is min-max
    normalised; a flat image gives all zeros.

    Args:
        img: ``H x W x 3`` uint8 RGB.
        max_side: longest side of the working resolution, ``>= 8``.
        method: one of :data:`SALIENCY_METHODS`.

    Returns:
        float32 map ``[h, w]`` in ``[0, 1]`` at the *downscaled* resolution
        (``h ~ H / k``, ``w ~ W / k``); pixel ``(i, j)`` covers ``img[i*k:(i+1)*k, j*k:(j+1)*k]``
        up to OpenCV's rounding of the output size.
    """
    _check_image(img, "img")
    if method not in SALIENCY_METHODS:
        raise ValueError(f"unknown saliency method {method!r}; expected one of {SALIENCY_METHODS}")
    max_side = int(max_side)
    if max_side < 8:
        raise ValueError(f"max_side must be >= 8, got {max_side}")
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    k = max(1, math.ceil(max(gray.shape) / max_side))
    if k > 1:
        gray = cv2.resize(gray, None, fx=1.0 / k, fy=1.0 / k, interpolation=cv2.INTER_AREA)
    h, w = gray.shape
    sal = fine_grained_map(gray) if method == "fine_grained" else spectral_residual_map(gray)
    lo, hi = float(sal.min()), float(sal.max())
    if not (hi > lo) or not math.isfinite(hi - lo):
        return np.zeros((h, w), dtype=np.float32)
    sal = sal - lo
    sal *= 1.0 / (hi - lo)
    return sal


def saliency_patch(
    img_b: np.ndarray,
    height: int,
    width: int,
    lam: float,
    rng: Optional[np.random.Generator] = None,
    *,
    max_side: int = 64,
    method: str = "fine_grained",
) -> Patch:
    """SaliencyMix patch: CutMix's patch size, centred on the partner's most salient point.

    The patch has CutMix's size (``int(height * sqrt(1 - lam))`` x ``int(width * sqrt(1 - lam))``)
    and is centred on the argmax of :func:`saliency_map` of ``img_b`` (mapped from the
    downscaled map to ``height x width``), then shifted so that it lies entirely inside the image
    (so the corrected lambda equals the area target up to integer rounding).

    Args:
        img_b: the partner, ``Hb x Wb x 3`` uint8 RGB. Normally already resized to
            ``height x width``; otherwise the peak is rescaled to that frame.
        height, width: size of the image the patch is for (the base image), pixels.
        lam: target fraction of the base image kept, ``[0, 1]``.
        rng: breaks ties between equally salient cells (e.g. a flat image) uniformly at random;
            ``None`` takes the first maximum in row-major order.
        max_side: working resolution of the saliency map.
        method: the saliency map, one of :data:`SALIENCY_METHODS`.

    Returns:
        ``(x1, y1, x2, y2)`` Python ints inside ``[0, width] x [0, height]``.
    """
    lam = _check_lambda(lam)
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    cut_h, cut_w = _patch_size(height, width, lam)
    if cut_h == 0 or cut_w == 0:
        return 0, 0, 0, 0
    sal = saliency_map(img_b, max_side=max_side, method=method)
    if rng is None:
        flat_idx = int(np.argmax(sal))
    else:
        peaks = np.flatnonzero(sal == sal.max())
        flat_idx = int(peaks[rng.integers(0, len(peaks))])
    iy, ix = divmod(flat_idx, sal.shape[1])
    # cell centre in the downscaled map -> continuous coordinates of the height x width frame
    cy = (iy + 0.5) * height / sal.shape[0]
    cx = (ix + 0.5) * width / sal.shape[1]
    y1 = int(round(cy - cut_h / 2.0))
    x1 = int(round(cx - cut_w / 2.0))
    y1 = min(max(y1, 0), height - cut_h)
    x1 = min(max(x1, 0), width - cut_w)
    return x1, y1, x1 + cut_w, y1 + cut_h


# --------------------------------------------------------------------------------------------
# boxes vs. patch
# --------------------------------------------------------------------------------------------
def _intersection_fraction(boxes: np.ndarray, patch: Patch) -> Tuple[np.ndarray, np.ndarray]:
    """(clipped boxes float64 [N,4], area(box & patch) / area(box) float64 [N]; 0 for empty boxes)."""
    b = boxes.astype(np.float64)
    px1, py1, px2, py2 = (float(v) for v in patch)
    # clamp both corners into the patch: gives the intersection, or a degenerate box on its edge
    clipped = np.empty_like(b)
    clipped[:, 0] = np.clip(b[:, 0], px1, px2)
    clipped[:, 1] = np.clip(b[:, 1], py1, py2)
    clipped[:, 2] = np.clip(b[:, 2], clipped[:, 0], px2)
    clipped[:, 3] = np.clip(b[:, 3], clipped[:, 1], py2)
    inter = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    area = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    frac = np.zeros(len(b), dtype=np.float64)
    pos = area > 0
    frac[pos] = np.minimum(inter[pos] / area[pos], 1.0)
    return clipped, frac


def _visible_fraction64(boxes: np.ndarray, patch: Patch) -> np.ndarray:
    """float64 [N]: 1 - covered fraction, and 0 for zero-area boxes."""
    _, covered = _intersection_fraction(boxes, patch)
    b = boxes.astype(np.float64)
    area = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    return np.where(area > 0, 1.0 - covered, 0.0)


def box_visible_fraction(boxes: np.ndarray, patch: Patch) -> np.ndarray:
    """Fraction of each box's area NOT covered by the patch: ``1 - area(box & patch) / area(box)``.

    Args:
        boxes: ``[N, 4]`` xyxy pixels (``[0, 4]`` allowed).
        patch: ``(x1, y1, x2, y2)``.

    Returns:
        float32 ``[N]`` in ``[0, 1]``; boxes of zero area get 0 (nothing of them is visible).
    """
    visible = _visible_fraction64(as_boxes(boxes), patch)
    return visible.astype(np.float32)


def clip_boxes_to_patch(boxes: np.ndarray, patch: Patch) -> Tuple[np.ndarray, np.ndarray]:
    """Intersect each box with the patch.

    Args:
        boxes: ``[N, 4]`` xyxy pixels.
        patch: ``(x1, y1, x2, y2)``.

    Returns:
        ``(clipped, kept_fraction)``: float32 ``[N, 4]`` boxes inside the patch (a box missing the
        patch becomes a zero-area box on the patch border) and float32 ``[N]`` in ``[0, 1]``, the
        part of each original box's area that lies in the patch (0 for zero-area boxes).
    """
    boxes = as_boxes(boxes)
    clipped, kept = _intersection_fraction(boxes, patch)
    return clipped.astype(np.float32), kept.astype(np.float32)


def paste_patch(img_a: np.ndarray, img_b: np.ndarray, patch: Patch) -> np.ndarray:
    """Copy ``img_b[y1:y2, x1:x2]`` into a copy of ``img_a``.

    Args:
        img_a, img_b: ``H x W x 3`` uint8 RGB of the same size.
        patch: ``(x1, y1, x2, y2)`` ints inside the image.

    Returns:
        ``H x W x 3`` uint8 RGB, a new array.

    Raises:
        ValueError: if the two images differ in shape or the patch is not inside them.
    """
    if img_a.shape != img_b.shape:
        raise ValueError(f"paste_patch needs images of one size, got {img_a.shape} and {img_b.shape}")
    x1, y1, x2, y2 = (int(v) for v in patch)
    h, w = img_a.shape[:2]
    if not (0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h):
        raise ValueError(f"patch {patch} is not inside a {h}x{w} image")
    out = img_a.copy()
    out[y1:y2, x1:x2] = img_b[y1:y2, x1:x2]
    return out


def resize_to(img: np.ndarray, boxes: np.ndarray, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Resize an image to ``height x width`` (``cv2.INTER_LINEAR``) and scale its boxes with it.

    Used to bring the partner to the base image's size before patch mixing, so one patch
    addresses both. Boxes are scaled per axis by ``width / W`` and ``height / H`` and clipped to
    the new image (float rounding only).

    Returns:
        ``(image, boxes)``: ``height x width x 3`` uint8 and float32 ``[N, 4]``. When the size
        already matches, the input image object itself is returned (not copied).
    """
    boxes = as_boxes(boxes)
    h, w = img.shape[:2]
    height, width = int(height), int(width)
    if (h, w) == (height, width):
        return img, boxes.copy()
    out = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    scale = np.array([width / w, height / h, width / w, height / h], dtype=np.float64)
    scaled = boxes.astype(np.float64) * scale
    scaled[:, 0::2] = np.clip(scaled[:, 0::2], 0.0, width)
    scaled[:, 1::2] = np.clip(scaled[:, 1::2], 0.0, height)
    return out, scaled.astype(np.float32)


def resize_cover(img: np.ndarray, boxes: np.ndarray, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Scale an image by one factor so that it covers ``height x width``, then crop its centre to that size.

    The aspect-preserving alternative to :func:`resize_to`: the factor is
    ``s = max(height / H, width / W)``; the scaled size is ``round(H * s) x round(W * s)`` (at least
    the target) and boxes are scaled by the exact per-axis factors of that resize (equal to ``s`` up
    to the rounding of the size), shifted by the crop offset ``((W' - width) // 2, (H' - height) // 2)``
    and clipped to the crop. A box entirely cropped away keeps zero area (its visible fraction in a
    patch is then 0, so mixing drops it).

    Returns:
        ``(image, boxes)``: ``height x width x 3`` uint8 (a new array unless the size already
        matches) and float32 ``[N, 4]``.
    """
    boxes = as_boxes(boxes)
    h, w = img.shape[:2]
    height, width = int(height), int(width)
    if (h, w) == (height, width):
        return img, boxes.copy()
    s = max(height / h, width / w)
    new_h, new_w = max(height, int(round(h * s))), max(width, int(round(w * s)))
    scaled_img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    oy, ox = (new_h - height) // 2, (new_w - width) // 2
    out = np.ascontiguousarray(scaled_img[oy:oy + height, ox:ox + width])
    scale = np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float64)
    shifted = boxes.astype(np.float64) * scale - np.array([ox, oy, ox, oy], dtype=np.float64)
    shifted[:, 0::2] = np.clip(shifted[:, 0::2], 0.0, width)
    shifted[:, 1::2] = np.clip(shifted[:, 1::2], 0.0, height)
    return out, shifted.astype(np.float32)


# --------------------------------------------------------------------------------------------
# the weight contract
# --------------------------------------------------------------------------------------------
def _read_sample(sample: dict, name: str):
    img = sample["image"]
    _check_image(img, f"{name}['image']")
    boxes = as_boxes(sample["boxes"], f"{name}['boxes']")
    classes = np.asarray(sample["classes"], dtype=np.int64).reshape(-1)
    n = len(boxes)
    if len(classes) != n:
        raise ValueError(f"{name}: {n} boxes but {len(classes)} classes")
    weights = sample.get("weights")
    if weights is None:
        weights = np.ones(n, dtype=np.float32)
    else:
        weights = np.asarray(weights, dtype=np.float32).reshape(-1)
        if len(weights) != n:
            raise ValueError(f"{name}: {n} boxes but {len(weights)} weights")
        if n and not (np.all(weights >= 0.0) and np.all(weights <= 1.0)):
            raise ValueError(f"{name}: weights must lie in [0, 1]")
    return img, boxes, classes, weights


def _result(image, boxes_a, boxes_b, classes_a, classes_b, weights_a, weights_b, keep_a, keep_b, lam, patch):
    n_a, n_b = int(keep_a.sum()), int(keep_b.sum())
    return {
        "image": image,
        "boxes": np.concatenate([boxes_a[keep_a], boxes_b[keep_b]]).astype(np.float32).reshape(-1, 4),
        "classes": np.concatenate([classes_a[keep_a], classes_b[keep_b]]).astype(np.int64),
        "weights": np.concatenate([weights_a[keep_a], weights_b[keep_b]]).astype(np.float32),
        "from_partner": np.concatenate([np.zeros(n_a, dtype=bool), np.ones(n_b, dtype=bool)]),
        "lam": float(lam),
        "patch": patch,
    }


def mix_pair(
    sample_a: dict,
    sample_b: Optional[dict],
    *,
    mode: str,
    method: str,
    lam: Optional[float],
    rng: Optional[np.random.Generator],
    min_visible: float = 0.0,
    noise_weight: Optional[float] = None,
    saliency: str = "fine_grained",
    paste: str = "stretch",
) -> dict:
    """Mix a base sample A with a partner B and weigh every instance per the weight contract.

    Reads from each sample: ``"image"`` (``HxWx3`` uint8 RGB), ``"boxes"`` (float32 ``[N, 4]``
    xyxy pixels inside that image), ``"classes"`` (int64 ``[N]``) and optionally ``"weights"``
    (float32 ``[N]`` in ``[0, 1]``, default ones: the *incoming* weights, e.g. pseudo-label
    confidences). Other keys are ignored; the inputs are not modified.

    Every instance gets a *mixing factor* ``f`` in ``[0, 1]``; its output weight is
    ``incoming * f`` in ``lossmix`` mode and ``incoming`` in the other modes:

    - ``method="mixup"`` (geometry preserved, :func:`mixup_images`): A's instances ``f = lam``,
      B's ``f = 1 - lam``; the canvas is ``max(H) x max(W)`` (just A's size when ``lam == 1``),
      boxes keep their coordinates (both images are top-left aligned).
    - ``method="cutmix"`` / ``"saliencymix"``: B (image and boxes) is brought to A's size
      (``paste="stretch"``: :func:`resize_to`, unequal x / y factors; ``"keep_aspect"``:
      :func:`resize_cover`, one factor then a centre crop), a patch is chosen (:func:`rand_patch`,
      or :func:`saliency_patch` with the ``saliency`` map on the resized B) and B's pixels there
      are pasted into A. A's boxes are kept whole with
      ``f = visible fraction``; B's boxes are clipped to the patch with ``f = kept fraction``.
      ``lam`` is then the corrected :func:`patch_lambda`.

    Dropping rules (the only ones): an instance whose mixing factor is exactly 0 is dropped (it
    is not in the image at all, so ``lam == 1`` mixing returns exactly sample A); with a patch
    method, an instance whose factor is below ``min_visible`` is dropped too (``min_visible`` is
    not used by mixup). Incoming weights are carried as they are, never a reason to drop.

    Modes:
        ``"none"``: A unchanged (image object, boxes, classes, incoming weights), ``lam = 1``.
        ``"lossmix"``: as above, weights = incoming x factor.
        ``"uniform"``: the same pixels, boxes and drops as ``"lossmix"``; weights = incoming.
        ``"noise"``: ``mixup_images(A, B, 1 - noise_weight)`` (the partner blended with weight
        ``noise_weight``), B's instances dropped, A's unchanged with incoming weights,
        ``lam = 1 - noise_weight``; ``method`` and ``lam`` are ignored.

    Args:
        sample_a: the base sample.
        sample_b: the partner sample (its boxes may be empty, e.g. an unlabelled target image);
            not read, and may be ``None``, in ``"none"`` mode.
        mode: one of :data:`MODES`.
        method: one of :data:`METHODS` (ignored by ``"none"`` and ``"noise"``).
        lam: mixing coefficient in ``[0, 1]`` (A's share), e.g. from :func:`sample_lambda`;
            may be ``None`` for ``"none"`` and ``"noise"``.
        rng: generator; needed by ``"cutmix"`` (patch centre), optional for ``"saliencymix"``
            (tie-breaking), unused otherwise.
        min_visible: drop threshold on the mixing factor for patch methods, ``[0, 1]``.
        noise_weight: the partner's pixel weight in ``"noise"`` mode, ``[0, 1]`` (required there).
        saliency: the saliency map of ``"saliencymix"``, one of :data:`SALIENCY_METHODS`.
        paste: how patch methods bring B to A's size, one of :data:`PASTE_MODES`.

    Returns:
        dict with ``"image"`` (``H x W x 3`` uint8 RGB; may be A's own image object in
        ``"none"`` mode, never modify it in place), ``"boxes"`` float32 ``[M, 4]`` (kept A
        instances first, then kept B instances), ``"classes"`` int64 ``[M]``, ``"weights"``
        float32 ``[M]`` in ``[0, 1]``, ``"from_partner"`` bool ``[M]``, ``"lam"`` float (A's
        share of the pixels) and ``"patch"`` (the ``(x1, y1, x2, y2)`` used by patch methods,
        else ``None``).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mixing mode {mode!r}; expected one of {MODES}")
    img_a, boxes_a, classes_a, weights_a = _read_sample(sample_a, "sample_a")
    empty = np.zeros(0, dtype=bool)
    if mode == "none":
        keep_a = np.ones(len(boxes_a), dtype=bool)
        return _result(img_a, boxes_a, boxes_a[:0], classes_a, classes_a[:0], weights_a,
                       weights_a[:0], keep_a, empty, 1.0, None)

    img_b, boxes_b, classes_b, weights_b = _read_sample(sample_b, "sample_b")
    keep_b_none = np.zeros(len(boxes_b), dtype=bool)
    if mode == "noise":
        if noise_weight is None:
            raise ValueError("mode 'noise' needs noise_weight")
        w = _check_lambda(noise_weight, "noise_weight")
        image = mixup_images(img_a, img_b, 1.0 - w)
        keep_a = np.ones(len(boxes_a), dtype=bool)
        return _result(image, boxes_a, boxes_b, classes_a, classes_b, weights_a, weights_b,
                       keep_a, keep_b_none, 1.0 - w, None)

    if method not in METHODS:
        raise ValueError(f"unknown mixing method {method!r}; expected one of {METHODS}")
    if lam is None:
        raise ValueError(f"mode {mode!r} needs lam")
    lam = _check_lambda(lam)
    min_visible = _check_lambda(min_visible, "min_visible")

    patch = None
    if method == "mixup":
        image = mixup_images(img_a, img_b, lam)
        factor_a = np.full(len(boxes_a), lam, dtype=np.float64)
        factor_b = np.full(len(boxes_b), 1.0 - lam, dtype=np.float64)
        keep_a, keep_b = factor_a > 0.0, factor_b > 0.0
    else:
        if paste not in PASTE_MODES:
            raise ValueError(f"unknown paste {paste!r}; expected one of {PASTE_MODES}")
        h, w = img_a.shape[:2]
        img_b, boxes_b = (resize_to if paste == "stretch" else resize_cover)(img_b, boxes_b, h, w)
        if method == "cutmix":
            if rng is None:
                raise ValueError("method 'cutmix' needs rng")
            patch = rand_patch(h, w, lam, rng)
        else:
            patch = saliency_patch(img_b, h, w, lam, rng, method=saliency)
        image = paste_patch(img_a, img_b, patch)
        lam = patch_lambda(patch, h, w)
        factor_a = _visible_fraction64(boxes_a, patch)
        clipped_b, factor_b = _intersection_fraction(boxes_b, patch)
        boxes_b = clipped_b.astype(np.float32)
        keep_a = (factor_a > 0.0) & (factor_a >= min_visible)
        keep_b = (factor_b > 0.0) & (factor_b >= min_visible)

    if mode == "lossmix":
        weights_a = (weights_a * factor_a).astype(np.float32)
        weights_b = (weights_b * factor_b).astype(np.float32)
    return _result(image, boxes_a, boxes_b, classes_a, classes_b, weights_a, weights_b,
                   keep_a, keep_b, lam, patch)
