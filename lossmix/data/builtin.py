"""Standard dataset names (detectron2's), rooted at ``$LOSSMIX_DATASETS`` or ``./datasets``.

=====================  ====================================  ==========================
name                   folder (VOC format)                   evaluation
=====================  ====================================  ==========================
voc_2007_trainval      VOC2007, ImageSets/Main/trainval.txt  VOC07 11-point (20 classes)
voc_2012_trainval      VOC2012, trainval                     VOC07 11-point
voc_2007_test          VOC2007, test                         VOC07 11-point
clipart_train / _test  clipart, train / test                 area AP50 (20 classes)
watercolor_train/_test watercolor, train / test              area AP50 on its 6 classes
comic_train / _test    comic, train / test                   area AP50 on its 6 classes
synthetic_<domain>_<split>  synthetic/<domain>               area AP50 (6 shapes)
=====================  ====================================  ==========================

A missing folder raises ``FileNotFoundError`` naming the folder and pointing to datasets/README.md.
"""
from __future__ import annotations

import os

from .catalog import DatasetCatalog
from .synthetic import SYNTHETIC_CLASSES, SYNTHETIC_DOMAINS
from .voc import VOC_CLASSES, register_voc

WATERCOLOR_CLASSES = ("bicycle", "bird", "car", "cat", "dog", "person")  # also Comic2k's


def datasets_root() -> str:
    return os.environ.get("LOSSMIX_DATASETS", "datasets")


def _checked(name: str, folder: str, loader):
    def load():
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"dataset {name!r} expects the VOC-format folder {folder!r} (Annotations/, JPEGImages/, "
                f"ImageSets/Main/); set LOSSMIX_DATASETS or see datasets/README.md for where to get it"
            )
        return loader()

    return load


def _register(name, folder, split, classes, **kwargs):
    register_voc(name, folder, split, classes, **kwargs)
    DatasetCatalog[name] = _checked(name, folder, DatasetCatalog[name])


def register_all(root: str | None = None) -> None:
    root = root or datasets_root()
    for name, sub, split, year in (
        ("voc_2007_trainval", "VOC2007", "trainval", 2007),
        ("voc_2012_trainval", "VOC2012", "trainval", 2012),
        ("voc_2007_test", "VOC2007", "test", 2007),
    ):
        _register(name, os.path.join(root, sub), split, VOC_CLASSES, year=year, use_07_metric=True)
    for split in ("train", "test"):
        _register(f"clipart_{split}", os.path.join(root, "clipart"), split, VOC_CLASSES)
        for sub in ("watercolor", "comic"):
            _register(f"{sub}_{split}", os.path.join(root, sub), split, VOC_CLASSES, eval_classes=WATERCOLOR_CLASSES)
        for domain in SYNTHETIC_DOMAINS:
            _register(f"synthetic_{domain}_{split}", os.path.join(root, "synthetic", domain), split, SYNTHETIC_CLASSES)


if "voc_2007_trainval" not in DatasetCatalog:
    register_all()
