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
import json
import os
import shutil
import time
import xml.etree.ElementTree as ET
import zlib
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
# stop matching and stale folders are not mistaken for current ones.
GENERATOR_VERSION = 1
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
SOURCE_OFF_HUE_PROB = 0.1  # some objects take a random hue, so shape stays worth learning
SOURCE_GRAIN = 0.02  # std of the per-pixel sensor noise (intensity in [0, 1])

# --- clipart style ---------------------------------------------------------------------
CLIPART_PALETTE_HUES_DEG = tuple(range(0, 360, 30))  # 12 saturated hues, any class any hue
CLIPART_OUTLINE_FRACTION = 0.06  # outline thickness relative to the object's extent ...
CLIPART_OUTLINE_PX = (2, 5)  # ... clipped to this range (pixels)

# --- watercolor style ------------------------------------------------------------------
WATERCOLOR_BLEED_SIGMA = (1.2, 3.0)  # Gaussian blur of a wash's edge (pixels)
WATERCOLOR_SATURATION = (0.15, 0.45)
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


def _fill(mask: np.ndarray, outer: np.ndarray, holes: Sequence[np.ndarray], value: float = 255) -> None:
    cv2.fillPoly(mask, [_to_cv_points(outer)], value, cv2.LINE_AA, _SUBPIXEL_SHIFT)
    for hole in holes:
        cv2.fillPoly(mask, [_to_cv_points(hole)], 0, cv2.LINE_AA, _SUBPIXEL_SHIFT)


