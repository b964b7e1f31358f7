"""Teacher detections -> pseudo-labels -> the student's model inputs (maybe mixed target x target); what the
pseudo-labels are worth (:class:`PseudoLabelStats`: counts, scores, precision / recall against the target's own
annotations when it has them) and a warning when the teacher passes none for many iterations in a row."""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np

from ..data.mapper import to_model_input
from ..data.mixer import TARGET_MIX_STREAM, Mixer

logger = logging.getLogger(__name__)


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


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xyxy boxes (continuous coordinates, as the VOC evaluator); 0 where the union is empty."""
    a, b = np.asarray(a, np.float64).reshape(-1, 1, 4), np.asarray(b, np.float64).reshape(1, -1, 4)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
    inter = iw * ih
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_pseudo_labels(pseudo: dict, gt_boxes: np.ndarray, gt_classes: np.ndarray, *,
                        iou_threshold: float = 0.5, class_agnostic: bool = False) -> np.ndarray:
    """Which pseudo-labels of one image are true positives: ``bool [M]`` in ``pseudo``'s order.

    VOC's greedy rule: in descending score order (ties keep their order), each pseudo-label takes
    the ground-truth box of *its class* it overlaps most; it is a true positive when that IoU is
    strictly above ``iou_threshold`` (as the devkit and :mod:`lossmix.evaluation.voc`) and that box
    was not taken by a higher-scored pseudo-label. Otherwise (no overlap enough, another class only,
    or a duplicate of a taken box) it is a false positive. ``class_agnostic`` drops the class
    condition: then only the box is judged (a right box with a wrong class is a true positive).

    Args:
        pseudo: ``{"boxes": [M,4] xyxy, "classes": [M] 0-based, "scores": [M]}`` (:func:`filter_pseudo_labels`).
        gt_boxes / gt_classes: the image's ground truth, [G,4] xyxy in the same frame and [G] 0-based.
    """
    boxes = np.asarray(pseudo["boxes"], np.float64).reshape(-1, 4)
    classes = np.asarray(pseudo["classes"], np.int64)
    gt_classes = np.asarray(gt_classes, np.int64)
    tp = np.zeros(len(boxes), bool)
    if not len(boxes) or not len(gt_classes):
        return tp
    iou = box_iou(boxes, gt_boxes)
    if not class_agnostic:
        iou[classes[:, None] != gt_classes[None, :]] = -1.0  # the class must agree
    taken = np.zeros(len(gt_classes), bool)
    for i in np.argsort(-np.asarray(pseudo["scores"], np.float64), kind="stable"):
        best = int(np.argmax(iou[i]))
        if iou[i, best] > iou_threshold and not taken[best]:
            tp[i] = taken[best] = True
    return tp


def count_matches(pseudo: dict, gt_boxes: np.ndarray, gt_classes: np.ndarray, num_classes: int, *,
                  iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class ``(tp, fp, fn)`` counts (int64 [num_classes] each) of one image's pseudo-labels
    (:func:`match_pseudo_labels`): a false positive counts for the pseudo-label's class, a missed
    ground-truth box (false negative) for its own."""
    tp_mask = match_pseudo_labels(pseudo, gt_boxes, gt_classes, iou_threshold=iou_threshold)
    classes = np.asarray(pseudo["classes"], np.int64)
    tp = np.bincount(classes[tp_mask], minlength=num_classes)[:num_classes]
    fp = np.bincount(classes[~tp_mask], minlength=num_classes)[:num_classes]
    fn = np.bincount(np.asarray(gt_classes, np.int64), minlength=num_classes)[:num_classes] - tp
    return tp, fp, fn


def _ratio(num, den) -> float:
    return float(num) / float(den) if den else float("nan")


