"""PASCAL VOC detection metric: per-class AP at one IoU threshold and its mean, with the devkit's matching rules.

Box convention: ground truth and predictions are XYXY in continuous pixel coordinates. The VOC reader turns the
devkit's 1-based inclusive boxes ``(x1, y1, x2, y2)`` into ``(x1 - 1, y1 - 1, x2, y2)`` (as detectron2 does), so
the devkit's ``x2 - x1 + 1`` widths are exactly our ``x2 - x1``; that is why every IoU here is plain continuous
IoU with no ``+ 1``, and still equals the official one.
"""
from __future__ import annotations

import logging
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

from lossmix.structures import to_xyxy
from lossmix.utils import comm

__all__ = ["voc_ap", "evaluate_class", "VOCDetectionEvaluator", "PredictionStore", "format_table"]

logger = logging.getLogger(__name__)

# The 11 recall levels of the VOC2007 metric. Default: np.arange(0, 1.1, 0.1), as detectron2 and py-faster-rcnn
# compute them, for numbers comparable with published ones; its 0.30000000000000004, 0.6000000000000001 and
# 0.7000000000000001 make a recall of exactly 0.3 / 0.6 / 0.7 miss that level (up to ~6e-4 AP). The exact
# decimals k / 10 (the devkit's intent) are an option (``exact_recall_levels``, TEST.VOC07_RECALL_LEVELS exact).
VOC_METRICS = ("voc_area", "voc07")  # VOC2010+ area AP50 | VOC2007 11-point AP50 (TEST.METRIC, DATASETS.CUSTOM_METRIC)
RECALL_LEVEL_CHOICES = ("arange", "exact")  # TEST.VOC07_RECALL_LEVELS: the levels below | k / 10
VOC07_RECALL_LEVELS = np.arange(0.0, 1.1, 0.1)
VOC07_EXACT_RECALL_LEVELS = np.arange(11) / 10.0


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool, *, exact_recall_levels: bool = False) -> float:
    """Average precision of one class from its PR curve, as the VOC devkit computes it.

    Args:
        recall, precision: float arrays [D], one point per ranked detection, recall non-decreasing.
        use_07_metric: True for VOC2007's 11-point metric (mean over t in {0, 0.1, ..., 1} of the highest
            precision at recall >= t, 0 where no point reaches t); False for the VOC2010+ metric, the area under
            the curve after precision is made monotone (each point takes the highest precision at any higher recall).
        exact_recall_levels: 11-point levels k / 10 exactly; by default they are detectron2's and py-faster-rcnn's
            ``np.arange(0, 1.1, 0.1)``, where a recall of exactly 0.3, 0.6 or 0.7 does not reach its level.

    Returns:
        AP in [0, 1]; 0 for an empty curve.
    """
    recall = np.asarray(recall, dtype=np.float64).ravel()
    precision = np.asarray(precision, dtype=np.float64).ravel()
    if recall.shape != precision.shape:
        raise ValueError(f"recall has shape {recall.shape} but precision has shape {precision.shape}")
    if use_07_metric:
        ap = 0.0
        for t in VOC07_EXACT_RECALL_LEVELS if exact_recall_levels else VOC07_RECALL_LEVELS:
            reached = recall >= t
            ap += (precision[reached].max() if reached.any() else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, right to left
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of rows a[i] and b[i] (both [P, 4] XYXY, continuous coordinates); 0 where the union is empty."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0.0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0.0, None)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _evaluate_arrays(
    det_image: np.ndarray,
    det_scores: np.ndarray,
    det_boxes: np.ndarray,
    gt_image: np.ndarray,
    gt_boxes: np.ndarray,
    gt_difficult: np.ndarray,
    num_images: int,
    iou_thresh: float,
    use_07_metric: bool,
    exact_recall_levels: bool = False,
) -> dict:
    """`evaluate_class` on arrays. Images are integers in [0, num_images); detections come in input order.

    Every detection is compared with all ground truth boxes of its image at once (one row per (detection, gt)
    pair, so memory is the sum over images of detections x gts), and the devkit's sequential "already detected"
    bookkeeping is replaced by an equivalent closed form: a detection's target gt is fixed (its max-IoU gt,
    whatever was matched before), so it is a TP exactly when it is the first detection, in score order, to hit
    that non-difficult gt above the threshold.
    """
    det_image = np.asarray(det_image, dtype=np.int64)
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_difficult = np.asarray(gt_difficult, dtype=bool)
    gt_order = np.argsort(np.asarray(gt_image, dtype=np.int64), kind="stable")
    gt_image = np.asarray(gt_image, dtype=np.int64)[gt_order]
    gt_boxes, gt_difficult = gt_boxes[gt_order], gt_difficult[gt_order]
    npos = int(np.count_nonzero(~gt_difficult))

    # Stable descending sort: equal scores keep their input order, as MATLAB's sort does in the devkit.
    order = np.argsort(-np.asarray(det_scores, dtype=np.float64), kind="stable")
    det_image, det_boxes = det_image[order], det_boxes[order]
    num_dets = len(order)

    gt_count = np.bincount(gt_image, minlength=num_images)
    gt_start = np.cumsum(gt_count) - gt_count
    pairs_per_det = gt_count[det_image]
    pair_start = np.cumsum(pairs_per_det) - pairs_per_det
    num_pairs = int(pairs_per_det.sum())
    pair_det = np.repeat(np.arange(num_dets), pairs_per_det)
    pair_gt = np.repeat(gt_start[det_image] - pair_start, pairs_per_det) + np.arange(num_pairs)
    iou = _pairwise_iou(det_boxes[pair_det], gt_boxes[pair_gt])

    best_iou = np.full(num_dets, -np.inf)  # -inf: no gt in the image, so never matched
    best_gt = np.zeros(num_dets, dtype=np.int64)
    has_gt = pairs_per_det > 0
    if num_pairs:
        best_iou[has_gt] = np.maximum.reduceat(iou, pair_start[has_gt])
        # First pair reaching its detection's maximum: ties go to the lowest gt index, like argmax.
        at_max = np.flatnonzero(iou == best_iou[pair_det])
        first = np.concatenate(([True], pair_det[at_max][1:] != pair_det[at_max][:-1]))
        best_gt[pair_det[at_max[first]]] = pair_gt[at_max[first]]

    hit = best_iou > iou_thresh  # strictly greater, as in the devkit
    hits_difficult = np.zeros(num_dets, dtype=bool)  # ignored: neither TP nor FP
    hits_difficult[hit] = gt_difficult[best_gt[hit]]
    candidate = np.flatnonzero(hit & ~hits_difficult)
    tp = np.zeros(num_dets, dtype=bool)
    _, first_hit = np.unique(best_gt[candidate], return_index=True)
    tp[candidate[first_hit]] = True
    fp = ~hit | (hit & ~hits_difficult & ~tp)  # no match, or a duplicate of a detected gt

    tp_cum = np.cumsum(tp, dtype=np.float64)
    fp_cum = np.cumsum(fp, dtype=np.float64)
    # eps: a prefix of ignored detections has tp + fp == 0; its precision is 0 at recall 0, which changes no AP.
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    if npos == 0:
        # No positives: recall is undefined, and so is AP; the mean AP skips such classes.
        return {"ap": float("nan"), "recall": np.full(num_dets, np.nan), "precision": precision, "npos": 0}
    recall = tp_cum / npos
    return {"ap": voc_ap(recall, precision, use_07_metric, exact_recall_levels=exact_recall_levels), "recall": recall, "precision": precision, "npos": npos}


