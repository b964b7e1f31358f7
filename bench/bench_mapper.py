"""Data-loading throughput of the training loader, plain vs LossMix mixing; prints one JSON object.

Two synthetic datasets are generated in a temporary folder: the embedded one at its native size
(shorter side 256, no resize: ``INPUT.MIN_SIZE_TRAIN (256,)``) and a VOC-like one (every image
375x500, resized as VOC training does: shorter side 600, longer at most 1000). Batch 8.

Variants, each in images per second of *output* images:

- ``plain``: the real training loader with ``LOSSMIX.MODE none``, in the main process
  (``workers0``) and with two DataLoader workers (``plain_workers2``);
- ``lossmix_<method>`` (mixup, cutmix, saliencymix): the real loader with ``LOSSMIX.MODE
  lossmix``, in the main process; partners are the other images of the batch, so it decodes
  one image per output image;
- ``naive_pair_mixup``: ``mapper(d, partner_d)`` per output image, which decodes both images.

Main-process variants are timed in interleaved rounds (each round times every variant once)
and the median round is reported, so load from other processes hits all of them alike; the
workers variant runs on its own afterwards (its workers would otherwise prefetch during the
other measurements), in a fresh process (see :func:`workers_variant`). ``ratio_vs_plain`` = time per output image / plain's (goal <= 1.2 for the
loader's mixing). ``decodes_per_image`` counts image reads.

    python bench/bench_mapper.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

try:
    import lossmix  # noqa: F401
except ImportError:  # runnable from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lossmix.config.setup import build_config  # noqa: E402
from lossmix.data.catalog import DatasetCatalog  # noqa: E402
from lossmix.data.loader import build_train_loader, get_dataset_dicts  # noqa: E402
from lossmix.data.mapper import LossMixDatasetMapper  # noqa: E402
from lossmix.data.synthetic import SYNTHETIC_CLASSES, generate  # noqa: E402
from lossmix.data.voc import register_voc  # noqa: E402

BATCH = 8
GOAL_RATIO = 1.2
WORKERS_TIMEOUT_S = 300
METHODS = ("mixup", "cutmix", "saliencymix")
SIZES = {
    # name: (generator image_size, INPUT.MIN_SIZE_TRAIN, INPUT.MAX_SIZE_TRAIN)
    "native_256": (256, 256, 100000),
    "voc_375x500_to_600": ((375, 500), 600, 1000),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer images and rounds")
    p.add_argument("--images", type=int, default=None, help="training images per dataset (default 64; 32 --quick)")
    p.add_argument("--workers-run", nargs=4, metavar=("ROOT", "KEY", "ROUNDS", "BATCHES"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


class CountingRead:
    """Wraps ``mapper.read`` on one mapper instance to count decodes."""

    def __init__(self, mapper: LossMixDatasetMapper):
        self.count, self._read = 0, mapper.read
        mapper.read = self

    def __call__(self, dataset_dict):
        self.count += 1
        return self._read(dataset_dict)


def make_cfg(name: str, size: tuple, mode: str, method: str, workers: int):
    _, short, max_size = size
    return build_config("", [
        "DATASETS.TRAIN", repr((name,)), "SOLVER.IMS_PER_BATCH", str(BATCH), "DATALOADER.NUM_WORKERS", str(workers),
        "INPUT.MIN_SIZE_TRAIN", repr((short,)), "INPUT.MAX_SIZE_TRAIN", str(max_size),
        "LOSSMIX.MODE", mode, "LOSSMIX.METHOD", method, "OUTPUT_DIR", "", "MODEL.ROI_HEADS.NUM_CLASSES",
        str(len(SYNTHETIC_CLASSES)),
    ])


class LoaderVariant:
    """Times batches of the real training loader."""

    def __init__(self, cfg):
        self.loader = build_train_loader(cfg)
        self.counter = CountingRead(self.loader.dataset.mapper) if cfg.DATALOADER.NUM_WORKERS == 0 else None
        self.iterator = iter(self.loader)
        self.images = 0

    def run(self, batches: int) -> float:
        start = time.perf_counter()
        for _ in range(batches):
            self.images += len(next(self.iterator))
        return time.perf_counter() - start


class NaivePairVariant:
    """``mapper(d, partner_d, rng)`` per output image: both images decoded, as a per-sample pair mapper would."""

    def __init__(self, cfg):
        self.dicts = get_dataset_dicts(cfg.DATASETS.TRAIN)
        self.mapper = LossMixDatasetMapper.from_config(cfg)
        self.counter = CountingRead(self.mapper)
        self.rng = np.random.default_rng(0)
        self.images = 0

    def run(self, batches: int) -> float:
        start = time.perf_counter()
        for _ in range(batches):
            for _ in range(BATCH):
                i, j = self.rng.integers(len(self.dicts), size=2)
                self.mapper(self.dicts[i], self.dicts[j], self.rng)
                self.images += 1
        return time.perf_counter() - start


def register(root: str, key: str) -> str:
    name = f"bench_mapper_{key}"
    if name not in DatasetCatalog:
        register_voc(name, os.path.join(root, key, "source"), "train", SYNTHETIC_CLASSES)
    return name


def time_workers(root: str, key: str, rounds: int, batches: int) -> float:
    """Median seconds per output image of the plain loader with 2 workers (run in a fresh process)."""
    workers = LoaderVariant(make_cfg(register(root, key), SIZES[key], "none", "mixup", 2))
    workers.run(2)  # start-up and first prefetch
    return statistics.median(workers.run(batches) / (batches * BATCH) for _ in range(rounds))


def workers_variant(root: str, key: str, rounds: int, batches: int, plain_s: float) -> dict:
    """:func:`time_workers` in a fresh interpreter.

    This process has used OpenCV's thread pool by now, and a forked loader worker that calls
    ``cv2.setNumThreads`` (``lossmix.data.loader._worker_init`` does) can then block forever in
    the pool's teardown; a fresh process forks its workers before any OpenCV call, as the trainer does.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--workers-run", root, key, str(rounds), str(batches)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKERS_TIMEOUT_S, check=True)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {WORKERS_TIMEOUT_S} s (loader workers hung?)"}
    except subprocess.CalledProcessError as err:
        return {"error": err.stderr[-500:]}
    s = json.loads(done.stdout.strip().splitlines()[-1])["seconds_per_image"]
    return {"images_per_s": round(1.0 / s, 1), "ratio_vs_plain": round(s / plain_s, 3)}


