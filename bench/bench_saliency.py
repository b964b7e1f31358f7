"""Time SaliencyMix patch selection (and, for scale, mixup) on 600x1000 RGB images; prints one JSON object.

The images are smooth random backgrounds with a few bright discs (so the saliency peak is not a
tie). ``saliency_ms_per_image`` holds, per saliency method (``LOSSMIX.SALIENCY``: fine_grained,
the SaliencyMix paper's, and spectral_residual), the median per-image time of ``saliency_patch``
(grey conversion, integer-factor downscale, saliency map, argmax, patch), measured in the same run;
``fine_grained_over_spectral_residual`` is their ratio. ``mixup_ms_per_image`` is that of
``mixup_images`` for two 600x1000 images and for 600x1000 with 500x900.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import cv2
import numpy as np

try:
    import lossmix  # noqa: F401
except ImportError:  # runnable from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lossmix.data.mixing import SALIENCY_METHODS, mixup_images, saliency_patch  # noqa: E402

HEIGHT, WIDTH = 600, 1000
NUM_IMAGES = 20
REPEATS = 10
MAX_SIDE = 64


def make_images(rng: np.random.Generator, n: int, height: int = HEIGHT, width: int = WIDTH) -> list:
    images = []
    for _ in range(n):
        small = rng.integers(0, 256, size=(height // 20, width // 20, 3), dtype=np.uint8)
        img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        for _ in range(3):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            cv2.circle(img, centre, int(rng.integers(10, 60)), colour, -1)
        images.append(img)
    return images


def _median_ms(fn, items) -> float:
    for item in items[:2]:  # warm-up (first call creates the saliency object)
        fn(item)
    per_round = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for item in items:
            fn(item)
        per_round.append((time.perf_counter() - start) / len(items) * 1e3)
    return statistics.median(per_round)


def main() -> None:
    rng = np.random.default_rng(0)
    images = make_images(rng, NUM_IMAGES)
    smaller = make_images(rng, NUM_IMAGES, 500, 900)
    saliency_ms = {m: _median_ms(lambda img, m=m: saliency_patch(img, HEIGHT, WIDTH, 0.7, rng, max_side=MAX_SIDE,
                                                                  method=m), images)
                   for m in SALIENCY_METHODS}
    pairs = list(zip(images, images[1:] + images[:1]))
    mixup_same_ms = _median_ms(lambda p: mixup_images(p[0], p[1], 0.6), pairs)
    mixup_diff_ms = _median_ms(lambda p: mixup_images(p[0], p[1], 0.6), list(zip(images, smaller)))
    print(json.dumps({
        "saliency_ms_per_image": {m: round(v, 3) for m, v in saliency_ms.items()},
        "fine_grained_over_spectral_residual": round(saliency_ms["fine_grained"] / saliency_ms["spectral_residual"], 2),
        "image_size": [HEIGHT, WIDTH],
        "max_side": MAX_SIDE,
        "mixup_ms_per_image": round(mixup_same_ms, 3),
        "mixup_ms_per_image_600x1000_with_500x900": round(mixup_diff_ms, 3),
        "cv2_threads": cv2.getNumThreads(),
    }))


if __name__ == "__main__":
    main()
