"""lossmix's extra dataset names in detectron2's catalog (detectron2 registers the VOC ones itself).

=========================================  ====================================  ===============
name                                       folder under ``$LOSSMIX_DATASETS``    evaluation
=========================================  ====================================  ===============
``synthetic_<domain>_<split>``              ``synthetic/<domain>`` (VOC format)   VOC area AP
``clipart_train`` / ``clipart_test``        ``clipart`` (20 VOC classes)          VOC area AP
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

from ..data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_DOMAINS
from ..data.voc import VOC_CLASSES


def datasets_root() -> str:
    return os.environ.get("LOSSMIX_DATASETS", "datasets")


def register_voc_folder(name: str, folder: str, split: str, classes, year: int = 2012, hint: str = "") -> None:
    """Register a VOC-format folder (``Annotations/``, ``JPEGImages/*.jpg``, ``ImageSets/Main/<split>.txt``)
    as detectron2's ``register_pascal_voc`` does; a missing folder fails when loaded, naming it."""

    def load():
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"dataset {name!r} expects the VOC-format folder {folder!r}{hint}")
        return load_voc_instances(folder, split, tuple(classes))

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(thing_classes=list(classes), dirname=folder, year=year, split=split,
                                  evaluator_type="pascal_voc")


def register_lossmix_datasets(root: str | None = None) -> list:
    """Register the names in the module docstring (those not registered yet); returns the new names."""
    root = root or datasets_root()
    synthetic_hint = f"; write it with: python tools/make_synthetic.py --root {os.path.join(root, 'synthetic')}"
    entries = [(f"synthetic_{d}_{s}", os.path.join(root, "synthetic", d), s, SYNTHETIC_CLASSES, synthetic_hint)
               for d in SYNTHETIC_DOMAINS for s in ("train", "test")]
    entries += [(f"clipart_{s}", os.path.join(root, "clipart"), s, VOC_CLASSES, "; see datasets/README.md")
                for s in ("train", "test")]
    added = []
    for name, folder, split, classes, hint in entries:
        if name not in DatasetCatalog.list():
            register_voc_folder(name, folder, split, classes, hint=hint)
            added.append(name)
    return added
