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
coco_2017_train / _val coco/{train,val}2017 + coco/annotations/instances_{train,val}2017.json (COCO json), COCO AP
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


def _checked(name: str, folder: str, loader, hint: str):
    def load(**kwargs):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"dataset {name!r} expects the VOC-format folder {folder!r} (Annotations/, "
                                    f"JPEGImages/, ImageSets/Main/), which does not exist; {hint}")
        return loader(**kwargs)

    return load


BUILTIN_HINT = "set LOSSMIX_DATASETS (the folder holding it) or see datasets/README.md for where to get it"
CUSTOM_HINT = "check its DATASETS.CUSTOM_VOC entry (NAME:FOLDER:SPLIT)"


def _register(name, folder, split, classes, *, hint: str = BUILTIN_HINT, **kwargs):
    register_voc(name, folder, split, classes, **kwargs)
    DatasetCatalog[name] = _checked(name, folder, DatasetCatalog[name], hint)


COCO_2017 = {"coco_2017_train": ("train2017", "annotations/instances_train2017.json"),
             "coco_2017_val": ("val2017", "annotations/instances_val2017.json")}  # detectron2's names and layout


def register_coco_2017(root: str | None = None) -> None:
    """``coco_2017_train`` / ``coco_2017_val`` under ``root/coco`` (images and ``annotations/``), as detectron2."""
    from .coco import COCO_CLASSES, register_coco

    root = root or datasets_root()
    for name, (images, annotations) in COCO_2017.items():
        json_file, image_root = os.path.join(root, "coco", annotations), os.path.join(root, "coco", images)
        register_coco(name, json_file, image_root, class_names=COCO_CLASSES)
        loader = DatasetCatalog[name]

        def load(_name=name, _json=json_file, _loader=loader, **kwargs):
            if not os.path.isfile(_json):
                raise FileNotFoundError(f"dataset {_name!r} expects the COCO annotation file {_json!r}, which does "
                                        f"not exist; {BUILTIN_HINT}")
            return _loader(**kwargs)

        DatasetCatalog[name] = load


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
    register_coco_2017(root)


if "voc_2007_trainval" not in DatasetCatalog:
    register_all()


def parse_custom_voc(entry: str) -> tuple[str, str, str]:
    """``"NAME:FOLDER:SPLIT"`` -> ``(name, folder, split)``; the folder may contain colons."""
    from ..config.setup import ConfigError

    name, sep, rest = entry.partition(":")
    folder, sep2, split = rest.rpartition(":")
    if not (sep and sep2 and name and folder and split):
        raise ConfigError(f"DATASETS.CUSTOM_VOC entry {entry!r}; allowed: NAME:FOLDER:SPLIT "
                          "(e.g. pets_train:/data/pets:train, reading /data/pets/ImageSets/Main/train.txt)")
    return name.strip(), folder.strip(), split.strip()


def register_custom(cfg) -> list[str]:
    """Register ``DATASETS.CUSTOM_VOC`` (VOC-format folders) with ``DATASETS.CUSTOM_CLASSES`` and
    ``DATASETS.CUSTOM_METRIC``; returns the names. Training, ``--eval-only`` and ``tools/check_dataset.py``
    all register them through here, so they read the same definition. Re-registering a name with a different
    definition replaces an earlier custom one; a builtin name is refused."""
    from ..config.setup import ConfigError
    from .catalog import MetadataCatalog

    entries = list(cfg.DATASETS.CUSTOM_VOC)
    if not entries:
        return []
    classes = tuple(cfg.DATASETS.CUSTOM_CLASSES)
    if not classes or len(set(classes)) != len(classes):
        raise ConfigError(f"DATASETS.CUSTOM_CLASSES = {classes}; DATASETS.CUSTOM_VOC needs the folders' class names, "
                          "distinct, in label order (e.g. DATASETS.CUSTOM_CLASSES \"('cat', 'dog')\")")
    names = []
    for entry in entries:
        name, folder, split = parse_custom_voc(entry)
        definition = {"dirname": os.fspath(folder), "split": split, "thing_classes": list(classes),
                      "use_07_metric": cfg.DATASETS.CUSTOM_METRIC == "voc07"}
        if name in DatasetCatalog:
            meta = MetadataCatalog.get(name)
            if not meta.get("custom"):
                raise ConfigError(f"DATASETS.CUSTOM_VOC: {name!r} is already a builtin dataset; choose another name")
            if all(meta.get(k) == v for k, v in definition.items()):
                names.append(name)
                continue
            DatasetCatalog.remove(name)
        _register(name, folder, split, classes, use_07_metric=definition["use_07_metric"], hint=CUSTOM_HINT)
        MetadataCatalog.get(name).set(custom=True)
        names.append(name)
    return names
