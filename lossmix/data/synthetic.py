"""Generator of the embedded domain-shift detection benchmark, written in VOC format.

Six bold shape classes are drawn in three styles that share the classes but not the look:

* ``source`` (labelled, "photo-like"): textured, shaded objects with soft drop shadows on
  smooth-noise backgrounds with out-of-focus clutter; **each class has a typical hue**, so a
  model trained here can lean on colour and texture as well as shape.
* ``clipart``: flat saturated fills picked from a palette *independently of the class*,
  thick dark outlines, flat one- or two-tone backgrounds.
* ``watercolor``: paper texture, pale low-saturation washes (again independent of the
  class) with blurred, bleeding, edge-darkened borders.

Only the shape identifies the class in every domain, so the gap is real (colour cues break)
but adaptable (the shapes transfer).

Layout on disk, per domain (``root/<domain>/``)::

    Annotations/<id>.xml        standard VOC XML, boxes 1-based inclusive integer pixels
    JPEGImages/<id>.jpg         RGB content (cv2 writes it; JPEG quality ``JPEG_QUALITY``)
    ImageSets/Main/train.txt    ids, one per line
    ImageSets/Main/test.txt
    .synthetic.json             stamp: the parameters the folder was generated with

Ids are ``<domain>_<split>_<index:05d>`` so they stay unique when domains are mixed.

Determinism: every image draws from its own ``numpy.random.Generator`` seeded by
``(seed, domain, split, index)``, so the bytes of an image do not depend on the order of
generation or on how many images are asked for (``num_train=10`` yields the first 10 images
of ``num_train=600``). Same seed and same library versions give byte-identical files.

Box convention: a box covers the *visible* pixels of the object's footprint (VOC's rule),
i.e. after occlusion by objects drawn later and clipping at the image border; in the XML
``xmin = first_column + 1`` and ``xmax = last_column + 1``. In :func:`render_sample`'s
in-memory annotations the same box is ``[x1, y1, x2, y2]`` with exclusive ``x2, y2``
(detectron2's ``XYXY_ABS``), so ``x1 = xmin - 1`` and ``x2 = xmax``.
"""
from __future__ import annotations

import colorsys
import functools
import json
import os
import shutil
import time
import xml.etree.ElementTree as ET
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..structures import BoxMode

SYNTHETIC_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
SYNTHETIC_DOMAINS = ("source", "clipart", "watercolor")
SPLITS = ("train", "test")

# Bump whenever the pixels or annotations produced for a given seed change: stamps then
# stop matching and stale folders are regenerated instead of being taken for current ones.
GENERATOR_VERSION = 3
STAMP_NAME = ".synthetic.json"
JPEG_QUALITY = 95

# --- layout (shared by every domain) ---------------------------------------------------
OBJECTS_PER_IMAGE = (2, 6)  # inclusive range
OBJECT_SIZE_RANGE = (0.10, 0.45)  # object extent as a fraction of the image's shorter side, log-uniform
MAX_ROTATION_DEG = 15.0  # small, so a square never turns into a diamond
MAX_LOG_ASPECT = 0.15  # anisotropic stretch: aspect in [e^-0.15, e^0.15] ~ [0.86, 1.16]
MAX_TRUNCATION = 0.15  # at most this fraction of an object's extent may leave the image, per side
MIN_VISIBLE_FRACTION = 0.2  # placements leaving an earlier object less visible than this are redrawn
DIFFICULT_BELOW_VISIBLE = 0.3  # objects more than 70% occluded are marked difficult
PLACEMENT_TRIES = 20  # redraws of one object's geometry before the object is dropped
NON_SQUARE_SIDE_RATIO = 1.25  # a non-square image's longer side, relative to ``image_size``

# --- source style ----------------------------------------------------------------------
# Typical hue (degrees) per class: 60 degrees apart, so hue alone nearly identifies a class.
SOURCE_CLASS_HUE_DEG = {"circle": 0.0, "square": 55.0, "triangle": 120.0,
                        "star": 185.0, "cross": 235.0, "ring": 295.0}
SOURCE_HUE_JITTER_DEG = 8.0  # std of the per-object hue jitter around the class hue
# Probability that a source object takes its class's typical hue; the others take a uniformly random
# hue. The "colour cue" knob: at 1 hue gives the class away, at 1/6 it carries no information beyond
# chance, so shape must be learnt. Overridable per call (``class_hue_prob``); recorded in the stamp.
SOURCE_CLASS_HUE_PROB = 0.5  # calibrated: docs/benchmark.md
SOURCE_GRAIN = 0.02  # std of the per-pixel sensor noise (intensity in [0, 1])

# --- clipart style ---------------------------------------------------------------------
CLIPART_PALETTE_HUES_DEG = tuple(range(0, 360, 30))  # 12 saturated hues, any class any hue
CLIPART_OUTLINE_FRACTION = 0.06  # outline thickness relative to the object's extent ...
CLIPART_OUTLINE_PX = (2, 5)  # ... clipped to this range (pixels)

