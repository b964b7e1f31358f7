"""Time VOCDetectionEvaluator on a VOC-sized synthetic split; prints one JSON object.

5,000 images x 20 classes. Each image holds a few classes (each present with probability 0.15) with ~3 gts each
(10% difficult); the model gives 10 detections per image per class (1M in all): for present classes about half
are jittered copies of gts (TPs, duplicates, near misses), the rest are random boxes.
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch

from lossmix.evaluation import VOCDetectionEvaluator

NUM_IMAGES = 5000
NUM_CLASSES = 20
DETS_PER_IMAGE_PER_CLASS = 10
SIZE = 500.0


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, SIZE * 0.8, size=(n, 2))
    wh = rng.uniform(10, SIZE * 0.4, size=(n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, SIZE)], axis=1)


def make_problem(rng: np.random.Generator):
    class_names = [f"class{c}" for c in range(NUM_CLASSES)]
    dataset, outputs = [], []
    for i in range(NUM_IMAGES):
        annotations, det_boxes, det_labels = [], [], []
        for c in range(NUM_CLASSES):
            gts = np.zeros((0, 4))
            if rng.random() < 0.15:
                gts = _random_boxes(rng, max(1, rng.poisson(3)))
                annotations += [{"bbox": list(b), "bbox_mode": 0, "category_id": c,
                                 "difficult": int(rng.random() < 0.1)} for b in gts]
            num_copies = DETS_PER_IMAGE_PER_CLASS // 2 if len(gts) else 0
            copies = gts[rng.integers(0, len(gts), size=num_copies)] + rng.normal(0, 8, size=(num_copies, 4))
            det_boxes.append(np.concatenate([copies, _random_boxes(rng, DETS_PER_IMAGE_PER_CLASS - num_copies)]))
            det_labels.append(np.full(DETS_PER_IMAGE_PER_CLASS, c))
        boxes = np.concatenate(det_boxes)
        dataset.append({"file_name": f"{i}.jpg", "height": int(SIZE), "width": int(SIZE), "image_id": str(i),
                        "annotations": annotations})
        outputs.append({"instances": {
            "boxes": torch.from_numpy(boxes).float(),
            "scores": torch.from_numpy(rng.random(len(boxes))).float(),
            "labels": torch.from_numpy(np.concatenate(det_labels)),
        }})
    return dataset, outputs, class_names


def main() -> None:
    rng = np.random.default_rng(0)
    dataset, outputs, class_names = make_problem(rng)
    report = {
        "num_images": NUM_IMAGES,
        "num_classes": NUM_CLASSES,
        "num_detections": int(sum(len(o["instances"]["scores"]) for o in outputs)),
        "num_gt": int(sum(len(d["annotations"]) for d in dataset)),
    }
    for use_07_metric, name in ((False, "area"), (True, "voc07_11point")):
        evaluator = VOCDetectionEvaluator(dataset, class_names, use_07_metric=use_07_metric)
        start = time.perf_counter()
        for record, output in zip(dataset, outputs):
            evaluator.process([record], [output])
        process_s = time.perf_counter() - start
        start = time.perf_counter()
        result = evaluator.evaluate()
        report[f"{name}_process_s"] = round(process_s, 4)
        report[f"{name}_evaluate_s"] = round(time.perf_counter() - start, 4)
        report[f"{name}_AP50"] = round(result["AP50"], 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