def bench_size(root: str, key: str, size: tuple, num_images: int, rounds: int, batches: int) -> dict:
    generate(os.path.join(root, key), seed=0, num_train=num_images, num_test=0, image_size=size[0], domains=("source",))
    name = register(root, key)

    variants = {"plain": LoaderVariant(make_cfg(name, size, "none", "mixup", 0))}
    for method in METHODS:
        variants[f"lossmix_{method}"] = LoaderVariant(make_cfg(name, size, "lossmix", method, 0))
    variants["naive_pair_mixup"] = NaivePairVariant(make_cfg(name, size, "lossmix", "mixup", 0))
    for v in variants.values():  # warm-up: first decodes, saliency objects, permutation
        v.run(1)
    per_round = {k: [] for k in variants}
    for _ in range(rounds):
        for k, v in variants.items():
            per_round[k].append(v.run(batches) / (batches * BATCH))
    for v in variants.values():
        if v.counter is not None:
            v.decodes_per_image = v.counter.count / v.images

    out = {}
    plain_s = statistics.median(per_round["plain"])
    for k, v in variants.items():
        s = statistics.median(per_round[k])
        out[k] = {"images_per_s": round(1.0 / s, 1), "ratio_vs_plain": round(s / plain_s, 3),
                  "decodes_per_image": round(v.decodes_per_image, 3)}
        if k.startswith("lossmix_"):
            out[k]["meets_goal"] = s / plain_s <= GOAL_RATIO
    del variants

    out["plain_workers2"] = workers_variant(root, key, rounds, batches, plain_s)
    shapes = [(d["height"], d["width"]) for d in DatasetCatalog.get(name)]
    out["image_hw"] = {f"{h}x{w}": shapes.count((h, w)) for h, w in sorted(set(shapes))}  # size: how many
    out["train_resize"] = {"short": size[1], "max": size[2]}
    return out


def main() -> None:
    args = parse_args()
    torch.set_flush_denormal(True)
    if args.workers_run:  # internal: the workers variant, in a process that has not touched OpenCV yet
        root, key, rounds, batches = args.workers_run
        print(json.dumps({"seconds_per_image": time_workers(root, key, int(rounds), int(batches))}))
        return
    num_images = args.images or (32 if args.quick else 64)
    rounds, batches = (3, 2) if args.quick else (7, 4)
    root = tempfile.mkdtemp(prefix="bench_mapper_")
    try:
        report = {"batch": BATCH, "rounds": rounds, "batches_per_round": batches, "num_images": num_images,
                  "goal_ratio": GOAL_RATIO, "cpus": os.cpu_count()}
        for key, size in SIZES.items():
            report[key] = bench_size(root, key, size, num_images, rounds, batches)
        report["meets_goal"] = all(v["meets_goal"] for key in SIZES for k, v in report[key].items()
                                   if isinstance(v, dict) and "meets_goal" in v)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