# --- watercolor style ------------------------------------------------------------------
WATERCOLOR_BLEED_SIGMA = (1.2, 3.0)  # Gaussian blur of a wash's edge (pixels)
WATERCOLOR_SATURATION = (0.25, 0.6)  # washed out, but never so pale that a wash vanishes into the paper
WATERCOLOR_VALUE = (0.45, 0.85)
WATERCOLOR_PENCIL_PROB = 0.3  # faint graphite outline under some washes
WATERCOLOR_PAPER_TONE = 0.95  # brightness of the paper showing through a wash


# ======================================================================================
# Geometry
# ======================================================================================


def _polygon_circle(radius: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _unit_shapes() -> dict:
    """Class -> (outer contour, hole contours), in unit coordinates inside [-1, 1]^2."""
    star_t = -np.pi / 2 + np.arange(10) * np.pi / 5
    star_r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    a = 0.32  # half-width of the cross's arms
    cross = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1),
             (-a, a), (-1, a), (-1, -a), (-a, -a)]
    shapes = {
        "circle": (_polygon_circle(1.0), []),
        "square": (np.array([(-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)]), []),
        "triangle": (np.array([(0.0, -1.0), (1.0, 0.75), (-1.0, 0.75)]), []),
        "star": (np.stack([star_r * np.cos(star_t), star_r * np.sin(star_t)], axis=1), []),
        "cross": (np.array(cross, dtype=np.float64), []),
        "ring": (_polygon_circle(1.0), [_polygon_circle(0.55)]),
    }
    assert set(shapes) == set(SYNTHETIC_CLASSES)
    return shapes


_UNIT_SHAPES = _unit_shapes()
_SUBPIXEL_SHIFT = 4  # cv2 drawing with 1/16-pixel vertex precision
_SUBPIXEL = 1 << _SUBPIXEL_SHIFT


def _to_cv_points(points: np.ndarray) -> np.ndarray:
    # cv2 treats integer vertices as pixel centres; our geometry uses pixel centres too.
    return np.round(points * _SUBPIXEL).astype(np.int32).reshape(-1, 1, 2)


def _fill(mask: np.ndarray, outer: np.ndarray, holes: Sequence[np.ndarray]) -> None:
    cv2.fillPoly(mask, [_to_cv_points(outer)], 255, cv2.LINE_AA, _SUBPIXEL_SHIFT)
    for hole in holes:
        cv2.fillPoly(mask, [_to_cv_points(hole)], 0, cv2.LINE_AA, _SUBPIXEL_SHIFT)


def _stroke(mask: np.ndarray, contours: Sequence[np.ndarray], thickness: int) -> None:
    cv2.polylines(mask, [_to_cv_points(c) for c in contours], True, 255, thickness,
                  cv2.LINE_AA, _SUBPIXEL_SHIFT)


@dataclass
class _Shape:
    """One placed object: its geometry in pixel coordinates and its footprint."""

    class_index: int
    outer: np.ndarray  # (N, 2) x, y
    holes: list
    extent: float  # size of the unit box in pixels (before rotation)
    outline_px: int  # stroke width that belongs to the footprint (clipart outlines), 0 if none
    alpha: np.ndarray  # (H, W) uint8 anti-aliased footprint
    footprint: np.ndarray  # (H, W) bool, alpha >= 128
    area: int  # footprint pixels inside the image
    truncated: bool

    @property
    def contours(self) -> list:
        return [self.outer, *self.holes]


def _outline_px(domain: str, extent: float) -> int:
    if domain != "clipart":
        return 0
    lo, hi = CLIPART_OUTLINE_PX
    return int(np.clip(round(extent * CLIPART_OUTLINE_FRACTION), lo, hi))


def _draw_geometry(rng: np.random.Generator, class_index: int, height: int, width: int, domain: str):
    """Random size / rotation / stretch / position for one object; returns its contours."""
    side = min(height, width)
    lo, hi = np.log(OBJECT_SIZE_RANGE[0]), np.log(OBJECT_SIZE_RANGE[1])
    extent = float(np.exp(rng.uniform(lo, hi)) * side)
    aspect = float(np.exp(rng.uniform(-MAX_LOG_ASPECT, MAX_LOG_ASPECT)))
    theta = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    scale = np.array([aspect, 1.0 / aspect]) * (extent / 2.0)
    outer_u, holes_u = _UNIT_SHAPES[SYNTHETIC_CLASSES[class_index]]

    def transform(points):
        return (points * scale) @ rot.T

    outer, holes = transform(outer_u), [transform(h) for h in holes_u]
    outline = _outline_px(domain, extent)
    half_stroke = outline / 2.0
    (x0, y0), (x1, y1) = outer.min(0) - half_stroke, outer.max(0) + half_stroke
    w, h = x1 - x0, y1 - y0
    # Centre range that keeps at most MAX_TRUNCATION of the extent outside, per side.
    cx = rng.uniform(-x0 - MAX_TRUNCATION * w, (width - 1) - x1 + MAX_TRUNCATION * w)
    cy = rng.uniform(-y0 - MAX_TRUNCATION * h, (height - 1) - y1 + MAX_TRUNCATION * h)
    centre = np.array([cx, cy])
    # Pixel centres are integers, so the image spans [-0.5, size - 0.5].
    truncated = bool(cx + x0 < -0.5 or cy + y0 < -0.5 or cx + x1 > width - 0.5 or cy + y1 > height - 0.5)
    return outer + centre, [hh + centre for hh in holes], extent, outline, truncated


