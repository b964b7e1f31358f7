"""Step time of the detectron2 Adaptive-Teacher + LossMix step vs detectron2's plain training step; one JSON object.

Both on configs/d2/synthetic_at_lossmix.yaml's model (ResNet-18-FPN from scratch) and input sizes, on a small
synthetic set written to a temporary folder. Plain: detectron2's stock ``RPN`` + ``StandardROIHeads``, one
source batch, zero_grad + forward + backward + SGD step (what ``SimpleTrainer.run_step`` does). Adaptation:
the same model with the LossMix heads inside :class:`lossmix.d2.adaptation.AdaptiveTeacherModel`, after
burn-in, all three pairs: the source batch (mixed), the teacher's pseudo-labels on the weak target views,
target x target mixing, the student on the strong views, the discriminator on both, the step and the EMA.
Batches are loaded beforehand (the loaders' work is not timed, but the step's own pseudo-labelling and
mixing are). The two alternate for K rounds (ABBA); medians of wall and process CPU time, and their ratios.
Without detectron2 it prints ``{"skipped": ...}`` and exits 0.

    python bench/bench_d2_adaptation.py [--batch 4] [--rounds 6] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

try:
    import lossmix  # noqa: F401
except ImportError:  # runnable from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4, help="source images per step (as many target images)")
    p.add_argument("--rounds", type=int, default=6, help="A/B rounds")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    args = p.parse_args(argv)
    try:
        import detectron2  # noqa: F401
    except ImportError:
        print(json.dumps({"skipped": "detectron2 is not installed"}))
        return
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultTrainer
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    import lossmix.d2 as lmd2
    from lossmix.d2.adaptation import AdaptiveTeacherTrainer
    from lossmix.d2.datasets import register_voc_folder
    from lossmix.data.synthetic import SYNTHETIC_CLASSES, generate

    if args.threads:
        torch.set_num_threads(args.threads)
    root = tempfile.mkdtemp(prefix="bench_d2_at_")
    generate(root, seed=0, num_train=4 * args.batch, num_test=2, image_size=160, domains=("source", "clipart"))
    for domain in ("source", "clipart"):
        register_voc_folder(f"bench_{domain}_train", os.path.join(root, domain), "train", SYNTHETIC_CLASSES)
    cfg = get_cfg()
    lmd2.add_lossmix_config(cfg)
    lmd2.add_da_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "d2", "synthetic_at_lossmix.yaml"))
    cfg.merge_from_list(["DATASETS.TRAIN", "('bench_source_train',)", "DATASETS.TRAIN_UNLABELED",
                         "('bench_clipart_train',)", "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", str(args.batch),
                         "DA.BURN_IN_ITERS", "0", "DA.PSEUDO_THRESHOLD", "0.5", "OUTPUT_DIR", root])
    torch.manual_seed(0)
    at = AdaptiveTeacherTrainer(cfg)
    at.resume_or_load(resume=False)
    module, at_opt = at.module, at._trainer.optimizer
    stock_cfg = cfg.clone()
    stock_cfg.MODEL.PROPOSAL_GENERATOR.NAME, stock_cfg.MODEL.ROI_HEADS.NAME = "RPN", "StandardROIHeads"
    stock = build_model(stock_cfg).train()
    stock.load_state_dict(module.student.state_dict())
    stock_opt = DefaultTrainer.build_optimizer(stock_cfg, stock)
    loader = iter(at.build_train_loader(cfg))
    batches = [next(loader) for _ in range(args.rounds + 1)]
    plain_batches = [[{k: v for k, v in x.items() if k in ("image", "instances", "height", "width")}
                      for x in b["source"]] for b in batches]

    def plain_step(i):
        losses = stock(plain_batches[i])
        stock_opt.zero_grad()
        sum(losses.values()).backward()
        stock_opt.step()

    def at_step(i):
        module.iteration = i
        losses = module(batches[i])
        at_opt.zero_grad()
        sum(losses.values()).backward()
        at_opt.step()
        at.recipe.after_step(i)

    times = {"plain": [], "adaptation": []}
    with EventStorage(0):
        at_step(0)  # iteration 0 = end of burn-in: the teacher is copied (untimed warm-up)
        plain_step(0)
        for r in range(args.rounds):
            order = (("plain", plain_step), ("adaptation", at_step))
            for name, step in (order if r % 2 == 0 else order[::-1]):
                w, c = time.perf_counter(), time.process_time()
                step(r + 1)
                times[name].append((time.perf_counter() - w, time.process_time() - c))
    med = {k: (statistics.median(t for t, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    print(json.dumps({
        "batch": args.batch, "rounds": args.rounds, "threads": torch.get_num_threads(),
        "plain_s": round(med["plain"][0], 4), "adaptation_s": round(med["adaptation"][0], 4),
        "ratio_wall": round(med["adaptation"][0] / med["plain"][0], 3),
        "ratio_cpu_time": round(med["adaptation"][1] / med["plain"][1], 3),
        "pseudo_labels_per_image": at.recipe.step_stats.get("pseudo_labels_per_image"),
    }))


if __name__ == "__main__":
    main()