class PseudoLabelStats:
    """What the teacher's pseudo-labels were over a period (a log period of the trainer), pooled over its steps.

    :meth:`update` once per step with that step's pseudo-labels (and the target images' ground
    truth, when the target set has annotations); :meth:`summary` returns the period's metrics and
    starts a new period. Precision and recall are pooled counts (``sum tp / sum (tp + fp)``,
    ``sum tp / sum (tp + fn)`` over every image of the period), not means of per-step ratios. In a
    multi-process run each process pools its own images and the trainer averages the processes' values.

    Args:
        class_names: the detector's classes in label order (per-class keys use these names).
        iou_threshold: a pseudo-label matches a ground-truth box above this IoU (:func:`match_pseudo_labels`).
    """

    def __init__(self, *, class_names: Sequence[str], iou_threshold: float = 0.5):
        self.class_names = [str(c) for c in class_names]
        self.iou_threshold = iou_threshold
        self.reset()

    def reset(self) -> None:
        n = len(self.class_names)
        self.images = self.images_without = 0
        self.scores: list[np.ndarray] = []
        self.images_with_gt = 0
        self.tp, self.fp, self.fn = (np.zeros(n, np.int64) for _ in range(3))
        self.box_tp = 0  # pseudo-labels whose box matches a ground-truth box of any class

    def update(self, pseudo_labels: Sequence[dict], ground_truth: Optional[Sequence[Optional[dict]]] = None) -> None:
        """One step: ``pseudo_labels`` per image (:func:`filter_pseudo_labels`); ``ground_truth`` per image
        ``{"boxes": [G,4], "classes": [G]}`` in the pseudo-labels' frame, or None where there is none."""
        ground_truth = list(ground_truth) if ground_truth is not None else [None] * len(pseudo_labels)
        for pseudo, gt in zip(pseudo_labels, ground_truth):
            self.images += 1
            self.images_without += int(len(pseudo["boxes"]) == 0)
            self.scores.append(np.asarray(pseudo["scores"], np.float64).reshape(-1))
            if gt is not None:
                tp, fp, fn = count_matches(pseudo, gt["boxes"], gt["classes"], len(self.class_names),
                                           iou_threshold=self.iou_threshold)
                self.box_tp += int(match_pseudo_labels(pseudo, gt["boxes"], gt["classes"], class_agnostic=True,
                                                       iou_threshold=self.iou_threshold).sum())
                self.images_with_gt += 1
                self.tp += tp
                self.fp += fp
                self.fn += fn

    def summary(self) -> dict[str, float]:
        """The period's metrics (``{}`` when no step was recorded), then a new period starts.

        - ``pseudo_labels_per_image``; ``pseudo_images_without_labels``: the share of images with none;
        - ``pseudo_score_mean`` / ``_q25`` / ``_median`` / ``_q75``: the kept pseudo-labels' scores (NaN when none);
        - with ground truth: ``pseudo_precision``, ``pseudo_recall`` and their counts ``pseudo_tp`` /
          ``pseudo_fp`` / ``pseudo_fn``, and per class ``pseudo_precision/<class>``, ``pseudo_recall/<class>``
          (NaN where undefined: no pseudo-label, or no ground truth, of that class); ``pseudo_precision_box``:
          the share whose box matches a ground-truth box of any class (``pseudo_precision_box - pseudo_precision``
          is the share with a right box and a wrong class).
        """
        if not self.images:
            return {}
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0)
        q25, median, q75 = np.quantile(scores, [0.25, 0.5, 0.75]) if len(scores) else (float("nan"),) * 3
        out = {"pseudo_labels_per_image": len(scores) / self.images,
               "pseudo_images_without_labels": self.images_without / self.images,
               "pseudo_score_mean": float(scores.mean()) if len(scores) else float("nan"),
               "pseudo_score_q25": float(q25), "pseudo_score_median": float(median), "pseudo_score_q75": float(q75)}
        if self.images_with_gt:
            tp, fp, fn = int(self.tp.sum()), int(self.fp.sum()), int(self.fn.sum())
            out.update(pseudo_precision=_ratio(tp, tp + fp), pseudo_recall=_ratio(tp, tp + fn),
                       pseudo_precision_box=_ratio(self.box_tp, tp + fp),
                       pseudo_tp=float(tp), pseudo_fp=float(fp), pseudo_fn=float(fn))
            for c, name in enumerate(self.class_names):
                out[f"pseudo_precision/{name}"] = _ratio(self.tp[c], self.tp[c] + self.fp[c])
                out[f"pseudo_recall/{name}"] = _ratio(self.tp[c], self.tp[c] + self.fn[c])
        self.reset()
        return out


class NoPseudoLabelWatch:
    """Warns (once per streak) when no pseudo-label passes the threshold for ``patience`` iterations in a row.

    Args:
        patience: iterations without any pseudo-label before the warning (``DA.NO_PSEUDO_LABEL_WARN_ITERS``;
            0 = never warn).
        threshold: the score threshold, named in the message (``DA.PSEUDO_THRESHOLD``).
    """

    def __init__(self, *, patience: int, threshold: float):
        self.patience, self.threshold = int(patience), float(threshold)
        self.streak_start: Optional[int] = None
        self.streak = 0
        self.warned = False

    def update(self, iteration: int, num_labels: int) -> bool:
        """Record an iteration's pseudo-label count (over its whole batch); True when this call warned."""
        if num_labels > 0:
            self.streak_start, self.streak, self.warned = None, 0, False
            return False
        if self.streak == 0:
            self.streak_start = iteration
        self.streak += 1
        if self.patience <= 0 or self.warned or self.streak < self.patience:
            return False
        self.warned = True
        logger.warning("iteration %d: no teacher detection has reached DA.PSEUDO_THRESHOLD = %g for %d iterations in "
                       "a row (since iteration %d): the student gets no pseudo-labels on the target images",
                       iteration, self.threshold, self.streak, self.streak_start)
        return True


__all__ = ["filter_pseudo_labels", "build_pseudo_inputs", "box_iou", "match_pseudo_labels", "count_matches",
           "PseudoLabelStats", "NoPseudoLabelWatch"]