def _layout(rng: np.random.Generator, height: int, width: int, domain: str) -> list:
    """Objects in drawing order; later ones occlude earlier ones, never below MIN_VISIBLE_FRACTION."""
    num = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    shapes: list = []
    visible: list = []
    for _ in range(num):
        class_index = int(rng.integers(len(SYNTHETIC_CLASSES)))
        for _try in range(PLACEMENT_TRIES):
            outer, holes, extent, outline, truncated = _draw_geometry(rng, class_index, height, width, domain)
            alpha = np.zeros((height, width), np.uint8)
            _fill(alpha, outer, holes)
            if outline:
                _stroke(alpha, [outer, *holes], outline)
            footprint = alpha >= 128
            area = int(np.count_nonzero(footprint))
            if area == 0:
                continue
            remaining = [v & ~footprint for v in visible]
            if all(np.count_nonzero(r) >= MIN_VISIBLE_FRACTION * s.area for r, s in zip(remaining, shapes)):
                visible = remaining + [footprint]
                shapes.append(_Shape(class_index, outer, holes, extent, outline, alpha, footprint, area, truncated))
                break
    return shapes


# ======================================================================================
# Pixels: helpers
# ======================================================================================
# The canvas is planar float32 RGB, (3, H, W) in [0, 1]: colours (3, 1, 1) and alphas (h, w)
# then broadcast over leading axes, which numpy does ~10x faster than over a trailing axis of 3.
# Painting works on windows (crops) around each element; the canvas outside is untouched.


def _hsv(hue_deg: float, sat: float, val: float) -> np.ndarray:
    """A colour as (3, 1, 1) float32 RGB."""
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, sat, val), np.float32).reshape(3, 1, 1)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Value noise in about [-1, 1] with features ``cell`` pixels across, (H, W) float32."""
    gh, gw = max(2, int(np.ceil(height / cell)) + 1), max(2, int(np.ceil(width / cell)) + 1)
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _grain(rng: np.random.Generator, height: int, width: int, std: float) -> np.ndarray:
    """Per-pixel noise with standard deviation ``std``, (H, W) float32 (uniform: cheaper than normal)."""
    half_width = np.float32(std * np.sqrt(3.0))
    return (rng.random((height, width), dtype=np.float32) - np.float32(0.5)) * (2 * half_width)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (h, w) map or, plane by plane, of a (3, h, w) canvas."""
    if sigma <= 0:
        return img
    if img.ndim == 3:
        return np.stack([_blur(plane, sigma) for plane in img])
    return cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _shift(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate an (h, w) map by whole pixels, filling with zeros."""
    out = np.zeros_like(img)
    h, w = img.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = img[ys, xs]
    return out


def _composite(canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """In place: canvas = canvas * (1 - alpha) + colour * alpha.

    canvas (3, h, w); colour (3, 1, 1) or (3, h, w); alpha (h, w) in [0, 1].
    """
    canvas += (colour - canvas) * alpha


class _Window:
    """A crop of the canvas around some points, ``margin`` pixels wider on each side."""

    def __init__(self, points: np.ndarray, margin: float, height: int, width: int):
        (x0, y0), (x1, y1) = points.min(0) - margin, points.max(0) + margin
        self.x0, self.y0 = int(np.clip(np.floor(x0), 0, width - 1)), int(np.clip(np.floor(y0), 0, height - 1))
        self.x1 = int(np.clip(np.ceil(x1) + 1, self.x0 + 1, width))
        self.y1 = int(np.clip(np.ceil(y1) + 1, self.y0 + 1, height))
        self.yx = (slice(self.y0, self.y1), slice(self.x0, self.x1))  # for (H, W) maps
        self.planes = (slice(None), *self.yx)  # for the (3, H, W) canvas
        self.shape = (self.y1 - self.y0, self.x1 - self.x0)
        self.origin = np.array([self.x0, self.y0], np.float64)

    @classmethod
    def whole(cls, height: int, width: int) -> "_Window":
        return cls(np.array([[0.0, 0.0], [width - 1.0, height - 1.0]]), 0, height, width)

    def mask(self) -> np.ndarray:
        return np.zeros(self.shape, np.uint8)

    def local(self, points: np.ndarray) -> np.ndarray:
        return points - self.origin

    def ramp(self, angle: float, centre: np.ndarray, length: float) -> np.ndarray:
        """Linear ramp along ``angle``: 0 at ``centre`` (canvas coords), +-0.5 at +-length/2."""
        cx, cy = self.local(centre)
        xs = (np.arange(self.shape[1], dtype=np.float32) - np.float32(cx)) * np.float32(np.cos(angle))
        ys = (np.arange(self.shape[0], dtype=np.float32) - np.float32(cy)) * np.float32(np.sin(angle))
        return (ys[:, None] + xs[None, :]) * np.float32(1.0 / max(length, 1.0))


def _as_alpha(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.float32) * np.float32(1.0 / 255.0)


def _blob(rng: np.random.Generator, centre: np.ndarray, radius: float) -> np.ndarray:
    """An irregular, lumpy polygon (clutter): never one of the classes' shapes."""
    t = np.sort(rng.uniform(0.0, 2.0 * np.pi, 24))
    r = np.ones_like(t)
    for k in (2, 3, 4):
        r += rng.uniform(0.12, 0.3) * np.cos(k * t + rng.uniform(0.0, 2.0 * np.pi))
    squash = rng.uniform(0.35, 1.0)
    pts = np.stack([r * np.cos(t), squash * r * np.sin(t)], axis=1) * radius
    phi = rng.uniform(0.0, np.pi)
    rot = np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])
    return pts @ rot.T + centre


