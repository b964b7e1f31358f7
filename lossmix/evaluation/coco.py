"""COCO-style box AP (IoU 0.50:0.95, by object size) of a dataset of detectron2-style dicts, via pycocotools."""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lossmix.evaluation.voc import PredictionStore
from lossmix.structures import to_xyxy

__all__ = ["COCOEvaluator"]

logger = logging.getLogger(__name__)

# Order of COCOeval.stats for the box metrics we report.
_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class COCOEvaluator:
    """COCO box AP of predictions against ground truth built in memory from the dataset dicts.

    Difficult boxes become ``iscrowd=1``: COCOeval then counts them as neither positives nor misses, and a
    detection it matches to one (by intersection over the *detection's* area, COCO's crowd rule) is neither TP
    nor FP. Same ``reset``/``process``/``evaluate`` API as ``VOCDetectionEvaluator``.
    """

    def __init__(self, dataset_dicts: Sequence[Mapping], class_names: Sequence[str], *, verbose: bool = False):
        """
        Args:
            dataset_dicts: the evaluated split (``image_id``, ``height``, ``width``, ``annotations``).
            class_names: names of the model's classes, indexed by 0-based category id.
            verbose: let pycocotools print its progress and summary table.
        """
        self._class_names = list(class_names)
        self._verbose = verbose
        self._predictions = PredictionStore([d["image_id"] for d in dataset_dicts], len(self._class_names))
        images, annotations = [], []
        for i, record in enumerate(dataset_dicts):
            images.append({"id": i, "height": int(record["height"]), "width": int(record["width"]),
                           "file_name": record.get("file_name", "")})
            for ann in record.get("annotations", []):
                x1, y1, x2, y2 = to_xyxy(ann["bbox"], ann.get("bbox_mode", 0))
                w, h = x2 - x1, y2 - y1
                annotations.append({
                    "id": len(annotations) + 1,  # COCOeval uses 0 for "unmatched", so ids start at 1
                    "image_id": i,
                    "category_id": int(ann["category_id"]),
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": int(bool(ann.get("difficult", 0))),
                })
        self._gt_dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c, "name": name} for c, name in enumerate(self._class_names)],
        }

    def reset(self) -> None:
        self._predictions.reset()

    def process(self, inputs: Sequence[Mapping], outputs: Sequence[Mapping]) -> None:
        """Record a batch. inputs: dicts with ``image_id``; outputs: ``{"instances": {"boxes", "scores", "labels"}}``
        with boxes [N, 4] XYXY in original image pixels and 0-based labels."""
        self._predictions.add(inputs, outputs)

    def evaluate(self) -> dict:
        """``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` in percent on rank 0 (``{}`` on other ranks).

        0 for every metric when there are no predictions; NaN for a size range without ground truth.
        """
        per_image = self._predictions.gather()
        if per_image is None:
            return {}
        results = []
        for index, (boxes, scores, labels) in sorted(per_image.items()):
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
            results.extend(
                {"image_id": index, "category_id": int(label), "bbox": [float(v) for v in box], "score": float(score)}
                for box, score, label in zip(xywh, scores, labels)
            )
        if not results:
            logger.warning("COCOEvaluator: no predictions; every AP is 0")
            return {name: 0.0 for name in _METRICS}

        quiet = contextlib.nullcontext() if self._verbose else contextlib.redirect_stdout(io.StringIO())
        with quiet:
            coco_gt = COCO()
            coco_gt.dataset = self._gt_dataset
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(results)
            coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        # COCOeval reports -1 where a size range has no ground truth.
        return {name: float(v) * 100.0 if v >= 0 else float("nan") for name, v in zip(_METRICS, coco_eval.stats)}
