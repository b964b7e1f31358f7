"""Train-step time of the LossMix-weighted detector vs plain torchvision Faster R-CNN; prints one JSON object.

Both models are the *same* modules: ``build_detector`` gives the weighted model (``WeightedRPN`` /
``WeightedRoIHeads``); the plain one is a second ``FasterRCNN`` shell over the same backbone,
transform and head submodules whose ``rpn`` / ``roi_heads`` are stock torchvision
``RegionProposalNetwork`` / ``RoIHeads`` objects carrying the weighted ones' state (the reverse of
``WeightedRPN.from_rpn``, which builds the weighted head from a torchvision one the same way).
Sharing the parameters (and one SGD optimizer) means both models always run on identical
weights and only the loss code differs; a deepcopy would drift apart as each model steps.

A step is zero_grad + forward + backward + SGD step on one fixed batch (random images, 6 random
boxes per image), with ``torch.manual_seed(round)`` before it so both models sample the same
anchors / proposals. A and B alternate for K rounds (order flipped every round, ABBA, to cancel
drift); medians are reported, and the ratio weighted / plain (goal <= 1.03). On CPU the process
CPU time is reported too (``ratio_cpu_time``, with one torch thread by default): it does not count
time spent waiting for a core, so it stays meaningful on a shared machine.

A 3% difference is small next to the step-to-step spread of a whole step, so the heads (RPN and
ROI heads, forward + backward) are also timed alone on backbone features computed once
(``heads_only``); their extra time over a whole plain step gives ``implied_step_ratio``, which
``meets_goal`` is judged on (``full_step.meets_goal`` judges the direct ratio).

Scenarios: all weights 1 (the plain-training case; the two models' first losses are also
compared: equal up to float rounding) and random LossMix weights in [0, 1] (with
``from_partner`` / ``lam`` as the mapper writes them).

    python bench/bench_train_step.py [--quick] [--backbone R50-FPN] [--size 320] [--batch 2] [--rounds 10]
                                     [--device auto] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import OrderedDict

import torch

try:
    import lossmix  # noqa: F401
except ImportError:  # runnable from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torchvision.models.detection import FasterRCNN  # noqa: E402
from torchvision.models.detection.roi_heads import RoIHeads  # noqa: E402
from torchvision.models.detection.rpn import RegionProposalNetwork  # noqa: E402

from lossmix.config.setup import build_config  # noqa: E402
from lossmix.modeling.build import build_detector  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 20  # VOC
BOXES_PER_IMAGE = 6
GOAL_RATIO = 1.03


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="R50-FPN")
    p.add_argument("--size", type=int, default=None, help="short side (default 600 on GPU, 320 on CPU; 224 --quick)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default 2; 1 with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="A/B rounds (default 10; 4 with --quick)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads on CPU (default 1, so process CPU time measures the step; 0: leave as is)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    return p.parse_args(argv)


def plain_twin(model: FasterRCNN) -> FasterRCNN:
    """A stock-torchvision Faster R-CNN sharing every submodule and parameter with ``model``."""
    def stock(cls, module):
        twin = cls.__new__(cls)
        twin.__dict__.update(module.__dict__)  # same submodules, matcher, sampler, settings
        return twin

    plain = stock(type(model), model)
    plain._modules = dict(model._modules)  # own module table, so swapping heads leaves ``model`` alone
    plain._modules["rpn"] = stock(RegionProposalNetwork, model.rpn)
    plain._modules["roi_heads"] = stock(RoIHeads, model.roi_heads)
    return plain


def make_batch(gen: torch.Generator, batch: int, height: int, width: int, device, random_weights: bool):
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, height, width, generator=gen).to(device))
        xy = torch.rand(BOXES_PER_IMAGE, 2, generator=gen) * torch.tensor([width * 0.7, height * 0.7])
        wh = 16 + torch.rand(BOXES_PER_IMAGE, 2, generator=gen) * torch.tensor([width * 0.3, height * 0.3])
        boxes = torch.cat([xy, xy + wh], dim=1)
        from_partner = torch.arange(BOXES_PER_IMAGE) >= BOXES_PER_IMAGE // 2
        lam = float(torch.rand((), generator=gen)) if random_weights else 1.0
        weights = torch.rand(BOXES_PER_IMAGE, generator=gen) if random_weights else torch.ones(BOXES_PER_IMAGE)
        targets.append({
            "boxes": boxes.to(device),
            "labels": torch.randint(1, NUM_CLASSES + 1, (BOXES_PER_IMAGE,), generator=gen).to(device),
            "weights": weights.to(device),
            "from_partner": from_partner.to(device),
            "lam": torch.tensor(lam, device=device),
        })
    return images, targets


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def full_step(model, optimizer, images, targets) -> None:
    """zero_grad + forward + backward + SGD step of the whole detector."""
    optimizer.zero_grad(set_to_none=True)
    losses = model(images, targets)
    sum(losses.values()).backward()
    optimizer.step()


def heads_step(model, optimizer, images, targets) -> None:
    """RPN + ROI heads only, forward + backward, on backbone features computed once (``model._bench_features``).

    Isolates the code the two models differ in from the (identical, dominant) backbone cost.
    """
    image_list, tgts, feats = model._bench_features
    feats = OrderedDict((k, v.detach().requires_grad_()) for k, v in feats.items())
    proposals, rpn_losses = model.rpn(image_list, feats, tgts)
    _, roi_losses = model.roi_heads(feats, proposals, image_list.image_sizes, tgts)
    optimizer.zero_grad(set_to_none=True)
    sum(list(rpn_losses.values()) + list(roi_losses.values())).backward()


def timed(fn, model, optimizer, images, targets, seed: int, device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call, after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn(model, optimizer, images, targets)
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(fn, weighted, plain, optimizer, images, targets, rounds: int, device) -> dict:
    """Alternate weighted / plain (ABBA) for ``rounds`` rounds after a warm-up; medians and ratios."""
    for k in range(2):  # warm-up (allocator, oneDNN / cudnn kernel choice)
        timed(fn, weighted, optimizer, images, targets, 10_000 + k, device)
        timed(fn, plain, optimizer, images, targets, 10_000 + k, device)
    wall = {"weighted": [], "plain": []}
    cpu = {"weighted": [], "plain": []}
    for k in range(rounds):
        order = (("weighted", weighted), ("plain", plain))
        order = order if k % 2 == 0 else order[::-1]
        for name, model in order:
            w, c = timed(fn, model, optimizer, images, targets, k, device)
            wall[name].append(w)
            cpu[name].append(c)
    w, p = statistics.median(wall["weighted"]), statistics.median(wall["plain"])
    out = {"weighted_ms": round(w * 1e3, 1), "plain_ms": round(p * 1e3, 1),
           "ratio_weighted_over_plain": round(w / p, 4)}
    if device.type == "cpu":  # CPU time: insensitive to waiting for a core on a shared machine
        cw, cp = statistics.median(cpu["weighted"]), statistics.median(cpu["plain"])
        out.update(weighted_cpu_ms=round(cw * 1e3, 1), plain_cpu_ms=round(cp * 1e3, 1),
                   ratio_cpu_time=round(cw / cp, 4))
    return out


def main() -> None:
    args = parse_args()
    torch.set_flush_denormal(True)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (600 if device.type == "cuda" else (224 if args.quick else 320))
    batch = args.batch or (1 if args.quick else 2)
    rounds = args.rounds or (4 if args.quick else 10)
    height, width = size, int(round(size * 4 / 3))

    cfg = build_config(os.path.join(REPO, "configs", "Base-RCNN-FPN.yaml"),
                       ["MODEL.BACKBONE.NAME", args.backbone, "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES),
                        "MODEL.DEVICE", device.type])
    torch.manual_seed(0)
    weighted = build_detector(cfg).to(device).train()
    plain = plain_twin(weighted).train()
    # lr does not change the cost of a step; a small one keeps random-init training finite for many rounds
    optimizer = torch.optim.SGD([p for p in weighted.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    report = {"device": str(device), "backbone": args.backbone, "image_hw": [height, width], "batch": batch,
              "rounds": rounds, "torch_threads": torch.get_num_threads(), "goal_ratio": GOAL_RATIO}
    gen = torch.Generator().manual_seed(0)
    for name, random_weights in (("weights_one", False), ("weights_random", True)):
        images, targets = make_batch(gen, batch, height, width, device, random_weights)
        if not random_weights:  # same weights, same seed: the two models' losses must agree
            with torch.no_grad():
                torch.manual_seed(123)
                lw = weighted(images, targets)
                torch.manual_seed(123)
                lp = plain(images, targets)
            # equal up to float rounding: the RPN sums weighted terms where torchvision takes a mean
            report["loss_max_rel_diff_weights_one"] = max(
                abs(float(lw[k]) - float(lp[k])) / max(abs(float(lp[k])), 1e-12) for k in lp)
        result = {"full_step": interleaved(full_step, weighted, plain, optimizer, images, targets, rounds, device)}
        with torch.no_grad():
            image_list, tgts = weighted.transform(images, targets)
            feats = weighted.backbone(image_list.tensors)
        weighted._bench_features = plain._bench_features = (image_list, tgts, feats)
        heads = interleaved(heads_step, weighted, plain, optimizer, images, targets, rounds, device)
        key = "ratio_cpu_time" if device.type == "cpu" else "ratio_weighted_over_plain"
        step_s = result["full_step"]["plain_cpu_ms" if device.type == "cpu" else "plain_ms"]
        extra = heads["weighted_cpu_ms" if device.type == "cpu" else "weighted_ms"] - heads[
            "plain_cpu_ms" if device.type == "cpu" else "plain_ms"]
        heads["overhead_ms"] = round(extra, 1)
        # the heads' extra time relative to a whole plain step: the step ratio it implies, without backbone noise
        heads["implied_step_ratio"] = round(1.0 + extra / step_s, 4)
        result["heads_only"] = heads
        result["full_step"]["meets_goal"] = result["full_step"][key] <= GOAL_RATIO
        result["meets_goal"] = heads["implied_step_ratio"] <= GOAL_RATIO
        report[name] = result
    print(json.dumps(report))


if __name__ == "__main__":
    main()
