"""Time one domain-adaptation step against one supervised step on the same batch size; prints one JSON object.

Config: ``configs/quickstart/synthetic_at_lossmix.yaml`` (R18-FPN) on CPU with small images (short
side ``--short-side``, default 128) and ``--batch`` source images per step (default 2); the
adaptation step adds as many target images (teacher inference on the weak views, target x target
mixing, the student's strong-view forward, the discriminator, the EMA update). A small synthetic
source / clipart set is generated in a temporary folder. Both loops run on prefetched batches (data loading excluded), interleaved step by step so
that load on shared cores hits both alike; ``ratio`` = median adaptation step / median supervised
step (goal: <= 2.5).
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
CONFIG = os.path.join(REPO, "configs", "quickstart", "synthetic_at_lossmix.yaml")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2, help="source images per step (and target images per step)")
    p.add_argument("--short-side", type=int, default=128, help="training short side (pixels; long side <= 1.25x)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (0: torch's default); one keeps the ratio stable on shared cores")
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)

    from lossmix.data.synthetic import generate

    root = tempfile.mkdtemp(prefix="bench_da_")
    generate(os.path.join(root, "synthetic"), seed=0, num_train=2 * args.batch, num_test=1, image_size=192,
             domains=("source", "clipart"))
    os.environ["LOSSMIX_DATASETS"] = root  # read when the builtin names are registered (next import)
    from lossmix.config.setup import build_config
    from lossmix.data import builtin  # noqa: F401
    from lossmix.data.adaptation import build_da_loader
    from lossmix.engine.recipes.adaptive_teacher import AdaptiveTeacherRecipe
    from lossmix.engine.recipes.supervised import SupervisedRecipe
    from lossmix.engine.trainer import Trainer
    from lossmix.engine.schedule import build_optimizer

    cfg = build_config(CONFIG, ["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", str(args.batch),
                                "INPUT.MIN_SIZE_TRAIN", f"({args.short_side},)",
                                "INPUT.MAX_SIZE_TRAIN", str(int(args.short_side * 1.25)),
                                "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", ""])
    device = torch.device("cpu")
    burn_in = cfg.DA.BURN_IN_ITERS
    batches = list(islice(build_da_loader(cfg, start_iter=burn_in), 3))

    torch.manual_seed(0)
    sup_recipe = SupervisedRecipe.from_config(cfg, device=device)
    sup = Trainer.from_config(cfg, recipe=sup_recipe, optimizer=build_optimizer(cfg, sup_recipe.trainable),
                              scheduler=None, data_loader=None, device=device, checkpointer=None)
    da_recipe = AdaptiveTeacherRecipe.from_config(cfg, device=device)
    da = Trainer.from_config(cfg, recipe=da_recipe, optimizer=build_optimizer(cfg, da_recipe.trainable),
                             scheduler=None, data_loader=None, device=device, checkpointer=None, start_iter=burn_in)
    sup_recipe.trainable.train()
    da_recipe.trainable.train()

    times = {"supervised": [], "adaptation": []}
    pseudo = []
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)]
        sup.iter, da.iter = i, burn_in + i
        start = time.perf_counter()
        sup.run_step(batch["source"])
        mid = time.perf_counter()
        values = da.run_step(batch)
        end = time.perf_counter()
        if i >= args.warmup:
            times["supervised"].append(mid - start)
            times["adaptation"].append(end - mid)
            pseudo.append(values.get("pseudo_labels_per_image", 0.0))
    sup_s, da_s = statistics.median(times["supervised"]), statistics.median(times["adaptation"])
    result = {
        "config": os.path.relpath(CONFIG, REPO),
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "images_per_step": {"supervised": args.batch, "adaptation": f"{args.batch} source + {args.batch} target"},
        "input_sizes": sorted({tuple(b["image"].shape[1:]) for bt in batches for b in bt["source"]}),
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "supervised_step_s": round(sup_s, 4),
        "adaptation_step_s": round(da_s, 4),
        "ratio": round(da_s / sup_s, 3),
        "goal_ratio": 2.5,
        "pseudo_labels_per_image": round(statistics.mean(pseudo), 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