def _random_centre(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return np.array([rng.uniform(0, width - 1), rng.uniform(0, height - 1)])


def _flat_canvas(colour: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.broadcast_to(colour, (3, height, width)).copy()


# ======================================================================================
# Pixels: source ("photo-like")
# ======================================================================================


def _source_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    hue = rng.uniform(0.0, 360.0)
    c1 = _hsv(hue, rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.95))
    c2 = _hsv(hue + rng.uniform(-40.0, 40.0), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.95))
    side = min(height, width)
    t = 0.5 + 0.35 * _smooth_noise(rng, height, width, side * rng.uniform(0.25, 0.6))
    t += 0.12 * _smooth_noise(rng, height, width, side * 0.06)
    canvas = c1 + (c2 - c1) * t
    # Out-of-focus clutter: lumpy blobs and twigs, drawn behind the objects.
    for _ in range(int(rng.integers(2, 7))):
        sigma = rng.uniform(0.8, 2.5)
        if rng.random() < 0.7:
            pts = _blob(rng, _random_centre(rng, height, width), side * rng.uniform(0.04, 0.16))
            win = _Window(pts, 3 * sigma + 2, height, width)
            mask = win.mask()
            cv2.fillPoly(mask, [_to_cv_points(win.local(pts))], 255, cv2.LINE_AA, _SUBPIXEL_SHIFT)
        else:
            pts = np.stack([_random_centre(rng, height, width), _random_centre(rng, height, width)])
            thickness = int(rng.integers(1, 4))
            win = _Window(pts, 3 * sigma + thickness + 2, height, width)
            mask = win.mask()
            cv2.polylines(mask, [_to_cv_points(win.local(pts))], False, 255, thickness, cv2.LINE_AA, _SUBPIXEL_SHIFT)
        alpha = _blur(_as_alpha(mask), sigma) * np.float32(rng.uniform(0.5, 0.9))
        colour = _hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.45), rng.uniform(0.25, 0.9))
        shade = 1.0 + 0.15 * _smooth_noise(rng, *win.shape, side * 0.05)
        _composite(canvas[win.planes], colour * shade, alpha)
    # Lighting falloff across the scene.
    light = _Window.whole(height, width).ramp(rng.uniform(0, 2 * np.pi), np.array([width / 2, height / 2]),
                                              max(height, width))
    canvas *= 1.0 + np.float32(rng.uniform(0.0, 0.4)) * light
    return canvas


def _source_object(rng: np.random.Generator, canvas: np.ndarray, shape: _Shape, light_angle: float, *,
                   class_hue_prob: float = SOURCE_CLASS_HUE_PROB) -> None:
    name = SYNTHETIC_CLASSES[shape.class_index]
    hue = SOURCE_CLASS_HUE_DEG[name] + rng.normal(0.0, SOURCE_HUE_JITTER_DEG)
    if rng.random() >= class_hue_prob:
        hue = rng.uniform(0.0, 360.0)
    colour = _hsv(hue, rng.uniform(0.4, 0.9), rng.uniform(0.45, 0.95))
    offset = max(2.0, 0.06 * shape.extent)
    shadow_sigma = max(1.5, 0.05 * shape.extent)
    win = _Window(shape.outer, offset + 3 * shadow_sigma + 2, *canvas.shape[1:])
    view = canvas[win.planes]
    alpha = _blur(_as_alpha(shape.alpha[win.yx]), 0.6)
    # Soft drop shadow away from the light.
    dx, dy = int(round(-offset * np.cos(light_angle))), int(round(-offset * np.sin(light_angle)))
    view *= 1.0 - 0.45 * _blur(_shift(alpha, dx, dy), shadow_sigma)
    # Texture: noise, stripes or a strong gradient; always some lighting across the object.
    centre = shape.outer.mean(0)
    shading = 1.0 + 0.35 * win.ramp(light_angle + np.pi, centre, shape.extent)
    kind = rng.integers(3)
    if kind == 0:
        shading *= 1.0 + 0.22 * _smooth_noise(rng, *win.shape, rng.uniform(3.0, 8.0))
    elif kind == 1:
        period = rng.uniform(5.0, 12.0)
        distance = win.ramp(rng.uniform(0, np.pi), centre, 1.0)  # signed distance in pixels
        shading *= 1.0 + 0.2 * np.sin(np.float32(2 * np.pi / period) * distance)
    else:
        shading *= 1.0 + 0.5 * win.ramp(rng.uniform(0, 2 * np.pi), centre, shape.extent)
    _composite(view, colour * shading, alpha)