def evaluate_class(
    detections: Iterable[tuple[Hashable, float, Sequence[float]]],
    ground_truth: Mapping[Hashable, tuple[np.ndarray, np.ndarray]],
    iou_thresh: float = 0.5,
    use_07_metric: bool = False,
    exact_recall_levels: bool = False,
) -> dict:
    """AP of one class with the VOC devkit's rules (``exact_recall_levels``: see :func:`voc_ap`).

    Detections are ranked by score (descending, ties in input order). Each is compared with the ground truth
    box of its image it overlaps most; if that IoU > ``iou_thresh``: a difficult gt makes the detection ignored
    (neither TP nor FP), an undetected gt makes it a TP and marks the gt, an already detected gt makes it a FP
    (duplicate). Otherwise it is a FP. Non-difficult gts that no detection marks are misses.

    Args:
        detections: ``(image_id, score, box)`` tuples, box ``[x1, y1, x2, y2]``.
        ground_truth: ``image_id -> (boxes [M, 4] float, difficult [M] bool)``, this class's boxes only. An image
            missing from it has no gt of this class (its detections are FPs).

    Returns:
        ``{"ap": float, "recall": [D], "precision": [D], "npos": int}``: recall/precision per ranked detection;
        ``npos`` counts the non-difficult gts. With ``npos == 0`` both AP and recall are NaN.
    """
    index: dict = {image_id: i for i, image_id in enumerate(ground_truth)}
    gt_image, gt_boxes, gt_difficult = [], [], []
    for image_id, (boxes, difficult) in ground_truth.items():
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        difficult = np.asarray(difficult, dtype=bool).ravel()
        if len(difficult) != len(boxes):
            raise ValueError(f"image {image_id!r}: {len(boxes)} gt boxes but {len(difficult)} difficult flags")
        gt_image.append(np.full(len(boxes), index[image_id]))
        gt_boxes.append(boxes)
        gt_difficult.append(difficult)
    det_image, det_scores, det_boxes = [], [], []
    for image_id, score, box in detections:
        det_image.append(index.setdefault(image_id, len(index)))
        det_scores.append(float(score))
        det_boxes.append(np.asarray(box, dtype=np.float64).reshape(4))
    return _evaluate_arrays(
        np.asarray(det_image, dtype=np.int64),
        np.asarray(det_scores, dtype=np.float64),
        np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4),
        np.concatenate(gt_image) if gt_image else np.zeros(0, dtype=np.int64),
        np.concatenate(gt_boxes) if gt_boxes else np.zeros((0, 4)),
        np.concatenate(gt_difficult) if gt_difficult else np.zeros(0, dtype=bool),
        num_images=len(index),
        iou_thresh=iou_thresh,
        use_07_metric=use_07_metric,
        exact_recall_levels=exact_recall_levels,
    )


