"""Shared fixtures-in-functions: a tiny synthetic VOC dataset registered in the catalog, a tiny config."""
from __future__ import annotations

import itertools
import os

from lossmix.config.setup import build_config
from lossmix.data.catalog import DatasetCatalog
from lossmix.data.synthetic import SYNTHETIC_CLASSES, generate
from lossmix.data.voc import register_voc

_counter = itertools.count()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_tiny_dataset(root, *, num_train=8, num_test=4, domains=("source",), image_size=96, seed=0) -> dict:
    """Generate a tiny synthetic set under ``root`` and register it; returns ``{domain_split: name}``."""
    generate(str(root), seed=seed, num_train=num_train, num_test=num_test, image_size=image_size, domains=domains)
    names = {}
    uid = next(_counter)
    for domain in domains:
        for split in ("train", "test"):
            name = f"tiny{uid}_{domain}_{split}"
            if name not in DatasetCatalog:
                register_voc(name, os.path.join(str(root), domain), split, SYNTHETIC_CLASSES)
            names[f"{domain}_{split}"] = name
    return names


def tiny_opts(names: dict, output_dir, **extra) -> list:
    opts = {
        "MODEL.BACKBONE.NAME": "R18-FPN",
        "MODEL.BACKBONE.NORM": "BN",
        "MODEL.BACKBONE.TRAINABLE_LAYERS": 5,
        "MODEL.ROI_HEADS.NUM_CLASSES": len(SYNTHETIC_CLASSES),
        "MODEL.ANCHOR_GENERATOR.SIZES": [[16], [32], [64], [128], [256]],
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 200,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN": 100,
        "MODEL.RPN.PRE_NMS_TOPK_TEST": 100,
        "MODEL.RPN.POST_NMS_TOPK_TEST": 50,
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 64,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 32,
        "MODEL.DEVICE": "cpu",
        "INPUT.MIN_SIZE_TRAIN": (80, 96),
        "INPUT.MAX_SIZE_TRAIN": 128,
        "INPUT.MIN_SIZE_TEST": 96,
        "INPUT.MAX_SIZE_TEST": 128,
        "DATASETS.TRAIN": (names["source_train"],),
        "DATASETS.TEST": (names["source_test"],),
        "DATALOADER.NUM_WORKERS": 0,
        "SOLVER.IMS_PER_BATCH": 2,
        "SOLVER.BASE_LR": 0.01,
        "SOLVER.WARMUP_ITERS": 2,
        "SOLVER.STEPS": (4,),
        "SOLVER.MAX_ITER": 6,
        "SOLVER.CHECKPOINT_PERIOD": 3,
        "LOG_PERIOD": 1,
        "OUTPUT_DIR": str(output_dir),
    }
    opts.update(extra)
    return [x for kv in opts.items() for x in (kv[0], kv[1] if isinstance(kv[1], str) else repr(kv[1]))]


def tiny_cfg(names: dict, output_dir, **extra):
    return build_config("", tiny_opts(names, output_dir, **extra))


def load_tool(name: str):
    """``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_tool_under_test", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def jsonl_rows(path) -> list:
    """The JSON objects of a ``.jsonl`` file, one per line."""
    import json

    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