def _source_finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    canvas = _blur(canvas, rng.uniform(0.3, 0.7))
    canvas += _grain(rng, *canvas.shape[1:], SOURCE_GRAIN)  # luminance grain
    return canvas


# ======================================================================================
# Pixels: clipart
# ======================================================================================


def _clipart_fill(rng: np.random.Generator) -> np.ndarray:
    hue = CLIPART_PALETTE_HUES_DEG[int(rng.integers(len(CLIPART_PALETTE_HUES_DEG)))]
    return _hsv(hue, rng.choice([0.85, 1.0]), rng.choice([0.85, 1.0]))


def _clipart_ink(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.uniform(0, 360), 0.3, rng.uniform(0.05, 0.2))


def _clipart_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    def flat():  # pale or mid flat colours, any hue
        return _hsv(rng.uniform(0, 360), rng.uniform(0.1, 0.6), rng.uniform(0.7, 1.0))

    canvas = _flat_canvas(flat(), height, width)
    if rng.random() < 0.6:  # two-tone: a straight, slightly tilted horizon
        y = rng.uniform(0.4, 0.8) * height
        tilt = rng.uniform(-0.25, 0.25) * width
        mask = np.zeros((height, width), np.uint8)
        ground = np.array([(-1, y - tilt / 2), (width, y + tilt / 2), (width, height), (-1, height)])
        cv2.fillPoly(mask, [_to_cv_points(ground)], 255, cv2.LINE_AA, _SUBPIXEL_SHIFT)
        _composite(canvas, flat(), _as_alpha(mask))
    side = min(height, width)
    for _ in range(int(rng.integers(0, 4))):  # flat outlined clutter
        pts = _blob(rng, _random_centre(rng, height, width), side * rng.uniform(0.04, 0.14))
        win = _Window(pts, 3, height, width)
        local = win.local(pts)
        mask = win.mask()
        cv2.fillPoly(mask, [_to_cv_points(local)], 255, cv2.LINE_AA, _SUBPIXEL_SHIFT)
        _composite(canvas[win.planes], flat(), _as_alpha(mask))
        mask[:] = 0
        _stroke(mask, [local], 2)
        _composite(canvas[win.planes], _clipart_ink(rng), _as_alpha(mask))
    return canvas


def _clipart_object(rng: np.random.Generator, canvas: np.ndarray, shape: _Shape, light_angle: float) -> None:
    colour = _clipart_fill(rng)
    win = _Window(shape.outer, shape.outline_px + 2, *canvas.shape[1:])
    view = canvas[win.planes]
    fill = win.mask()
    _fill(fill, win.local(shape.outer), [win.local(h) for h in shape.holes])
    fill_alpha = _as_alpha(fill)
    _composite(view, colour, fill_alpha)
    if rng.random() < 0.35:  # cel shading: one flat darker tone on the side away from the light
        lit = win.ramp(light_angle + np.pi, shape.outer.mean(0), 1.0) > 0
        _composite(view, colour * np.float32(0.72), fill_alpha * lit)
    ink = win.mask()
    _stroke(ink, [win.local(c) for c in shape.contours], shape.outline_px)
    _composite(view, _clipart_ink(rng), _as_alpha(ink))


def _clipart_finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    return canvas


# ======================================================================================
# Pixels: watercolor
# ======================================================================================


def _watercolor_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    side = min(height, width)
    paper = _hsv(rng.uniform(30, 55), rng.uniform(0.03, 0.12), rng.uniform(0.85, 0.97))
    grain = _blur(_grain(rng, height, width, 0.06), 0.7)
    fibre = 0.03 * _smooth_noise(rng, height, width, side * 0.08)
    canvas = paper * (1.0 + grain + fibre)
    # Loose background washes: large, very soft, pale.
    for _ in range(int(rng.integers(1, 4))):
        pts = _blob(rng, _random_centre(rng, height, width), side * rng.uniform(0.15, 0.4))
        sigma = side * rng.uniform(0.03, 0.07)
        win = _Window(pts, 3 * sigma, height, width)
        mask = win.mask()
        cv2.fillPoly(mask, [_to_cv_points(win.local(pts))], 255, cv2.LINE_AA, _SUBPIXEL_SHIFT)
        density = _blur(_as_alpha(mask), sigma) * np.float32(rng.uniform(0.3, 0.6))
        tint = _hsv(rng.uniform(0, 360), rng.uniform(0.15, 0.4), 1.0)
        canvas[win.planes] *= 1.0 - density * (1.0 - tint)
    return canvas


