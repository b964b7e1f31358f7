"""lossmix's extra dataset names in detectron2's catalog (detectron2 registers the VOC ones itself).

=========================================  ====================================  ===============
name                                       folder under ``$LOSSMIX_DATASETS``    evaluation
=========================================  ====================================  ===============
``synthetic_<domain>_<split>``              ``synthetic/<domain>`` (VOC format)   VOC area AP
``clipart_train`` / ``clipart_test``        ``clipart`` (20 VOC classes)          VOC area AP
``watercolor_*`` / ``comic_*``              ``watercolor`` / ``comic``            its 6 classes
=========================================  ====================================  ===============

``<domain>``: source, clipart, watercolor; ``<split>``: train, test. ``$LOSSMIX_DATASETS`` defaults
to ``./datasets``, as on the torchvision side; ``tools/make_synthetic.py`` writes the synthetic folders.
Evaluation: detectron2's ``PascalVOCDetectionEvaluator`` (``year`` 2012 = area under the
precision-recall curve, 2007 = 11 points).
"""
from __future__ import annotations

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import load_voc_instances
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

from ..data.builtin import WATERCOLOR_CLASSES, datasets_root
from ..data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_DOMAINS
from ..data.voc import VOC_CLASSES


def register_voc_folder(name: str, folder: str, split: str, classes, year: int = 2012, hint: str = "",
                        eval_classes=None) -> None:
    """Register a VOC-format folder (``Annotations/``, ``JPEGImages/*.jpg``, ``ImageSets/Main/<split>.txt``)
    as detectron2's ``register_pascal_voc`` does; a missing folder fails when loaded, naming it."""

    def load():
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"dataset {name!r} expects the VOC-format folder {folder!r}{hint}")
        return load_voc_instances(folder, split, tuple(classes))

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(thing_classes=list(classes), dirname=folder, year=year, split=split,
                                  evaluator_type="pascal_voc", eval_classes=list(eval_classes or classes))


def register_lossmix_datasets(root: str | None = None) -> list:
    """Register the names in the module docstring (those not registered yet); returns the new names."""
    root = root or datasets_root()
    synthetic_hint = f"; write it with: python tools/make_synthetic.py --root {os.path.join(root, 'synthetic')}"
    entries = [(f"synthetic_{d}_{s}", os.path.join(root, "synthetic", d), s, SYNTHETIC_CLASSES, synthetic_hint, None)
               for d in SYNTHETIC_DOMAINS for s in ("train", "test")]
    entries += [(f"clipart_{s}", os.path.join(root, "clipart"), s, VOC_CLASSES, "; see datasets/README.md", None)
                for s in ("train", "test")]
    entries += [(f"{sub}_{s}", os.path.join(root, sub), s, VOC_CLASSES, "; see datasets/README.md", WATERCOLOR_CLASSES)
                for sub in ("watercolor", "comic") for s in ("train", "test")]
    added = []
    for name, folder, split, classes, hint, eval_classes in entries:
        if name not in DatasetCatalog.list():
            register_voc_folder(name, folder, split, classes, hint=hint, eval_classes=eval_classes)
            added.append(name)
    return added


class ClassSubsetVOCEvaluator(PascalVOCDetectionEvaluator):
    """detectron2's VOC evaluator over the ``eval_classes`` of a dataset only (Watercolor2k / Comic2k: 6 of the
    20 VOC classes a VOC-trained detector predicts); detections of the other classes are left out."""

    def __init__(self, dataset_name: str, eval_classes):
        super().__init__(dataset_name)
        self._keep = [self._class_names.index(c) for c in eval_classes]

    def evaluate(self):
        names, predictions = self._class_names, self._predictions
        self._class_names = [names[i] for i in self._keep]
        self._predictions = {new: predictions.get(old, []) for new, old in enumerate(self._keep)}
        try:
            return super().evaluate()
        finally:
            self._class_names, self._predictions = names, predictions


def build_evaluator(cfg, dataset_name: str, output_folder: str | None = None):
    """detectron2's evaluator for ``dataset_name``, chosen from its metadata (``evaluator_type``, ``eval_classes``)."""
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = meta.get("evaluator_type", "pascal_voc")
    if evaluator_type == "pascal_voc":
        eval_classes = meta.get("eval_classes", None)
        if eval_classes and list(eval_classes) != list(meta.thing_classes):
            return ClassSubsetVOCEvaluator(dataset_name, eval_classes)
        return PascalVOCDetectionEvaluator(dataset_name)
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))
    raise NotImplementedError(f"no evaluator for {dataset_name!r} (evaluator_type {evaluator_type!r})")
