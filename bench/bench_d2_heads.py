"""Step time of detectron2's Faster R-CNN with the LossMix heads vs stock heads; prints one JSON object.

Two models with the same parameters: stock (``RPN`` + ``StandardROIHeads``) and LossMix
(``LossMixRPN`` + ``LossMixStandardROIHeads``). A step is zero_grad + forward + backward on one fixed
batch (random images, 6 random boxes per image; no optimizer step, so the weights never change),
with ``torch.manual_seed(round)`` before it so both sample the same anchors / proposals. The models
alternate for K rounds (ABBA); medians are reported with the ratio LossMix / stock. On CPU the
process CPU time is reported too (``ratio_cpu_time``, one torch thread by default): it does not count
time spent waiting for a core on a shared machine. The heads alone (RPN + ROI heads, forward +
backward on backbone features computed once) are timed the same way; their extra time over a whole
stock step gives ``implied_step_ratio``, free of the backbone's step-to-step noise.

Scenarios: all weights 1 (also checks the losses agree) and random weights in [0, 1].
Without detectron2 it prints ``{"skipped": ...}`` and exits 0.

    python bench/bench_d2_heads.py [--quick] [--depth 50] [--size 320] [--batch 2] [--rounds 10]
                                   [--device auto] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

try:
    import lossmix  # noqa: F401
except ImportError:  # runnable from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NUM_CLASSES = 20
BOXES_PER_IMAGE = 6


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=50, help="ResNet depth of the FPN backbone (18, 34, 50, 101)")
    p.add_argument("--size", type=int, default=None, help="short side (default 600 on GPU, 320 on CPU; 224 --quick)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default 2; 1 with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="A/B rounds (default 10; 4 with --quick)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (0: leave as is)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    return p.parse_args(argv)


def build_pair(depth: int, device: str):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import lossmix.d2 as lmd2

    def cfg_for(lossmix: bool):
        cfg = get_cfg()
        lmd2.add_lossmix_config(cfg)
        cfg.merge_from_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         "configs", "d2", "Base-RCNN-FPN.yaml"))
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.DEVICE = device
        cfg.MODEL.RESNETS.DEPTH = depth
        if depth in (18, 34):
            cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
        cfg.MODEL.PROPOSAL_GENERATOR.NAME = "LossMixRPN" if lossmix else "RPN"
        cfg.MODEL.ROI_HEADS.NAME = "LossMixStandardROIHeads" if lossmix else "StandardROIHeads"
        return cfg

    torch.manual_seed(0)
    stock = build_model(cfg_for(False)).train()
    ours = build_model(cfg_for(True)).train()
    ours.load_state_dict(stock.state_dict())
    return stock, ours


def make_batch(gen, batch, height, width, random_weights: bool):
    from detectron2.structures import Boxes, Instances

    out = []
    for _ in range(batch):
        image = (torch.rand(3, height, width, generator=gen) * 255).to(torch.uint8)
        xy = torch.rand(BOXES_PER_IMAGE, 2, generator=gen) * torch.tensor([width * 0.7, height * 0.7])
        wh = 16 + torch.rand(BOXES_PER_IMAGE, 2, generator=gen) * torch.tensor([width * 0.3, height * 0.3])
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, NUM_CLASSES, (BOXES_PER_IMAGE,), generator=gen)
        lam = float(torch.rand((), generator=gen)) if random_weights else 1.0
        inst.gt_weights = torch.rand(BOXES_PER_IMAGE, generator=gen) if random_weights else torch.ones(BOXES_PER_IMAGE)
        inst.gt_from_partner = torch.arange(BOXES_PER_IMAGE) >= BOXES_PER_IMAGE // 2
        inst.gt_lam = torch.full((BOXES_PER_IMAGE,), lam)
        out.append({"image": image, "instances": inst})
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def full_step(model, inputs):
    model.zero_grad(set_to_none=True)
    losses = model(inputs)
    sum(losses.values()).backward()


def heads_step(model, inputs):
    images, features, targets = model._bench_features
    features = {k: v.detach().requires_grad_() for k, v in features.items()}
    model.zero_grad(set_to_none=True)
    proposals, rpn_losses = model.proposal_generator(images, features, targets)
    _, roi_losses = model.roi_heads(images, features, proposals, targets)
    sum(list(rpn_losses.values()) + list(roi_losses.values())).backward()


def timed(fn, model, inputs, seed, device):
    from detectron2.utils.events import EventStorage

    torch.manual_seed(seed)
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    with EventStorage():
        fn(model, inputs)
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(fn, ours, stock, inputs, rounds, device) -> dict:
    for k in range(2):  # warm-up
        timed(fn, ours, inputs, 10_000 + k, device)
        timed(fn, stock, inputs, 10_000 + k, device)
    wall = {"lossmix": [], "stock": []}
    cpu = {"lossmix": [], "stock": []}
    for k in range(rounds):
        order = (("lossmix", ours), ("stock", stock))
        for name, model in (order if k % 2 == 0 else order[::-1]):
            w, c = timed(fn, model, inputs, k, device)
            wall[name].append(w)
            cpu[name].append(c)
    w, s = statistics.median(wall["lossmix"]), statistics.median(wall["stock"])
    out = {"lossmix_ms": round(w * 1e3, 1), "stock_ms": round(s * 1e3, 1), "ratio_lossmix_over_stock": round(w / s, 4)}
    if device.type == "cpu":
        cw, cs = statistics.median(cpu["lossmix"]), statistics.median(cpu["stock"])
        out.update(lossmix_cpu_ms=round(cw * 1e3, 1), stock_cpu_ms=round(cs * 1e3, 1), ratio_cpu_time=round(cw / cs, 4))
    return out


def main() -> None:
    args = parse_args()
    try:
        import detectron2
    except ImportError:
        print(json.dumps({"skipped": "detectron2 is not installed (see README 'Using lossmix from detectron2')"}))
        return
    from detectron2.utils.events import EventStorage

    torch.set_flush_denormal(True)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (600 if device.type == "cuda" else (224 if args.quick else 320))
    batch = args.batch or (1 if args.quick else 2)
    rounds = args.rounds or (4 if args.quick else 10)
    height, width = size, int(round(size * 4 / 3))
    stock, ours = build_pair(args.depth, device.type)

    report = {"detectron2": detectron2.__version__, "torch": torch.__version__, "device": str(device),
              "backbone": f"R{args.depth}-FPN", "image_hw": [height, width], "batch": batch, "rounds": rounds,
              "torch_threads": torch.get_num_threads()}
    gen = torch.Generator().manual_seed(0)
    for name, random_weights in (("weights_one", False), ("weights_random", True)):
        inputs = make_batch(gen, batch, height, width, random_weights)
        if not random_weights:
            with torch.no_grad(), EventStorage():
                torch.manual_seed(123)
                lo = ours(inputs)
                torch.manual_seed(123)
                ls = stock(inputs)
            report["loss_max_rel_diff_weights_one"] = max(
                abs(float(lo[k]) - float(ls[k])) / max(abs(float(ls[k])), 1e-12) for k in ls)
        result = {"full_step": interleaved(full_step, ours, stock, inputs, rounds, device)}
        with torch.no_grad():
            images = stock.preprocess_image(inputs)
            features = stock.backbone(images.tensor)
        targets = [x["instances"].to(device) for x in inputs]
        ours._bench_features = stock._bench_features = (images, features, targets)
        heads = interleaved(heads_step, ours, stock, inputs, rounds, device)
        cpu = device.type == "cpu"
        extra = heads["lossmix_cpu_ms" if cpu else "lossmix_ms"] - heads["stock_cpu_ms" if cpu else "stock_ms"]
        heads["overhead_ms"] = round(extra, 1)
        heads["implied_step_ratio"] = round(1.0 + extra / result["full_step"]["stock_cpu_ms" if cpu else "stock_ms"], 4)
        result["heads_only"] = heads
        report[name] = result
    print(json.dumps(report))


if __name__ == "__main__":
    main()
