"""Teacher detections -> pseudo-labels -> the student's model inputs (maybe mixed target x target)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..data.mapper import to_model_input
from ..data.mixer import TARGET_MIX_STREAM, Mixer


def filter_pseudo_labels(detections: dict, threshold: float) -> dict:
    """Teacher detections -> pseudo-labels (numpy, in the detections' order).

    Args:
        detections: torchvision's output for one image: ``boxes`` [K,4] xyxy, ``scores`` [K],
            ``labels`` [K] (1-based; 0 is background).
        threshold: keep ``score >= threshold``.

    Returns:
        ``{"boxes": float32 [M,4], "classes": int64 [M] (0-based), "scores": float32 [M]}``.
    """
    keep = detections["scores"] >= threshold
    return {
        "boxes": detections["boxes"][keep].detach().float().cpu().numpy().reshape(-1, 4),
        "classes": (detections["labels"][keep] - 1).detach().cpu().numpy().astype(np.int64),
        "scores": detections["scores"][keep].detach().float().cpu().numpy(),
    }


def build_pseudo_inputs(strong_views: Sequence[dict], pseudo_labels: Sequence[dict], *, positions: Sequence[int],
                        mixer: Mixer, mix: bool, weight_by_score: bool, box_weight: float,
                        to_input=to_model_input) -> list[dict]:
    """Strong views + their pseudo-labels -> the student's model inputs.

    Each strong view gets its image's pseudo-labels with incoming weight 1, or the teacher's score
    when ``weight_by_score``. With ``mix`` (target x target) each view is mixed with its partner by
    ``mixer`` (:meth:`Mixer.mix_batch`: the one partner rule, generators from the view's global
    ``positions`` and :data:`TARGET_MIX_STREAM`): in ``lossmix`` mode the weights become incoming
    x lambda (the partner's incoming x (1 - lambda)). ``box_weights`` = weights x ``box_weight``
    (all zeros at 0: the heads then skip box regression). Every input has ``"domain"`` 1.0 (target).
    ``to_input`` turns the numpy samples into model inputs (the detectron2 plug-in passes its own).
    """
    samples = []
    for view, pseudo, position in zip(strong_views, pseudo_labels, positions):
        n = len(pseudo["boxes"])
        weights = pseudo["scores"].astype(np.float32) if weight_by_score else np.ones(n, np.float32)
        samples.append({"image": view["image"], "boxes": pseudo["boxes"], "classes": pseudo["classes"],
                        "weights": weights, "position": int(position)})
    if mix:
        mixed = [m for _, m in mixer.mix_batch(samples, TARGET_MIX_STREAM)]
    else:
        mixed = [mixer.mix(s, None, None) for s in samples]
    inputs = []
    for sample in mixed:
        sample["box_weights"] = sample["weights"] * np.float32(box_weight)
        inp = to_input(sample)
        inp["domain"] = 1.0
        inputs.append(inp)
    return inputs


__all__ = ["filter_pseudo_labels", "build_pseudo_inputs"]