def _watercolor_object(rng: np.random.Generator, canvas: np.ndarray, shape: _Shape, light_angle: float) -> None:
    side = min(canvas.shape[1:])
    bleed = rng.uniform(*WATERCOLOR_BLEED_SIGMA)
    win = _Window(shape.outer, 3 * bleed + 6, *canvas.shape[1:])
    view = canvas[win.planes]
    if rng.random() < WATERCOLOR_PENCIL_PROB:
        pencil = win.mask()
        _stroke(pencil, [win.local(c) for c in shape.contours], 1)
        view *= 1.0 - 0.3 * _as_alpha(pencil)
    pigment = _hsv(rng.uniform(0, 360), rng.uniform(*WATERCOLOR_SATURATION), rng.uniform(*WATERCOLOR_VALUE))
    # Wash slightly off the drawn shape, edges bled and wobbly.
    dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
    wash = _blur(_shift(_as_alpha(shape.alpha[win.yx]), dx, dy), bleed)
    wobble = _smooth_noise(rng, *win.shape, side * 0.04)
    wash = np.clip(wash + 1.4 * wobble * wash * (1.0 - wash), 0.0, 1.0)
    # Pigment pools at the edges (darker rim) and granulates inside.
    rim = np.clip(wash - _blur(wash, 3.0), 0.0, 1.0)
    granulation = 1.0 + 0.15 * _smooth_noise(rng, *win.shape, 2.5)
    density = np.clip(wash * np.float32(rng.uniform(0.85, 1.0)) * granulation + 1.2 * rim, 0.0, 1.0)
    # Mostly opaque over earlier washes, so occlusion means what the boxes say.
    paint = pigment * np.float32(WATERCOLOR_PAPER_TONE) * (1.0 - 0.25 * rim)
    _composite(view, paint, density)


def _watercolor_finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    return _blur(canvas, 0.6)


# domain -> (background(rng, H, W) -> (3, H, W) canvas, object(rng, canvas, shape, light_angle) painting
# in place, finish(rng, canvas) -> canvas). Every painter draws only from the image's own generator.
_STYLES = {
    "source": (_source_background, _source_object, _source_finish),
    "clipart": (_clipart_background, _clipart_object, _clipart_finish),
    "watercolor": (_watercolor_background, _watercolor_object, _watercolor_finish),
}
assert set(_STYLES) == set(SYNTHETIC_DOMAINS)


# ======================================================================================
# One sample
# ======================================================================================


def _image_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    # crc32, not hash(): str hashes are salted per process.
    key = [int(seed), zlib.crc32(domain.encode()), SPLITS.index(split), int(index)]
    return np.random.default_rng(np.random.SeedSequence(key))


def _image_shape(rng: np.random.Generator, image_size) -> tuple:
    if not isinstance(image_size, int):
        return image_size
    long_side = int(round(image_size * NON_SQUARE_SIDE_RATIO / 8.0)) * 8
    u = rng.random()
    if u < 0.5:
        return image_size, image_size
    return (image_size, long_side) if u < 0.75 else (long_side, image_size)


def render_sample(domain: str, *, seed: int = 0, split: str = "train", index: int = 0,
                  image_size=256, class_hue_prob: float = SOURCE_CLASS_HUE_PROB) -> tuple:
    """Render one image of the benchmark in memory, exactly as :func:`generate` writes it.

    Returns ``(image, annotations)``: ``image`` is (H, W, 3) uint8 **RGB**; each annotation is
    ``{"bbox": [x1, y1, x2, y2] (floats, XYXY_ABS, exclusive x2/y2), "bbox_mode": BoxMode.XYXY_ABS,
    "category_id": int (0-based into SYNTHETIC_CLASSES), "difficult": 0|1, "truncated": 0|1,
    "visible_fraction": float in (0, 1]}`` in drawing order.
    ``image_size``: shorter side (int; half the images are square, the rest have a longer side
    of ``NON_SQUARE_SIDE_RATIO`` times it, landscape or portrait) or a fixed ``(height, width)``.
    ``class_hue_prob``: source domain only, the probability that an object takes its class's hue
    (``SOURCE_CLASS_HUE_PROB``); the other domains ignore it.
    """
    if domain not in _STYLES:
        raise ValueError(f"unknown synthetic domain {domain!r}; known: {SYNTHETIC_DOMAINS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    rng = _image_rng(seed, domain, split, index)
    height, width = _image_shape(rng, _check_image_size(image_size))
    paint_background, paint_object, finish = _STYLES[domain]
    if domain == "source":
        paint_object = functools.partial(paint_object, class_hue_prob=_check_prob("class_hue_prob", class_hue_prob))
    shapes = _layout(rng, height, width, domain)
    light_angle = rng.uniform(0.0, 2.0 * np.pi)
    canvas = np.ascontiguousarray(paint_background(rng, height, width), np.float32)
    for shape in shapes:
        paint_object(rng, canvas, shape, light_angle)
    canvas = np.maximum(finish(rng, canvas), 0.0)  # convertScaleAbs would fold negatives up
    planes = cv2.convertScaleAbs(canvas.reshape(3 * height, width), alpha=255.0).reshape(3, height, width)
    image = cv2.merge(list(planes))  # rounds and saturates to uint8, (H, W, 3) RGB

    annotations = []
    covered = np.zeros((height, width), bool)
    for shape in reversed(shapes):  # later shapes are on top
        visible = shape.footprint & ~covered
        covered |= shape.footprint
        cols, rows = np.flatnonzero(visible.any(0)), np.flatnonzero(visible.any(1))
        fraction = np.count_nonzero(visible) / shape.area
        annotations.append({
            "bbox": [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)],
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": shape.class_index,
            "difficult": int(fraction < DIFFICULT_BELOW_VISIBLE),
            "truncated": int(shape.truncated),
            "visible_fraction": fraction,
        })
    return image, annotations[::-1]