def _to_numpy(value, dtype) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, possibly on an accelerator
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


class PredictionStore:
    """Per-image predictions collected by an evaluator's ``process`` and gathered to rank 0 at the end.

    Holds ``image index -> (boxes [N, 4] float64 XYXY, scores [N] float64, labels [N] int64)``; the index is the
    image's position in the dataset, and every image id must be one the dataset holds.
    """

    def __init__(self, image_ids: Sequence[Hashable], num_classes: int):
        self._index: dict = {}
        for i, image_id in enumerate(image_ids):
            if image_id in self._index:
                raise ValueError(f"image_id {image_id!r} appears twice in the dataset")
            self._index[image_id] = i
        self._num_classes = num_classes
        self._per_image: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def reset(self) -> None:
        self._per_image = {}

    def add(self, inputs: Sequence[Mapping], outputs: Sequence[Mapping]) -> None:
        """Record one batch: ``inputs[i]["image_id"]`` and ``outputs[i]["instances"]`` with boxes/scores/labels."""
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        for inp, out in zip(inputs, outputs):
            image_id = inp["image_id"]
            if image_id not in self._index:
                raise ValueError(f"prediction for image_id {image_id!r}, which is not in the evaluated dataset")
            index = self._index[image_id]
            if index in self._per_image:
                # A padded distributed sampler repeats images; counting them twice would add false duplicates.
                raise ValueError(f"image_id {image_id!r} was processed twice")
            instances = out["instances"]
            boxes = _to_numpy(instances["boxes"], np.float64).reshape(-1, 4)
            scores = _to_numpy(instances["scores"], np.float64).ravel()
            labels = _to_numpy(instances["labels"], np.int64).ravel()
            if not len(boxes) == len(scores) == len(labels):
                raise ValueError(
                    f"image_id {image_id!r}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
                )
            if len(labels) and (labels.min() < 0 or labels.max() >= self._num_classes):
                raise ValueError(
                    f"image_id {image_id!r}: labels must be 0-based class ids in [0, {self._num_classes}), "
                    f"got range [{labels.min()}, {labels.max()}]"
                )
            self._per_image[index] = (boxes, scores, labels)

    def gather(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
        """All ranks' predictions merged on rank 0; None on the other ranks."""
        if comm.get_world_size() == 1:
            return dict(self._per_image)
        parts = comm.all_gather(self._per_image)
        if not comm.is_main_process():
            return None
        merged: dict = {}
        for part in parts:
            for index, prediction in part.items():
                if index in merged:
                    image_id = next(k for k, v in self._index.items() if v == index)
                    raise ValueError(f"image_id {image_id!r} was processed on more than one rank")
                merged[index] = prediction
        return merged

    def __len__(self) -> int:
        return len(self._per_image)


class VOCDetectionEvaluator:
    """PASCAL VOC mAP at one IoU threshold over a dataset of detectron2-style dicts.

    ``process(inputs, outputs)`` per batch, then ``evaluate()``. Images of the dataset that received no
    prediction still count (their gts are misses). A class with no non-difficult gt has NaN AP and is left out
    of the mean.
    """

    def __init__(
        self,
        dataset_dicts: Sequence[Mapping],
        class_names: Sequence[str],
        *,
        use_07_metric: bool = False,
        class_subset: Sequence[str] | None = None,
        iou_thresh: float = 0.5,
        exact_recall_levels: bool = False,
    ):
        """
        Args:
            dataset_dicts: the evaluated split; each dict needs ``image_id`` and ``annotations`` (``bbox``,
                ``bbox_mode``, 0-based ``category_id``, optional ``difficult``).
            class_names: names of the model's classes, indexed by category id.
            use_07_metric: VOC2007 11-point AP instead of the area under the monotone PR curve.
            class_subset: names of the classes to evaluate (e.g. Watercolor's six); the mean is over these only and
                detections of other classes are ignored. None: all classes.
            iou_thresh: a detection matches a gt when their IoU is strictly greater than this.
            exact_recall_levels: 11-point levels k / 10 instead of detectron2's ``np.arange(0, 1.1, 0.1)``
                (see :func:`voc_ap`).
        """
        self._class_names = list(class_names)
        if class_subset is None:
            self._classes = list(range(len(self._class_names)))
        else:
            unknown = [name for name in class_subset if name not in self._class_names]
            if unknown:
                raise ValueError(f"class_subset names {unknown} are not among class_names {self._class_names}")
            self._classes = [self._class_names.index(name) for name in class_subset]
        self._use_07_metric = use_07_metric
        self._exact_recall_levels = exact_recall_levels
        self._iou_thresh = iou_thresh
        self._num_images = len(dataset_dicts)
        self._predictions = PredictionStore([d["image_id"] for d in dataset_dicts], len(self._class_names))

        gt_image, gt_label, gt_boxes, gt_difficult = [], [], [], []
        for i, record in enumerate(dataset_dicts):
            for ann in record.get("annotations", []):
                category = int(ann["category_id"])
                if not 0 <= category < len(self._class_names):
                    raise ValueError(f"image_id {record['image_id']!r}: category_id {category} is out of range")
                gt_image.append(i)
                gt_label.append(category)
                gt_boxes.append(to_xyxy(ann["bbox"], ann.get("bbox_mode", 0)))
                gt_difficult.append(bool(ann.get("difficult", 0)))
        self._gt_image = np.asarray(gt_image, dtype=np.int64)
        self._gt_label = np.asarray(gt_label, dtype=np.int64)
        self._gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        self._gt_difficult = np.asarray(gt_difficult, dtype=bool)

    def reset(self) -> None:
        self._predictions.reset()

    def process(self, inputs: Sequence[Mapping], outputs: Sequence[Mapping]) -> None:
        """Record a batch. inputs: dicts with ``image_id``; outputs: ``{"instances": {"boxes", "scores", "labels"}}``
        with boxes [N, 4] XYXY in original image pixels and 0-based labels."""
        self._predictions.add(inputs, outputs)

    def evaluate(self) -> dict:
        """``{"AP50": mAP * 100, "per_class": {name: AP * 100}, "metric": "voc07_11point" | "area",
        "num_images": n}`` on rank 0; ``{}`` on other ranks."""
        per_image = self._predictions.gather()
        if per_image is None:
            return {}
        if len(per_image) < self._num_images:
            logger.warning("%d of %d images received no predictions", self._num_images - len(per_image),
                           self._num_images)
        indices = sorted(per_image)
        counts = [len(per_image[i][1]) for i in indices]
        det_image = np.repeat(np.asarray(indices, dtype=np.int64), counts)
        det_boxes = np.concatenate([per_image[i][0] for i in indices] + [np.zeros((0, 4))])
        det_scores = np.concatenate([per_image[i][1] for i in indices] + [np.zeros(0)])
        det_labels = np.concatenate([per_image[i][2] for i in indices] + [np.zeros(0, dtype=np.int64)])
        # Group by class once; the stable sort keeps each class's detections in input order (score tie-break).
        by_label = np.argsort(det_labels, kind="stable")
        bounds = np.searchsorted(det_labels[by_label], np.arange(len(self._class_names) + 1))

        per_class = {}
        for c in self._classes:
            det = by_label[bounds[c]:bounds[c + 1]]
            gt = self._gt_label == c
            result = _evaluate_arrays(
                det_image[det], det_scores[det], det_boxes[det],
                self._gt_image[gt], self._gt_boxes[gt], self._gt_difficult[gt],
                num_images=self._num_images, iou_thresh=self._iou_thresh, use_07_metric=self._use_07_metric,
                exact_recall_levels=self._exact_recall_levels,
            )
            per_class[self._class_names[c]] = result["ap"] * 100.0
        defined = [ap for ap in per_class.values() if not np.isnan(ap)]
        return {
            "AP50": float(np.mean(defined)) if defined else float("nan"),
            "per_class": per_class,
            "metric": ("voc07_11point_exact" if self._exact_recall_levels else "voc07_11point")
            if self._use_07_metric else "area",
            "num_images": self._num_images,
        }


def format_table(result: Mapping) -> str:
    """Plain-text table of ``VOCDetectionEvaluator.evaluate()``'s result: one row per class, then the mean."""
    rows = list(result["per_class"].items()) + [("mAP", result["AP50"])]
    width = max(len("class"), *(len(name) for name, _ in rows))
    header = f"{'class':<{width}}  AP50 (%, {result.get('metric', '?')})"
    lines = [header, "-" * len(header)]
    for name, ap in rows:
        if name == "mAP":
            lines.append("-" * len(header))
        lines.append(f"{name:<{width}}  {'n/a' if np.isnan(ap) else f'{ap:.2f}':>6}")
    return "\n".join(lines)
