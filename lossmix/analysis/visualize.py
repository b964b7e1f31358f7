"""Draw mixed training samples: boxes coloured by their LossMix weight, partner boxes dashed.

Conventions as in :mod:`lossmix.data`: images are ``HxWx3`` uint8 **RGB**, boxes float ``[N, 4]``
xyxy pixels, weights in ``[0, 1]``. Every draw function returns a new RGB array (inputs are not
modified); :func:`save_png` converts to OpenCV's BGR only when writing.

:func:`iter_mixed_samples` walks a training loader from
:func:`lossmix.data.loader.build_train_loader` and yields each output image together with the two
samples it was mixed from, so a picture shows exactly what the model is trained on.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np

__all__ = [
    "weight_colour",
    "draw_dashed_rectangle",
    "draw_instances",
    "draw_colourbar",
    "draw_saliency_panel",
    "render_mixed_sample",
    "iter_mixed_samples",
    "save_png",
]

DEFAULT_CMAP = "rainbow"  # saturated from 0 (violet) to 1 (red): every weight stays visible on any background
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def weight_colour(weight: float, cmap: str = DEFAULT_CMAP) -> tuple[int, int, int]:
    """RGB colour (ints 0-255) of a weight in ``[0, 1]`` (clipped) under matplotlib colormap ``cmap``."""
    w = float(np.clip(weight, 0.0, 1.0)) if math.isfinite(float(weight)) else 0.0
    r, g, b, _ = _cmap(cmap)(w)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _text_colour(rgb) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def draw_dashed_rectangle(img: np.ndarray, box, colour, thickness: int = 2, dash: int = 8) -> np.ndarray:
    """Draw a dashed xyxy rectangle into ``img`` in place (dashes of ``dash`` px, equal gaps); returns it."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        for start in range(0, max(length, 1), 2 * dash):
            end = min(start + dash, length)
            t0, t1 = start / max(length, 1), end / max(length, 1)
            p0 = (int(round(ax + (bx - ax) * t0)), int(round(ay + (by - ay) * t0)))
            p1 = (int(round(ax + (bx - ax) * t1)), int(round(ay + (by - ay) * t1)))
            cv2.line(img, p0, p1, colour, thickness, cv2.LINE_AA)
    return img


def _label(img: np.ndarray, text: str, x: int, y_top: int, y_bottom: int, colour) -> None:
    """A filled tag with ``text`` just above ``y_top`` (or just below ``y_bottom`` when no room above)."""
    scale, thick = 0.45, 1
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    h, w = img.shape[:2]
    x = int(min(max(x, 0), max(w - tw - 4, 0)))
    top = y_top - th - base - 4
    if top < 0:
        top = min(y_bottom, h - th - base - 4)
    cv2.rectangle(img, (x, top), (x + tw + 4, top + th + base + 4), colour, -1)
    cv2.putText(img, text, (x + 2, top + th + 2), _FONT, scale, _text_colour(colour), thick, cv2.LINE_AA)


def _upscale(image: np.ndarray, min_short: int) -> tuple[np.ndarray, int]:
    s = max(1, math.ceil(min_short / max(1, min(image.shape[:2]))))
    if s == 1:
        return image.copy(), 1
    return cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST), s