# ======================================================================================
# Writing VOC folders
# ======================================================================================


def _voc_xml(domain: str, image_id: str, height: int, width: int, annotations: list) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = domain
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "lossmix synthetic"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for ann in annotations:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = SYNTHETIC_CLASSES[ann["category_id"]]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(ann["truncated"])
        ET.SubElement(obj, "difficult").text = str(ann["difficult"])
        box = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = ann["bbox"]
        # 1-based inclusive: first pixel column c -> c + 1, exclusive end e -> last column e - 1 -> e.
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box, tag).text = str(int(value))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def _stamp(domain: str, seed: int, num_train: int, num_test: int, image_size, class_hue_prob: float) -> dict:
    stamp = {
        "generator": "lossmix.data.synthetic",
        "version": GENERATOR_VERSION,
        "domain": domain,
        "seed": seed,
        "num_train": num_train,
        "num_test": num_test,
        "image_size": _jsonable(image_size),
        "classes": list(SYNTHETIC_CLASSES),
    }
    if domain == "source":
        stamp["class_hue_prob"] = class_hue_prob
    return stamp


def _jsonable(image_size):
    return image_size if isinstance(image_size, int) else list(image_size)


def read_stamp(domain_dir) -> dict | None:
    """The parameters a generated domain folder was written with, or None if it has no stamp."""
    path = Path(domain_dir) / STAMP_NAME
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _image_id(domain: str, split: str, index: int) -> str:
    return f"{domain}_{split}_{index:05d}"


def _write_images(directory: str, domain: str, seed: int, split: str, start: int, stop: int,
                  image_size, class_hue_prob: float = SOURCE_CLASS_HUE_PROB) -> int:
    """Write images ``start:stop`` of one split into a domain folder; returns the number of objects."""
    directory = Path(directory)
    num_objects = 0
    for index in range(start, stop):
        image_id = _image_id(domain, split, index)
        image, annotations = render_sample(domain, seed=seed, split=split, index=index, image_size=image_size,
                                           class_hue_prob=class_hue_prob)
        height, width = image.shape[:2]
        jpg = directory / "JPEGImages" / f"{image_id}.jpg"
        if not cv2.imwrite(str(jpg), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f"{jpg}: cv2.imwrite failed")
        (directory / "Annotations" / f"{image_id}.xml").write_bytes(
            _voc_xml(domain, image_id, height, width, annotations))
        num_objects += len(annotations)
    return num_objects


_CHUNK = 50  # images per task handed to a worker thread
_MIN_IMAGES_PER_WORKER = 100  # fewer images than this per extra thread is not worth one


