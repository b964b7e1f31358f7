"""Evaluation: run detectors over test loaders, feed evaluators (built from dataset metadata), write ``eval/<name>.json``."""
from __future__ import annotations

import json
import logging
import os
from typing import Optional

import torch

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..data.loader import build_test_loader
from ..evaluation import COCOEvaluator, VOCDetectionEvaluator
from ..utils import comm

logger = logging.getLogger(__name__)


def images_to_device(batch: list[dict], device) -> list[torch.Tensor]:
    """uint8 CHW tensors -> float 0-1 on ``device`` (the detector normalises with PIXEL_MEAN/STD)."""
    return [b["image"].to(device, non_blocking=True).float().div_(255.0) for b in batch]


def targets_to_device(batch: list[dict], device) -> list[dict]:
    return [{k: v.to(device, non_blocking=True) for k, v in b["target"].items()} for b in batch]


def rescale_detections(det: dict, input_hw, output_hw) -> dict:
    """Boxes from the mapper's resized input back to the original image (detectron2's detector_postprocess)."""
    sy, sx = output_hw[0] / input_hw[0], output_hw[1] / input_hw[1]
    boxes = det["boxes"] * torch.tensor([sx, sy, sx, sy], device=det["boxes"].device)
    boxes[:, 0::2].clamp_(0, output_hw[1])
    boxes[:, 1::2].clamp_(0, output_hw[0])
    return {"boxes": boxes, "scores": det["scores"], "labels": det["labels"] - 1}  # back to 0-based classes


@torch.no_grad()
def predict(model, batch: list[dict], device) -> list[dict]:
    """Detections per input, in original image coordinates, 0-based labels (CPU tensors)."""
    was_training = model.training
    model.eval()
    try:
        outputs = model(images_to_device(batch, device))
    finally:
        model.train(was_training)
    results = []
    for inp, det in zip(batch, outputs):
        det = {k: v.detach().cpu() for k, v in det.items()}
        out_hw = (inp.get("height", inp["image"].shape[1]), inp.get("width", inp["image"].shape[2]))
        results.append({"instances": rescale_detections(det, inp["image"].shape[1:], out_hw)})
    return results


def build_evaluator(cfg, dataset_name: str, dicts: Optional[list[dict]] = None):
    """VOC (area or 11-point, with the dataset's class subset) or COCO, from metadata or ``TEST.METRIC``.

    ``dicts``: the dataset's dicts when already read (else read from the catalog)."""
    meta = MetadataCatalog.get(dataset_name)
    metric = cfg.TEST.METRIC
    if metric == "auto":
        if meta.get("evaluator_type", "voc") == "coco":
            metric = "coco"
        else:
            metric = "voc07" if meta.get("use_07_metric", False) else "voc_area"
    dicts = DatasetCatalog.get(dataset_name) if dicts is None else dicts
    classes = meta.get("thing_classes")
    if metric == "coco":
        return COCOEvaluator(dicts, classes)
    return VOCDetectionEvaluator(dicts, classes, use_07_metric=metric == "voc07", class_subset=meta.get("eval_classes"))


def inference_on_dataset(model, loader, evaluator, device, *, progress: bool = False) -> dict:
    evaluator.reset()
    iterator = loader
    if progress:
        from tqdm import tqdm

        iterator = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    for batch in iterator:
        evaluator.process(batch, predict(model, batch, device))
    return evaluator.evaluate()


def write_eval(output_dir: str, dataset_name: str, result) -> None:
    """``output_dir/eval/<dataset_name>.json`` (main process only)."""
    if comm.is_main_process() and output_dir:
        os.makedirs(os.path.join(output_dir, "eval"), exist_ok=True)
        with open(os.path.join(output_dir, "eval", f"{dataset_name}.json"), "w") as f:
            json.dump(result, f, indent=1)


def evaluate(cfg, models: dict, device, dataset_names=None) -> dict:
    """Every model of ``models`` (``{role: model or None}``) on ``DATASETS.TEST`` (or the given names).

    Returns ``{dataset: {role: result}}`` (a None model gives a None result), the one result shape
    of :func:`lossmix.engine.run.run`, and writes each ``{role: result}`` to
    ``OUTPUT_DIR/eval/<dataset>.json``. Each dataset is read from the catalog once per call.
    """
    results = {}
    for name in dataset_names or cfg.DATASETS.TEST:
        dicts = DatasetCatalog.get(name)
        per_role = {}
        for role, model in models.items():
            per_role[role] = None if model is None else inference_on_dataset(
                model, build_test_loader(cfg, name, dicts=dicts), build_evaluator(cfg, name, dicts), device)
        write_eval(cfg.OUTPUT_DIR, name, per_role)
        if comm.is_main_process():
            results[name] = per_role
    return results
