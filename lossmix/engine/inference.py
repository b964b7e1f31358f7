"""Run a detector over a test loader and feed an evaluator; build evaluators from dataset metadata."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from typing import Iterable

import numpy as np
import torch

from ..data.catalog import MetadataCatalog
from ..data.loader import eval_dataset_dicts
from ..evaluation import COCOEvaluator, VOCDetectionEvaluator
from ..utils.threads import follow_thread_count

logger = logging.getLogger(__name__)


def images_to_device(batch: list[dict], device) -> list[torch.Tensor]:
    """The loader's uint8 CHW tensors, as they are, on ``device`` (the detector's transform converts them to
    float 0-1 and normalises with PIXEL_MEAN/STD)."""
    return [b["image"].to(device, non_blocking=True) for b in batch]


def targets_to_device(batch: list[dict], device) -> list[dict]:
    return [{k: v.to(device, non_blocking=True) for k, v in b["target"].items()} for b in batch]


def rescale_detections(det: dict, input_hw, output_hw) -> dict:
    """Boxes from the mapper's resized input back to the original image (detectron2's detector_postprocess)."""
    sy, sx = output_hw[0] / input_hw[0], output_hw[1] / input_hw[1]
    boxes = det["boxes"] * torch.tensor([sx, sy, sx, sy], device=det["boxes"].device)
    boxes[:, 0::2].clamp_(0, output_hw[1])
    boxes[:, 1::2].clamp_(0, output_hw[0])
    return {"boxes": boxes, "scores": det["scores"], "labels": det["labels"] - 1}  # back to 0-based classes


@contextlib.contextmanager
def modes_kept(modules: Iterable[torch.nn.Module]):
    """Restore every submodule's own train / eval flag on exit (``model.train(was_training)`` would set
    them all alike, waking a submodule that was deliberately left in eval mode)."""
    flags = [(m, m.training) for module in modules if module is not None for m in module.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def training_state_kept(models: Iterable[torch.nn.Module]):
    """Evaluation in the middle of training leaves the training untouched: on exit the random streams it reads
    (torch's CPU and CUDA generators, which the RPN / ROI samplers draw from; numpy's and Python's global ones)
    and every module's train / eval flag are as they were. (A test loader's iterator alone draws a seed from
    torch's global generator, which shifted every later sampling draw.)"""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices), modes_kept(models):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


@torch.no_grad()
def predict(model, batch: list[dict], device) -> list[dict]:
    """Detections per input, in original image coordinates, 0-based labels (CPU tensors)."""
    with modes_kept([model]):
        model.eval()
        outputs = model(images_to_device(batch, device))
    results = []
    for inp, det in zip(batch, outputs):
        det = {k: v.detach().cpu() for k, v in det.items()}
        out_hw = (inp.get("height", inp["image"].shape[1]), inp.get("width", inp["image"].shape[2]))
        results.append({"instances": rescale_detections(det, inp["image"].shape[1:], out_hw)})
    return results


def build_evaluator(cfg, dataset_name: str, *, dicts=None):
    """VOC (area or 11-point, with the dataset's class subset) or COCO, from metadata or ``TEST.METRIC``.
    ``dicts``: the evaluated split (default: loaded under ``TEST.ON_BAD_SAMPLE``)."""
    meta = MetadataCatalog.get(dataset_name)
    metric = cfg.TEST.METRIC
    if metric == "auto":
        if meta.get("evaluator_type", "voc") == "coco":
            metric = "coco"
        else:
            metric = "voc07" if meta.get("use_07_metric", False) else "voc_area"
    dicts = eval_dataset_dicts(cfg, dataset_name) if dicts is None else dicts
    classes = meta.get("thing_classes")
    if metric == "coco":
        return COCOEvaluator(dicts, classes)
    return VOCDetectionEvaluator(dicts, classes, use_07_metric=metric == "voc07", class_subset=meta.get("eval_classes"),
                                 exact_recall_levels=cfg.TEST.VOC07_RECALL_LEVELS == "exact")


def inference_on_dataset(model, loader, evaluator, device, *, progress=None, desc: str = "eval") -> dict:
    """Predict every batch of ``loader`` and feed ``evaluator``; returns ``evaluator.evaluate()``.

    ``progress``: a tqdm bar (None: on the main process only). Images a skipping test loader could not read
    arrive as None and get no detections.
    """
    from ..utils import comm

    evaluator.reset()
    iterator = loader
    if progress is None:
        progress = comm.is_main_process()
    if progress:
        from tqdm import tqdm

        iterator = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    for batch in iterator:
        follow_thread_count()  # a benchmark runner may hand this run idle cores
        batch = [b for b in batch if b is not None]
        if batch:
            evaluator.process(batch, predict(model, batch, device))
    return evaluator.evaluate()


def evaluate_dataset(cfg, model, dataset_name: str, device, *, role: str = "", dicts=None) -> dict:
    """Evaluate ``model`` on one registered test set, with a progress bar and a log line before and after.
    ``dicts``: the split when already read (default: :func:`eval_dataset_dicts`)."""
    from ..data.loader import build_test_loader

    dicts = eval_dataset_dicts(cfg, dataset_name) if dicts is None else dicts
    label = f"{dataset_name} ({role})" if role else dataset_name
    logger.info("evaluating %s: %d images", label, len(dicts))
    start = time.perf_counter()
    result = inference_on_dataset(model, build_test_loader(cfg, dataset_name, dicts=dicts),
                                  build_evaluator(cfg, dataset_name, dicts=dicts), device, desc=f"eval {label}")
    if result:
        score = result.get("AP50", result.get("AP"))
        logger.info("%s: AP50 %s%% (%s) in %.1f s", label, f"{score:.2f}" if isinstance(score, float) else score,
                    result.get("metric", "coco"), time.perf_counter() - start)
    return result


def write_eval(output_dir: str, dataset_name: str, result) -> None:
    """``output_dir/eval/<dataset_name>.json`` (main process only)."""
    from ..utils import comm

    if comm.is_main_process() and output_dir:
        os.makedirs(os.path.join(output_dir, "eval"), exist_ok=True)
        with open(os.path.join(output_dir, "eval", f"{dataset_name}.json"), "w") as f:
            json.dump(result, f, indent=1)


def evaluate(cfg, models: dict, device, dataset_names=None) -> dict:
    """Every model of ``models`` (``{role: model or None}``) on ``DATASETS.TEST`` (or the given names).

    Returns ``{dataset: {role: result}}`` (a None model gives a None result), the one result shape
    of :func:`lossmix.engine.run.run`, and writes each ``{role: result}`` to
    ``OUTPUT_DIR/eval/<dataset>.json``. Each dataset is read once per call, for every role.
    Training that continues after it is unchanged by it (:func:`training_state_kept`).
    """
    from ..utils import comm

    results = {}
    with training_state_kept(models.values()):
        for name in dataset_names or cfg.DATASETS.TEST:
            dicts = eval_dataset_dicts(cfg, name)
            per_role = {role: None if model is None else evaluate_dataset(
                cfg, model, name, device, role="" if role == "model" else role, dicts=dicts)
                for role, model in models.items()}
            write_eval(cfg.OUTPUT_DIR, name, per_role)
            if comm.is_main_process():
                results[name] = per_role
    return results