def _default_workers(num_images: int) -> int:
    return max(1, min(os.cpu_count() or 1, 8, num_images // _MIN_IMAGES_PER_WORKER))


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_prob(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _check_image_size(image_size):
    """``image_size`` as an int (shorter side) or a (height, width) tuple; ValueError if invalid."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = int(image_size)
        sides = (size,)
    else:
        try:
            size = tuple(int(v) for v in image_size)
        except (TypeError, ValueError):
            size = ()
        if len(size) != 2:
            raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
        sides = size
    if min(sides) < 64:
        raise ValueError(f"image sides must be >= 64 pixels, got {image_size!r}")
    return size


def generate(root, *, seed: int = 0, num_train: int = 600, num_test: int = 150, image_size=256,
             domains: Sequence[str] = SYNTHETIC_DOMAINS, overwrite: bool = False,
             workers: int | None = None, class_hue_prob: float = SOURCE_CLASS_HUE_PROB) -> dict:
    """Write the synthetic domain-shift benchmark as one VOC folder per domain under ``root``.

    Args:
        root: parent folder; domain ``d`` goes to ``root/d``.
        seed: non-negative int; with the same library versions, same seed -> byte-identical files.
        num_train, num_test: images per split, per domain.
        image_size: shorter side in pixels (int >= 64; half the images are square, the others
            ``NON_SQUARE_SIDE_RATIO`` times longer one way), or a fixed ``(height, width)``.
        domains: a subset of ``SYNTHETIC_DOMAINS``.
        overwrite: replace folders that exist without a stamp (see below).
        workers: threads to render with (cv2 and numpy release the GIL for most of the work);
            None picks one per ``_MIN_IMAGES_PER_WORKER`` images to write, up to the CPU count
            (max 8). The files do not depend on it.
        class_hue_prob: the source domain's colour cue (``SOURCE_CLASS_HUE_PROB``).

    Idempotent: a domain folder whose stamp (``.synthetic.json``) records the same parameters
    (and ``GENERATOR_VERSION``) is skipped: regenerating it would write the same bytes. A
    folder with a different stamp was made by this generator, so it is replaced. A folder
    with no stamp may hold someone's data: it raises ``FileExistsError`` unless
    ``overwrite=True``; all folders are checked before anything is written.
    Each domain is written to a temporary sibling folder and renamed into place with its stamp
    already inside, so an interrupted run never leaves a folder that looks complete, and
    processes generating the same folder at once (e.g. every DDP rank) do not clobber each other.

    Returns ``{"root": str, "seed": int, "image_size": int | [h, w], "workers": int,
    "seconds": float, "domains": {d: {"dir": str, "status": "generated" | "regenerated" | "skipped",
    "num_train": int, "num_test": int, "num_objects": int | None (None when skipped)}}}``.
    """
    seed = _check_int("seed", seed, 0)
    num_train = _check_int("num_train", num_train, 0)
    num_test = _check_int("num_test", num_test, 0)
    image_size = _check_image_size(image_size)
    class_hue_prob = _check_prob("class_hue_prob", class_hue_prob)
    unknown = [d for d in domains if d not in SYNTHETIC_DOMAINS]
    if unknown:
        raise ValueError(f"unknown synthetic domains {unknown}; known: {SYNTHETIC_DOMAINS}")
    domains = list(dict.fromkeys(domains))
    counts = {"train": num_train, "test": num_test}

    start = time.perf_counter()
    root = Path(root)
    summary = {"root": str(root), "seed": seed, "image_size": _jsonable(image_size), "domains": {}}
    todo = []
    for domain in domains:
        directory = root / domain
        stamp = _stamp(domain, seed, num_train, num_test, image_size, class_hue_prob)
        summary["domains"][domain] = {"dir": str(directory), "status": "generated", "num_train": num_train,
                                      "num_test": num_test, "num_objects": 0}
        if directory.exists():
            found = read_stamp(directory)
            if found == stamp:
                summary["domains"][domain].update(status="skipped", num_objects=None)
                continue
            if found is None and not overwrite:
                raise FileExistsError(
                    f"{directory} exists but has no {STAMP_NAME} stamp, so it was not made by this "
                    f"generator; pass overwrite=True (--overwrite) to replace it")
            summary["domains"][domain]["status"] = "generated" if found is None else "regenerated"
        todo.append((domain, directory, stamp))

    tasks = [(domain, split, lo, min(lo + _CHUNK, counts[split]))
             for domain, _, _ in todo for split in SPLITS for lo in range(0, counts[split], _CHUNK)]
    num_images = sum(hi - lo for _, _, lo, hi in tasks)
    workers = _default_workers(num_images) if workers is None else _check_int("workers", workers, 1)
    summary["workers"] = workers
    partials = {domain: root / f".{domain}.partial-{os.getpid()}" for domain, _, _ in todo}
    try:
        for partial in partials.values():
            if partial.exists():
                shutil.rmtree(partial)
            (partial / "Annotations").mkdir(parents=True)
            (partial / "JPEGImages").mkdir()
            (partial / "ImageSets" / "Main").mkdir(parents=True)
        args = [(str(partials[d]), d, seed, split, lo, hi, image_size, class_hue_prob) for d, split, lo, hi in tasks]
        if workers > 1 and len(args) > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                objects = list(pool.map(_write_images, *zip(*args)))
        else:
            objects = [_write_images(*a) for a in args]
        for (domain, _, _, _), num in zip(tasks, objects):
            summary["domains"][domain]["num_objects"] += num
        for domain, directory, stamp in todo:
            partial = partials[domain]
            for split in SPLITS:
                ids = "".join(f"{_image_id(domain, split, i)}\n" for i in range(counts[split]))
                (partial / "ImageSets" / "Main" / f"{split}.txt").write_text(ids)
            (partial / STAMP_NAME).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
            if read_stamp(directory) == stamp:  # another process finished the same folder meanwhile
                continue
            if directory.exists():
                shutil.rmtree(directory)
            try:
                os.replace(partial, directory)
            except OSError:
                if read_stamp(directory) != stamp:  # lost a race to an identical folder: fine
                    raise
    finally:
        for partial in partials.values():
            if partial.exists():
                shutil.rmtree(partial)
    summary["seconds"] = time.perf_counter() - start
    return summary