def draw_instances(
    image: np.ndarray,
    boxes,
    weights=None,
    *,
    from_partner=None,
    classes=None,
    class_names: Optional[Sequence[str]] = None,
    patch=None,
    min_short: int = 0,
    thickness: int = 2,
    cmap: str = DEFAULT_CMAP,
) -> np.ndarray:
    """Boxes over an image, each coloured by its weight, with ``"<class> <weight>"`` printed beside it.

    Args:
        image: ``H x W x 3`` uint8 RGB (not modified).
        boxes: ``[N, 4]`` xyxy pixels of ``image``.
        weights: ``[N]`` in ``[0, 1]`` (default ones).
        from_partner: ``[N]`` bool; partner instances are drawn dashed, the base image's solid.
        classes / class_names: 0-based class ids and their names (the label shows the id without names).
        patch: ``(x1, y1, x2, y2)`` of a CutMix / SaliencyMix patch, outlined dotted white (None: none).
        min_short: upscale by an integer factor (nearest neighbour) until the short side is at
            least this, so the labels stay legible on small images (0: keep the size).
        thickness: line width in output pixels.
        cmap: matplotlib colormap from weight 0 to 1.

    Returns:
        ``(s*H) x (s*W) x 3`` uint8 RGB, ``s`` the upscaling factor (1 unless ``min_short`` asks).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    from_partner = np.zeros(n, bool) if from_partner is None else np.asarray(from_partner, dtype=bool).reshape(-1)
    out, s = _upscale(np.ascontiguousarray(image), min_short)
    if patch is not None:
        x1, y1, x2, y2 = (int(v) * s for v in patch)
        if x2 > x1 and y2 > y1:
            draw_dashed_rectangle(out, (x1, y1, x2, y2), (255, 255, 255), 1, dash=3)
    # low weights first, so the boxes that matter most end up on top
    for i in np.argsort(weights, kind="stable"):
        colour = weight_colour(weights[i], cmap)
        box = boxes[i] * s
        if from_partner[i]:
            draw_dashed_rectangle(out, box, colour, thickness)
        else:
            cv2.rectangle(out, (int(round(box[0])), int(round(box[1]))), (int(round(box[2])), int(round(box[3]))),
                          colour, thickness, cv2.LINE_AA)
        name = ""
        if classes is not None:
            c = int(np.asarray(classes).reshape(-1)[i])
            name = (class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)) + " "
        _label(out, f"{name}{weights[i]:.2f}", int(box[0]), int(box[1]), int(box[3]), colour)
    return out


def draw_colourbar(width: int, height: int = 34, *, cmap: str = DEFAULT_CMAP, title: str = "weight") -> np.ndarray:
    """A horizontal colour bar from 0 to 1 with tick labels and a legend for solid / dashed boxes (RGB)."""
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    left = 70
    bar_w = max(width // 2 - left, 40)
    ramp = (_cmap(cmap)(np.linspace(0.0, 1.0, bar_w))[:, :3] * 255).round().astype(np.uint8)
    out[6:18, left:left + bar_w] = ramp[None]
    cv2.putText(out, title, (4, 16), _FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    for frac, text in ((0.0, "0"), (0.5, "0.5"), (1.0, "1")):
        (tw, _), _ = cv2.getTextSize(text, _FONT, 0.38, 1)
        x = int(left + frac * (bar_w - 1) - tw / 2)
        cv2.putText(out, text, (min(max(x, 0), width - tw), 31), _FONT, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    x = left + bar_w + 16
    if x + 200 < width:
        cv2.line(out, (x, 12), (x + 24, 12), (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(out, "base", (x + 28, 16), _FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        draw_dashed_rectangle(out, (x + 80, 12, x + 104, 12), (0, 0, 0), 2, dash=5)
        cv2.putText(out, "partner", (x + 108, 16), _FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def draw_saliency_panel(partner_image: np.ndarray, height: int, width: int, patch, *, max_side: int = 64,
                        min_short: int = 0, cmap: str = "inferno", saliency: str = "fine_grained",
                        paste: str = "stretch") -> np.ndarray:
    """The partner's saliency map as SaliencyMix sees it, with the chosen patch and the peak cell.

    Mirrors :func:`lossmix.data.mixing.mix_pair`: the partner is resized to the base image's
    ``height x width`` as training does (``paste``: ``LOSSMIX.PASTE``) and
    :func:`~lossmix.data.mixing.saliency_map` runs on it with training's map (``saliency``:
    ``LOSSMIX.SALIENCY``; at its working resolution, shown blocky on purpose). The patch is outlined white,
    the peak cell marked with a cross. Returns RGB at the same scale :func:`draw_instances` uses for ``min_short``.
    """
    from ..data.mixing import resize_cover, resize_to, saliency_map

    resize = resize_to if paste == "stretch" else resize_cover
    resized, _ = resize(partner_image, np.zeros((0, 4), np.float32), height, width)
    sal = saliency_map(resized, max_side=max_side, method=saliency)
    heat = (_cmap(cmap)(cv2.resize(sal, (width, height), interpolation=cv2.INTER_NEAREST))[..., :3] * 255)
    heat = heat.round().astype(np.uint8)
    out, s = _upscale(heat, min_short)
    if patch is not None:
        x1, y1, x2, y2 = (int(v) * s for v in patch)
        cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), 2, cv2.LINE_AA)
    iy, ix = divmod(int(np.argmax(sal)), sal.shape[1])
    cy, cx = int((iy + 0.5) * height / sal.shape[0] * s), int((ix + 0.5) * width / sal.shape[1] * s)
    cv2.drawMarker(out, (cx, cy), (0, 255, 255), cv2.MARKER_CROSS, 16, 2)
    cv2.putText(out, "partner saliency + patch", (6, 18), _FONT, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _header(width: int, lines: Sequence[str]) -> np.ndarray:
    out = np.full((8 + 18 * len(lines), width, 3), 255, dtype=np.uint8)
    for k, line in enumerate(lines):
        cv2.putText(out, line, (4, 18 + 18 * k), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _hstack(panels: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    h = max(p.shape[0] for p in panels)
    padded = []
    for k, p in enumerate(panels):
        if k:
            padded.append(np.full((h, gap, 3), 255, dtype=np.uint8))
        padded.append(np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255))
    return np.concatenate(padded, axis=1)


def render_mixed_sample(record: dict, *, class_names: Optional[Sequence[str]] = None, mode: str = "",
                        method: str = "", min_short: int = 400, cmap: str = DEFAULT_CMAP,
                        saliency_max_side: int = 64, saliency: str = "fine_grained",
                        paste: str = "stretch") -> np.ndarray:
    """One picture of a mixed training sample (a record of :func:`iter_mixed_samples`), RGB.

    Panels: the mixed image with its boxes (:func:`draw_instances`); for ``method ==
    "saliencymix"`` with a patch, the partner's saliency map (:func:`draw_saliency_panel`, with training's
    ``saliency`` map and ``paste`` mode).
    Above: mode, method, lambda and the two file names; below: the weight colour bar.
    """
    mixed = record["mixed"]
    panels = [draw_instances(mixed["image"], mixed["boxes"], mixed["weights"], from_partner=mixed["from_partner"],
                             classes=mixed["classes"], class_names=class_names, patch=mixed.get("patch"),
                             min_short=min_short, cmap=cmap)]
    partner = record.get("partner")
    if method == "saliencymix" and partner is not None and mixed.get("patch") is not None:
        h, w = mixed["image"].shape[:2]
        panels.append(draw_saliency_panel(partner["image"], h, w, mixed["patch"], max_side=saliency_max_side,
                                          min_short=min_short, saliency=saliency, paste=paste))
    body = _hstack(panels)
    n_partner = int(np.sum(mixed["from_partner"]))
    base_name = str(record["sample"].get("file_name", "?")).rsplit("/", 1)[-1]
    partner_name = str(partner.get("file_name", "?")).rsplit("/", 1)[-1] if partner is not None else "-"
    lines = [
        f"position {record.get('position', '?')}  {mode}/{method}  lambda={float(mixed.get('lam', 1.0)):.3f}  "
        f"{len(mixed['boxes']) - n_partner} base + {n_partner} partner boxes  "
        f"{mixed['image'].shape[1]}x{mixed['image'].shape[0]}",
        f"base: {base_name}   partner: {partner_name}",
    ]
    return np.concatenate([_header(body.shape[1], lines), body, draw_colourbar(body.shape[1], cmap=cmap)], axis=0)


def iter_mixed_samples(loader) -> Iterator[dict]:
    """The output images of a training loader, each with what it was mixed from, in loader order.

    ``loader`` comes from :func:`lossmix.data.loader.build_train_loader`. Its own dataset, position
    sampler and collate function's :class:`~lossmix.data.mixer.Mixer` are used (the one partner
    rule and generators of training), so each record is exactly what the model is trained on.
    The workers are not used.

    Yields ``{"position": int, "sample": loaded base sample, "partner": loaded partner or None,
    "mixed": the mixer's numpy output (``image``, ``boxes``, ``classes``, ``weights``,
    ``from_partner``, ``lam``, ``patch``), "model_input": what the model receives}``.
    """
    from ..data.mapper import to_model_input

    dataset, mixer = loader.dataset, loader.collate_fn.mixer
    positions = iter(loader.sampler)
    while True:
        samples = [dataset[next(positions)] for _ in range(loader.batch_size)]
        for sample, (partner, mixed) in zip(samples, mixer.mix_batch(samples)):
            yield {"position": sample["position"], "sample": sample, "partner": partner if mixer.mixes else None,
                   "mixed": mixed, "model_input": to_model_input(mixed)}


def save_png(path: str, image: np.ndarray) -> str:
    """Write an RGB image as PNG (OpenCV wants BGR)."""
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path
