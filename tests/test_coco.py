"""COCO 2017 as a builtin (detectron2's names and layout) and its config, on a tiny generated COCO json."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from lossmix.config.setup import build_config
from lossmix.data import builtin
from lossmix.data.catalog import DatasetCatalog, MetadataCatalog, check_num_classes
from lossmix.data.coco import COCO_CLASSES
from lossmix.engine.run import run as train

from .helpers import REPO, tiny_opts


def write_coco(root, split="val2017", n=2):
    """``root/coco/{split}/*.jpg`` and ``root/coco/annotations/instances_{split}.json``: a person and a car each."""
    images, anns = [], []
    os.makedirs(os.path.join(root, "coco", split), exist_ok=True)
    os.makedirs(os.path.join(root, "coco", "annotations"), exist_ok=True)
    for i in range(n):
        img = np.full((64, 80, 3), 100, np.uint8)
        img[10:40, 5:25] = (220, 60, 60)
        img[30:60, 40:75] = (60, 60, 220)
        cv2.imwrite(os.path.join(root, "coco", split, f"{i:012d}.jpg"), img)
        images.append({"id": 100 + i, "file_name": f"{i:012d}.jpg", "height": 64, "width": 80})
        anns += [{"id": 2 * i + 1, "image_id": 100 + i, "category_id": 1, "bbox": [5, 10, 20, 30], "iscrowd": 0,
                  "area": 600},
                 {"id": 2 * i + 2, "image_id": 100 + i, "category_id": 3, "bbox": [40, 30, 35, 30], "iscrowd": 0,
                  "area": 1050}]
    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]  # COCO's ids: car is label 2, not 1
    with open(os.path.join(root, "coco", "annotations", f"instances_{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": categories}, f)


@pytest.fixture
def coco_root(tmp_path):
    write_coco(str(tmp_path))
    saved = {name: (DatasetCatalog.pop(name), MetadataCatalog.pop(name)) for name in builtin.COCO_2017}
    builtin.register_coco_2017(str(tmp_path))
    yield tmp_path
    for name, (loader, meta) in saved.items():
        DatasetCatalog.remove(name)
        DatasetCatalog[name], MetadataCatalog[name] = loader, meta


def test_coco_2017_names_read_detectron2s_layout(coco_root):
    dicts = DatasetCatalog.get("coco_2017_val")
    assert [d["file_name"] for d in dicts] == [str(coco_root / "coco" / "val2017" / f"{i:012d}.jpg") for i in (0, 1)]
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [0, 2]  # person, car among the 80 classes
    assert dicts[0]["annotations"][1]["bbox"] == [40.0, 30.0, 75.0, 60.0]
    meta = MetadataCatalog.get("coco_2017_val")
    assert meta.thing_classes == list(COCO_CLASSES) and len(COCO_CLASSES) == 80 and meta.evaluator_type == "coco"
    with pytest.raises(FileNotFoundError, match=r"coco_2017_train.*instances_train2017.json.*does not exist"):
        DatasetCatalog.get("coco_2017_train")


@pytest.mark.parametrize("config", ["faster_rcnn_r50_fpn_1x.yaml", "faster_rcnn_r50_fpn_1x_lossmix.yaml"])
def test_coco_configs_follow_detectron2s_1x_schedule(config):
    cfg = build_config(os.path.join(REPO, "configs", "coco", config))
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == \
        (16, 0.02, 90000, (60000, 80000))
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.DATASETS.TEST == ("coco_2017_val",)
    check_num_classes(cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.DATASETS.TRAIN)  # 80 = the builtin's class list


def test_one_iteration_on_coco_and_its_coco_evaluation(coco_root):
    names = {"source_train": "coco_2017_val", "source_test": "coco_2017_val"}
    opts = tiny_opts(names, coco_root / "out", **{"MODEL.ROI_HEADS.NUM_CLASSES": 80, "SOLVER.MAX_ITER": 1,
                                                  "SOLVER.CHECKPOINT_PERIOD": 0})
    result = train(build_config("", opts))["results"]["coco_2017_val"]["model"]
    assert set(result) == {"AP", "AP50", "AP75", "APs", "APm", "APl"} and 0.0 <= result["AP50"] <= 100.0  # COCOeval