def _stroke(mask: np.ndarray, contours: Sequence[np.ndarray], thickness: int, value: float = 255) -> None:
    cv2.polylines(mask, [_to_cv_points(c) for c in contours], True, value, thickness,
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
    truncated = bool(cx + x0 < 0 or cy + y0 < 0 or cx + x1 > width - 1 or cy + y1 > height - 1)
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
            area = int(footprint.sum())
            if area == 0:
                continue
            remaining = [v & ~footprint for v in visible]
            if all(r.sum() >= MIN_VISIBLE_FRACTION * s.area for r, s in zip(remaining, shapes)):
                visible = remaining + [footprint]
                shapes.append(_Shape(class_index, outer, holes, extent, outline, alpha, footprint, area, truncated))
                break
    return shapes


# ======================================================================================
# Pixels: helpers
# ======================================================================================


def _hsv(hue_deg: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, sat, val), np.float32)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Value noise in about [-1, 1] with features ``cell`` pixels across, (H, W) float32."""
    gh, gw = max(2, int(np.ceil(height / cell)) + 1), max(2, int(np.ceil(width / cell)) + 1)
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0 else img


def _shift(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate by whole pixels, filling with zeros."""
    out = np.zeros_like(img)
    h, w = img.shape[:2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = img[ys, xs]
    return out


def _composite(canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """In place: canvas = canvas * (1 - alpha) + colour * alpha; alpha (H, W) in [0, 1]."""
    a = alpha[..., None]
    canvas *= 1.0 - a
    canvas += colour * a


def _ramp(height: int, width: int, angle: float, centre: np.ndarray, length: float) -> np.ndarray:
    """Linear ramp along ``angle``, 0 at ``centre``, +-0.5 at +-``length``/2; (H, W) float32."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return ((xs - centre[0]) * np.cos(angle) + (ys - centre[1]) * np.sin(angle)) / max(length, 1.0)


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


# ======================================================================================
# Pixels: source ("photo-like")
# ======================================================================================


def _source_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    hue = rng.uniform(0.0, 360.0)
    c1 = _hsv(hue, rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.85))
    c2 = _hsv(hue + rng.uniform(-40.0, 40.0), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.85))
    side = min(height, width)
    t = 0.5 + 0.35 * _smooth_noise(rng, height, width, side * rng.uniform(0.25, 0.6))
    t += 0.12 * _smooth_noise(rng, height, width, side * 0.06)
    canvas = c1 * (1.0 - t[..., None]) + c2 * t[..., None]
    # Out-of-focus clutter: lumpy blobs and twigs, drawn behind the objects.
    for _ in range(int(rng.integers(2, 7))):
        mask = np.zeros((height, width), np.uint8)
        if rng.random() < 0.7:
            pts = _blob(rng, _random_centre(rng, height, width), side * rng.uniform(0.04, 0.16))
            cv2.fillPoly(mask, [_to_cv_points(pts)], 255, cv2.LINE_AA, _SUBPIXEL_SHIFT)
        else:
            p, q = _random_centre(rng, height, width), _random_centre(rng, height, width)
            cv2.line(mask, tuple(int(v) for v in p), tuple(int(v) for v in q), 255,
                     int(rng.integers(1, 4)), cv2.LINE_AA)
        alpha = _blur(mask.astype(np.float32) / 255.0, rng.uniform(0.8, 2.5))
        colour = _hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.45), rng.uniform(0.25, 0.9))
        shade = 1.0 + 0.15 * _smooth_noise(rng, height, width, side * 0.05)
        _composite(canvas, colour * shade[..., None], alpha * rng.uniform(0.5, 0.9))
    # Lighting falloff across the scene.
    light = _ramp(height, width, rng.uniform(0, 2 * np.pi), np.array([width / 2, height / 2]), max(height, width))
    canvas *= (1.0 + rng.uniform(0.0, 0.4) * light)[..., None]
    return canvas


def _source_object(rng: np.random.Generator, canvas: np.ndarray, shape: _Shape, light_angle: float) -> None:
    h, w = canvas.shape[:2]
    name = SYNTHETIC_CLASSES[shape.class_index]
    hue = SOURCE_CLASS_HUE_DEG[name] + rng.normal(0.0, SOURCE_HUE_JITTER_DEG)
    if rng.random() < SOURCE_OFF_HUE_PROB:
        hue = rng.uniform(0.0, 360.0)
    colour = _hsv(hue, rng.uniform(0.55, 0.9), rng.uniform(0.55, 0.95))
    alpha = _blur(shape.alpha.astype(np.float32) / 255.0, 0.6)
    # Soft drop shadow away from the light.
    offset = max(2.0, 0.06 * shape.extent)
    dx, dy = int(round(-offset * np.cos(light_angle))), int(round(-offset * np.sin(light_angle)))
    shadow = _blur(_shift(alpha, dx, dy), max(1.5, 0.05 * shape.extent))
    canvas *= (1.0 - 0.45 * shadow)[..., None]
    # Texture: noise, stripes or a strong gradient; always some lighting across the object.
    centre = shape.outer.mean(0)
    shading = 1.0 + 0.35 * _ramp(h, w, light_angle + np.pi, centre, shape.extent)
    kind = rng.integers(3)
    if kind == 0:
        shading *= 1.0 + 0.22 * _smooth_noise(rng, h, w, rng.uniform(3.0, 8.0))
    elif kind == 1:
        period = rng.uniform(5.0, 12.0)
        stripes = _ramp(h, w, rng.uniform(0, np.pi), centre, 1.0)  # signed distance in pixels
        shading *= 1.0 + 0.2 * np.sin(2 * np.pi * stripes / period)
    else:
        shading *= 1.0 + 0.5 * _ramp(h, w, rng.uniform(0, 2 * np.pi), centre, shape.extent)
    _composite(canvas, colour * shading[..., None], alpha)


def _source_finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    canvas = _blur(canvas, rng.uniform(0.3, 0.7))
    return canvas + rng.normal(0.0, SOURCE_GRAIN, canvas.shape).astype(np.float32)


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

    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = flat()
    if rng.random() < 0.6:  # two-tone: a straight, slightly tilted horizon
        y = rng.uniform(0.4, 0.8) * height
        tilt = rng.uniform(-0.25, 0.25) * width
        mask = np.zeros((height, width), np.uint8)
        ground = np.array([(-1, y - tilt / 2), (width, y + tilt / 2), (width, height), (-1, height)])
        cv2.fillPoly(mask, [_to_cv_points(ground)], 255, cv2.LINE_AA, _SUBPIXEL_SHIFT)
        _composite(canvas, flat(), mask.astype(np.float32) / 255.0)
    side = min(height, width)
    for _ in range(int(rng.integers(0, 4))):  # flat outlined clutter
        pts = _blob(rng, _random_centre(rng, height, width), side * rng.uniform(0.04, 0.14))
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [_to_cv_points(pts)], 255, cv2.LINE_AA, _SUBPIXEL_SHIFT)
        _composite(canvas, flat(), mask.astype(np.float32) / 255.0)
        mask[:] = 0
        _stroke(mask, [pts], 2)
        _composite(canvas, _clipart_ink(rng), mask.astype(np.float32) / 255.0)
    return canvas


def _clipart_object(rng: np.random.Generator, canvas: np.ndarray, shape: _Shape, light_angle: float) -> None:
    h, w = canvas.shape[:2]
    colour = _clipart_fill(rng)
    fill = np.zeros((h, w), np.uint8)
    _fill(fill, shape.outer, shape.holes)
    fill_alpha = fill.astype(np.float32) / 255.0
    _composite(canvas, colour, fill_alpha)
    if rng.random() < 0.35:  # cel shading: one flat darker tone on the side away from the light
        side = _ramp(h, w, light_angle + np.pi, shape.outer.mean(0), 1.0) > 0
        _composite(canvas, colour * 0.72, fill_alpha * side)
    ink = np.zeros((h, w), np.uint8)
    _stroke(ink, shape.contours, shape.outline_px)
    _composite(canvas, _clipart_ink(rng), ink.astype(np.float32) / 255.0)


def _clipart_finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    return canvas


# ======================================================================================
# Pixels: watercolor
# ======================================================================================


def _watercolor_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    side = min(height, width)
    paper = _hsv(rng.uniform(30, 55), rng.uniform(0.03, 0.12), rng.uniform(0.88, 0.98))
    grain = 0.035 * _blur(rng.normal(0.0, 1.0, (height, width)).astype(np.float32), 0.7)
    fibre = 0.03 * _smooth_noise(rng, height, width, side * 0.08)
    canvas = paper * (1.0 + grain + fibre)[..., None]
    # Loose background washes: large, very soft, pale.
    for _ in range(int(rng.integers(1, 4))):
        mask = np.zeros((height, width), np.uint8)
        pts = _blob(rng, _random_centre(rng, height, width), side * rng.uniform(0.15, 0.4))
        cv2.fillPoly(mask, [_to_cv_points(pts)], 255, cv2.LINE_AA, _SUBPIXEL_SHIFT)
        density = _blur(mask.astype(np.float32) / 255.0, side * rng.uniform(0.03, 0.07))
        tint = _hsv(rng.uniform(0, 360), rng.uniform(0.15, 0.4), 1.0)
        canvas *= 1.0 - (rng.uniform(0.3, 0.6) * density)[..., None] * (1.0 - tint)
    return canvas


def _watercolor_object(rng: np.random.Generator, canvas: np.ndarray, shape: _Shape, light_angle: float) -> None:
    h, w = canvas.shape[:2]
    side = min(h, w)
    if rng.random() < WATERCOLOR_PENCIL_PROB:
        pencil = np.zeros((h, w), np.uint8)
        _stroke(pencil, shape.contours, 1)
        canvas *= (1.0 - 0.3 * pencil.astype(np.float32) / 255.0)[..., None]
    pigment = _hsv(rng.uniform(0, 360), rng.uniform(*WATERCOLOR_SATURATION), rng.uniform(0.7, 0.95))
    # Wash slightly off the drawn shape, edges bled and wobbly.
    dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
    wash = _shift(shape.alpha.astype(np.float32) / 255.0, dx, dy)
    wash = _blur(wash, rng.uniform(*WATERCOLOR_BLEED_SIGMA))
    wobble = _smooth_noise(rng, h, w, side * 0.04)
    wash = np.clip(wash + 0.35 * wobble * wash * (1.0 - wash) * 4.0, 0.0, 1.0)
    # Pigment pools at the edges (darker rim) and granulates inside.
    rim = np.clip(wash - _blur(wash, 3.0), 0.0, 1.0)
    granulation = 1.0 + 0.15 * _smooth_noise(rng, h, w, 2.5)
    density = np.clip(wash * rng.uniform(0.8, 0.95) * granulation + 1.2 * rim, 0.0, 1.0)
    # Mostly opaque over earlier washes (so occlusion means what the boxes say), tinted paper below.
    paint = pigment * WATERCOLOR_PAPER_TONE * (1.0 - 0.25 * rim)[..., None]
    _composite(canvas, paint, density)


def _watercolor_finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    return _blur(canvas, 0.6)


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
        height, width = (int(v) for v in image_size)
        return height, width
    long_side = int(round(image_size * NON_SQUARE_SIDE_RATIO / 8.0)) * 8
    u = rng.random()
    if u < 0.5:
        return image_size, image_size
    return (image_size, long_side) if u < 0.75 else (long_side, image_size)


def render_sample(domain: str, *, seed: int = 0, split: str = "train", index: int = 0,
                  image_size=256) -> tuple:
    """Render one image of the benchmark in memory, exactly as :func:`generate` writes it.

    Returns ``(image, annotations)``: ``image`` is (H, W, 3) uint8 **RGB**; each annotation is
    ``{"bbox": [x1, y1, x2, y2] (floats, XYXY_ABS, exclusive x2/y2), "bbox_mode": BoxMode.XYXY_ABS,
    "category_id": int (0-based into SYNTHETIC_CLASSES), "difficult": 0|1, "truncated": 0|1,
    "visible_fraction": float in (0, 1]}`` in drawing order.
    ``image_size``: shorter side (int; half the images are square, the rest have a longer side
    of ``NON_SQUARE_SIDE_RATIO`` times it, landscape or portrait) or a fixed ``(height, width)``.
    """
    if domain not in _STYLES:
        raise ValueError(f"unknown synthetic domain {domain!r}; known: {SYNTHETIC_DOMAINS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    rng = _image_rng(seed, domain, split, index)
    height, width = _image_shape(rng, image_size)
    paint_background, paint_object, finish = _STYLES[domain]
    shapes = _layout(rng, height, width, domain)
    light_angle = rng.uniform(0.0, 2.0 * np.pi)
    canvas = paint_background(rng, height, width).astype(np.float32)
    for shape in shapes:
        paint_object(rng, canvas, shape, light_angle)
    canvas = finish(rng, canvas)
    image = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)

    annotations = []
    covered = np.zeros((height, width), bool)
    for shape in reversed(shapes):  # later shapes are on top
        visible = shape.footprint & ~covered
        covered |= shape.footprint
        ys, xs = np.nonzero(visible)
        fraction = len(xs) / shape.area
        annotations.append({
            "bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
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


def _stamp(domain: str, seed: int, num_train: int, num_test: int, image_size) -> dict:
    return {
        "generator": "lossmix.data.synthetic",
        "version": GENERATOR_VERSION,
        "domain": domain,
        "seed": seed,
        "num_train": num_train,
        "num_test": num_test,
        "image_size": image_size if isinstance(image_size, int) else list(image_size),
        "classes": list(SYNTHETIC_CLASSES),
    }


def read_stamp(domain_dir) -> dict | None:
    """The parameters a generated domain folder was written with, or None if it has no stamp."""
    path = Path(domain_dir) / STAMP_NAME
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_domain(directory: Path, domain: str, seed: int, counts: dict, image_size) -> int:
    """Write one domain's VOC folder into ``directory``; returns the number of objects."""
    (directory / "Annotations").mkdir(parents=True)
    (directory / "JPEGImages").mkdir()
    (directory / "ImageSets" / "Main").mkdir(parents=True)
    num_objects = 0
    for split in SPLITS:
        ids = []
        for index in range(counts[split]):
            image_id = f"{domain}_{split}_{index:05d}"
            image, annotations = render_sample(domain, seed=seed, split=split, index=index, image_size=image_size)
            height, width = image.shape[:2]
            jpg = directory / "JPEGImages" / f"{image_id}.jpg"
            if not cv2.imwrite(str(jpg), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise OSError(f"{jpg}: cv2.imwrite failed")
            (directory / "Annotations" / f"{image_id}.xml").write_bytes(
                _voc_xml(domain, image_id, height, width, annotations))
            ids.append(image_id)
            num_objects += len(annotations)
        (directory / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return num_objects


def generate(root, *, seed: int = 0, num_train: int = 600, num_test: int = 150, image_size=256,
             domains: Sequence[str] = SYNTHETIC_DOMAINS, overwrite: bool = False) -> dict:
    """Write the synthetic domain-shift benchmark as one VOC folder per domain under ``root``.

    Args:
        root: parent folder; domain ``d`` goes to ``root/d``.
        seed: non-negative int; with the same library versions, same seed -> byte-identical files.
        num_train, num_test: images per split, per domain.
        image_size: shorter side in pixels (int, >= 64; some images are non-square), or a
            fixed ``(height, width)``.
        domains: a subset of ``SYNTHETIC_DOMAINS``.
        overwrite: see below.

    Idempotent: a domain folder whose stamp (``.synthetic.json``) records the same parameters
    is skipped (regenerating it would write the same bytes). A folder that exists with a
    different or missing stamp raises ``FileExistsError`` unless ``overwrite=True``, in which
    case it is deleted and regenerated. Each domain is written to a temporary sibling folder
    and renamed into place with its stamp already inside, so an interrupted run never leaves
    a folder that looks complete.

    Returns ``{"root": str, "seed": int, "seconds": float, "domains": {d: {"dir": str,
    "status": "generated" | "skipped", "num_train": int, "num_test": int, "num_objects": int
    | None (None when skipped), "seconds": float}}}``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if isinstance(image_size, (int, np.integer)):
        image_size = int(image_size)
        sides = (image_size,)
    else:
        image_size = tuple(int(v) for v in image_size)
        sides = image_size
        if len(sides) != 2:
            raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    if min(sides) < 64:
        raise ValueError(f"image sides must be >= 64 pixels, got {image_size!r}")
    unknown = [d for d in domains if d not in SYNTHETIC_DOMAINS]
    if unknown:
        raise ValueError(f"unknown synthetic domains {unknown}; known: {SYNTHETIC_DOMAINS}")
    seed, num_train, num_test = int(seed), int(num_train), int(num_test)

    start = time.perf_counter()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    summary = {"root": str(root), "seed": seed, "domains": {}}
    for domain in domains:
        t0 = time.perf_counter()
        directory = root / domain
        stamp = _stamp(domain, seed, num_train, num_test, image_size)
        entry = {"dir": str(directory), "num_train": num_train, "num_test": num_test}
        if directory.exists():
            if read_stamp(directory) == stamp:
                summary["domains"][domain] = {**entry, "status": "skipped", "num_objects": None,
                                              "seconds": time.perf_counter() - t0}
                continue
            if not overwrite:
                raise FileExistsError(
                    f"{directory} exists but was not generated with these parameters "
                    f"(stamp {directory / STAMP_NAME} missing or different); pass overwrite=True "
                    f"(--overwrite) to replace it")
        partial = root / f".{domain}.partial-{os.getpid()}"
        if partial.exists():
            shutil.rmtree(partial)
        try:
            num_objects = _write_domain(partial, domain, seed, {"train": num_train, "test": num_test}, image_size)
            (partial / STAMP_NAME).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(partial, directory)
        finally:
            if partial.exists():
                shutil.rmtree(partial)
        summary["domains"][domain] = {**entry, "status": "generated", "num_objects": num_objects,
                                      "seconds": time.perf_counter() - t0}
    summary["seconds"] = time.perf_counter() - start
    return summary
