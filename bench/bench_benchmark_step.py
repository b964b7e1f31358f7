"""Cost of one benchmark training step; prints one JSON object.

Three models trained side by side on the same prefetched batches (8 images, data loading excluded),
interleaved step by step so that load on shared cores hits all alike, one torch thread:

- ``benchmark_none``: ``configs/quickstart/synthetic_baseline.yaml``, the calibrated benchmark regime
  (R18-FPN, FPN width 64, 128-wide box head, 112-144 px inputs);
- ``benchmark_lossmix``: the same with LossMix mixup (``synthetic_lossmix.yaml``): mixing happens in the
  loader, so the step differs only by the weighted losses and the larger mixed canvas;
- ``previous_quickstart``: the quickstart model before the calibration (FPN width 128, 256-wide box
  head, 144-176 px inputs), to show what the cheaper step buys.

Ratios are of medians measured in this one run: ``lossmix_over_none`` and ``benchmark_over_previous`` (wall
time; the order of the models alternates every step), ``lossmix_over_none_cpu`` (process CPU time, which
waiting for a core on a shared machine does not inflate).
A small synthetic source set is generated in a temporary folder.

    python bench/bench_benchmark_step.py [--warmup 3] [--steps 8] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from itertools import islice

try:
    import lossmix  # noqa: F401
except ImportError:  # runnable from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart")
PREVIOUS = ["MODEL.FPN.OUT_CHANNELS", "128", "MODEL.ROI_BOX_HEAD.FC_DIM", "256",
            "INPUT.MIN_SIZE_TRAIN", "(144, 160, 176)", "INPUT.MAX_SIZE_TRAIN", "224"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)

    from lossmix.data.synthetic import generate

    root = tempfile.mkdtemp(prefix="bench_step_")
    generate(os.path.join(root, "synthetic"), seed=0, num_train=32, num_test=1, domains=("source",))
    os.environ["LOSSMIX_DATASETS"] = root  # read when the builtin names are registered (next import)
    from lossmix.config.setup import build_config
    from lossmix.data import builtin  # noqa: F401
    from lossmix.data.loader import build_train_loader
    from lossmix.engine.recipes.supervised import SupervisedRecipe
    from lossmix.engine.schedule import build_optimizer
    from lossmix.engine.trainer import Trainer

    common = ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", ""]
    variants = {
        "benchmark_none": build_config(os.path.join(QUICKSTART, "synthetic_baseline.yaml"), common),
        "benchmark_lossmix": build_config(os.path.join(QUICKSTART, "synthetic_lossmix.yaml"), common),
        "previous_quickstart": build_config(os.path.join(QUICKSTART, "synthetic_baseline.yaml"), common + PREVIOUS),
    }
    device = torch.device("cpu")
    trainers, batches = {}, {}
    for name, cfg in variants.items():
        batches[name] = list(islice(build_train_loader(cfg), 3))
        torch.manual_seed(0)
        recipe = SupervisedRecipe.from_config(cfg, device=device)
        trainers[name] = Trainer.from_config(cfg, recipe=recipe, optimizer=build_optimizer(cfg, recipe.trainable),
                                             scheduler=None, data_loader=None, device=device, checkpointer=None)
        recipe.trainable.train()

    times = {name: [] for name in variants}
    cpu_times = {name: [] for name in variants}
    for i in range(args.warmup + args.steps):
        for name, trainer in (list(trainers.items()) if i % 2 == 0 else list(trainers.items())[::-1]):
            trainer.iter = i
            start, cpu = time.perf_counter(), time.process_time()
            trainer.run_step(batches[name][i % len(batches[name])])
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu)
    median = {name: statistics.median(t) for name, t in times.items()}
    cpu_median = {name: statistics.median(t) for name, t in cpu_times.items()}
    result = {
        "images_per_step": variants["benchmark_none"].SOLVER.IMS_PER_BATCH,
        "torch_threads": torch.get_num_threads(),
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "step_s": {name: round(s, 4) for name, s in median.items()},
        "lossmix_over_none": round(median["benchmark_lossmix"] / median["benchmark_none"], 3),
        # process CPU time (one thread): what waiting for a core on a shared machine does not inflate
        "step_cpu_s": {name: round(s, 4) for name, s in cpu_median.items()},
        "lossmix_over_none_cpu": round(cpu_median["benchmark_lossmix"] / cpu_median["benchmark_none"], 3),
        "benchmark_over_previous": round(median["benchmark_none"] / median["previous_quickstart"], 3),
        "benchmark_run_400_steps_min": round(400 * median["benchmark_none"] / 60, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
