"""Train-step time and peak memory of LossMix RetinaNet / FCOS vs torchvision's plain ones; prints one JSON object.

For each detector the two models are the *same* modules: the LossMix model from its quickstart config
(``configs/quickstart/synthetic_{retinanet,fcos}_lossmix.yaml``: R18-FPN, FPN width 64, strides 8-64) and a
plain torchvision ``RetinaNet`` / ``FCOS`` shell over the same backbone, anchor generator, transform and
head submodules whose head is torchvision's own class (so its ``compute_loss`` is the stock one). One SGD
optimizer over the shared parameters: both always run on identical weights and only the loss code differs.

A step is zero_grad + forward + backward + SGD step on one fixed batch (random images, 6 random boxes per
image, 3 from a "partner"); the LossMix model gets LossMix targets (random weights in [0, 1], ``from_partner``,
``lam``), the plain one the same boxes without weights. Plain and LossMix alternate for K rounds (ABBA);
medians of process CPU time per step (one torch thread: it does not count waiting for a core) and the ratio
LossMix / plain (goal <= 1.05), all measured in this one run.

Peak memory: each (detector, variant) also runs alone in a child process (the same batch, 3 steps after one
warm-up) and reports its peak resident set (``ru_maxrss``, which includes the interpreter and torch itself:
compare the two variants of a detector).

    python bench/bench_one_stage_step.py [--size 128] [--batch 8] [--rounds 6] [--no-memory]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

try:
    import lossmix  # noqa: F401
except ImportError:  # runnable from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETECTORS = ("retinanet", "fcos")


def build_pair(name: str):
    """``(lossmix model, plain torchvision model)`` sharing every parameter."""
    from torchvision.models.detection.fcos import FCOS, FCOSHead
    from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead

    from lossmix.config.setup import build_config
    from lossmix.modeling.build import build_detector

    cfg = build_config(os.path.join(REPO, "configs", "quickstart", f"synthetic_{name}_lossmix.yaml"),
                       ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", ""])
    torch.manual_seed(0)
    ours = build_detector(cfg).train()
    model_cls, head_cls = {"retinanet": (RetinaNet, RetinaNetHead), "fcos": (FCOS, FCOSHead)}[name]
    head = head_cls.__new__(head_cls)
    head.__dict__.update(ours.head.__dict__)  # the same submodules and parameters, torchvision's compute_loss
    plain = model_cls.__new__(model_cls)
    plain.__dict__.update({**ours.__dict__, "_modules": {**ours._modules, "head": head}})
    return ours, plain, cfg.MODEL.ROI_HEADS.NUM_CLASSES


def make_batch(size: int, batch: int, num_classes: int):
    g = torch.Generator().manual_seed(0)
    images, mixed, plain = [], [], []
    for _ in range(batch):
        h, w = size, int(size * 1.25)
        images.append((torch.rand(3, h, w, generator=g) * 255).to(torch.uint8))
        xy = torch.rand(6, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 12 + torch.rand(6, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(1, num_classes + 1, (6,), generator=g)
        lam = float(torch.rand(1, generator=g))
        partner = torch.tensor([False] * 3 + [True] * 3)
        weights = torch.where(partner, torch.tensor(1 - lam), torch.tensor(lam))
        mixed.append({"boxes": boxes, "labels": labels, "weights": weights, "from_partner": partner,
                      "lam": torch.tensor(lam)})
        plain.append({"boxes": boxes, "labels": labels - 1})  # torchvision's 0-based classes
    return images, mixed, plain


def step(model, optimizer, images, targets) -> float:
    start = time.process_time()
    optimizer.zero_grad(set_to_none=True)
    losses = model(images, targets)
    sum(losses.values()).backward()
    optimizer.step()
    return time.process_time() - start


def child(name: str, variant: str, size: int, batch: int) -> None:
    """One variant alone: warm-up + 3 steps; prints its peak RSS in MiB."""
    torch.set_num_threads(1)
    ours, plain, num_classes = build_pair(name)
    images, mixed, plain_targets = make_batch(size, batch, num_classes)
    model, targets = (ours, mixed) if variant == "lossmix" else (plain, plain_targets)
    optimizer = torch.optim.SGD(ours.parameters(), lr=1e-4, momentum=0.9)
    for _ in range(4):
        step(model, optimizer, images, targets)
    print(json.dumps({"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128, help="image height (width 1.25x); the quickstart's 112-144")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=6, help="ABBA rounds (each times both models twice)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory child processes")
    p.add_argument("--child", nargs=2, metavar=("DETECTOR", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    if args.child:
        return child(*args.child, args.size, args.batch)
    torch.set_num_threads(1)
    result = {"size": [args.size, int(args.size * 1.25)], "batch": args.batch, "torch_threads": 1,
              "rounds": args.rounds, "goal_ratio": 1.05}
    for name in DETECTORS:
        ours, plain, num_classes = build_pair(name)
        images, mixed, plain_targets = make_batch(args.size, args.batch, num_classes)
        optimizer = torch.optim.SGD(ours.parameters(), lr=1e-4, momentum=0.9)
        with torch.no_grad():  # same weights, weights 1: the two losses agree (a check of the shell)
            ours_loss = ours(images, [{k: v for k, v in t.items() if k in ("boxes", "labels")} for t in mixed])
            plain_loss = plain(images, plain_targets)
        assert all(torch.allclose(ours_loss[f"loss_{k}"], v, rtol=1e-5) for k, v in plain_loss.items()), name
        times = {"lossmix": [], "plain": []}
        step(ours, optimizer, images, mixed)  # warm-up
        step(plain, optimizer, images, plain_targets)
        for r in range(args.rounds):
            order = ("plain", "lossmix", "lossmix", "plain") if r % 2 == 0 else ("lossmix", "plain", "plain", "lossmix")
            for variant in order:
                model, targets = (ours, mixed) if variant == "lossmix" else (plain, plain_targets)
                times[variant].append(step(model, optimizer, images, targets))
        median = {k: statistics.median(v) for k, v in times.items()}
        entry = {"step_cpu_s": {k: round(v, 4) for k, v in median.items()},
                 "lossmix_over_plain": round(median["lossmix"] / median["plain"], 3)}
        entry["meets_goal"] = entry["lossmix_over_plain"] <= result["goal_ratio"]
        if not args.no_memory:
            entry["peak_rss_mib"] = {}
            for variant in ("plain", "lossmix"):
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name, variant,
                                      "--size", str(args.size), "--batch", str(args.batch)],
                                     capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                entry["peak_rss_mib"][variant] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]
        result[name] = entry
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
