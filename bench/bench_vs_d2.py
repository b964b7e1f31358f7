"""Training step and inference per image: lossmix vs detectron2 on the same model, shape and images; prints one JSON object.

The same Faster R-CNN in both engines: R50-FPN, frozen BatchNorm, random init, stem and res2 frozen (res3-res5
trainable), 6 classes, anchors 32-512 on P2-P6, 256 anchors and 512 ROIs sampled per image, 2000 proposals
per level before NMS and 2000 per image after it in training (1000 / 1000 at test), ROIAlign 7x7 with 2
samples per bin, two 1024-wide box-head layers, torchvision's ResNet v1.5 (the stride in the 3x3 conv; detectron2's
default puts it in the 1x1: ``--d2-stride-in-1x1`` measures that). Two images, 320x400 and 400x320 (HxW), with
the same boxes. Each engine's frozen BatchNorm statistics are first set from the images
(:func:`calibrate_frozen_bn`), so that both RPNs return realistic proposal counts (printed).

Each engine runs its own code: ours a :class:`lossmix.engine.trainer.Trainer` step of the supervised recipe
(uint8 images in, optimizer step included) and :func:`lossmix.engine.inference.predict` per image (detections
rescaled to the original size); detectron2 its ``SimpleTrainer.run_step`` and ``model.eval()([input])``. They
alternate (ABBA) for ``--rounds`` rounds after a warm-up; medians of the process CPU time (one torch thread by
default, so waiting for a core on a shared machine does not count) and of wall time; ``ratio`` = lossmix /
detectron2 (<= 1: at least as fast). Without detectron2 only our times are printed, with the reason.

    python bench/bench_vs_d2.py [--rounds 5] [--threads 1] [--d2-stride-in-1x1] [--d2-sampling-ratio 2]
"""
from __future__ import annotations

import argparse
import itertools
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 6
SHAPES = ((320, 400), (400, 320))  # (H, W) of the two images
BOXES = (((10.0, 20.0, 200.0, 180.0), (150.0, 100.0, 390.0, 300.0), (60.0, 200.0, 140.0, 310.0)),
         ((30.0, 40.0, 300.0, 350.0), (5.0, 5.0, 90.0, 120.0)))
LABELS = ((0, 3, 5), (1, 2))  # 0-based classes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="ABBA rounds per measurement (after one warm-up round)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    p.add_argument("--d2-stride-in-1x1", action="store_true",
                   help="detectron2's default ResNet (stride in the 1x1 conv, less work) instead of the same model")
    p.add_argument("--d2-sampling-ratio", type=int, default=2,
                   help="detectron2's POOLER_SAMPLING_RATIO (ours is 2; detectron2's default 0 is adaptive)")
    p.add_argument("--skip-train", action="store_true", help="time inference only")
    p.add_argument("--with-torchvision-bn", action="store_true",
                   help="also time our model with torchvision's two-pass FrozenBatchNorm2d (before the fused layer)")
    return p.parse_args(argv)


def make_images(gen):
    return [(torch.rand(3, h, w, generator=gen) * 255).to(torch.uint8) for h, w in SHAPES]


# ----------------------------------------------------------------------------------------------- lossmix
def build_ours():
    from lossmix.config.setup import build_config
    from lossmix.engine.recipes.supervised import SupervisedRecipe
    from lossmix.engine.schedule import build_optimizer
    from lossmix.engine.trainer import Trainer

    cfg = build_config(os.path.join(REPO, "configs", "Base-RCNN-FPN.yaml"),
                       ["MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES), "MODEL.DEVICE", "cpu", "OUTPUT_DIR", "",
                        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "2000", "SOLVER.BASE_LR", "1e-12"])
    torch.manual_seed(0)
    recipe = SupervisedRecipe.from_config(cfg, device=torch.device("cpu"))
    trainer = Trainer.from_config(cfg, recipe=recipe, optimizer=build_optimizer(cfg, recipe.trainable),
                                  scheduler=None, data_loader=None, device=torch.device("cpu"), checkpointer=None)
    return cfg, recipe.model, trainer


def our_batch(images):
    batch = []
    for image, boxes, labels in zip(images, BOXES, LABELS):
        n = len(boxes)
        batch.append({"image": image, "height": image.shape[1], "width": image.shape[2], "target": {
            "boxes": torch.tensor(boxes), "labels": torch.tensor(labels) + 1, "weights": torch.ones(n),
            "from_partner": torch.zeros(n, dtype=torch.bool), "lam": torch.tensor(1.0)}})
    return batch


def _inputs_targets(batch):
    from lossmix.engine.inference import images_to_device, targets_to_device

    return images_to_device(batch, torch.device("cpu")), targets_to_device(batch, torch.device("cpu"))


# ----------------------------------------------------------------------------------------------- detectron2
def build_d2(stride_in_1x1: bool, sampling_ratio: int):
    from detectron2.config import get_cfg
    from detectron2.engine import SimpleTrainer
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer

    cfg = get_cfg()
    m = cfg.MODEL
    m.DEVICE, m.WEIGHTS, m.MASK_ON = "cpu", "", False
    m.BACKBONE.NAME, m.BACKBONE.FREEZE_AT = "build_resnet_fpn_backbone", 2
    m.RESNETS.DEPTH, m.RESNETS.NORM, m.RESNETS.STRIDE_IN_1X1 = 50, "FrozenBN", stride_in_1x1
    m.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    m.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    m.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    m.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    m.RPN.PRE_NMS_TOPK_TRAIN, m.RPN.POST_NMS_TOPK_TRAIN = 2000, 2000
    m.RPN.PRE_NMS_TOPK_TEST, m.RPN.POST_NMS_TOPK_TEST = 1000, 1000
    m.RPN.BATCH_SIZE_PER_IMAGE = 256
    m.ROI_HEADS.NAME, m.ROI_HEADS.IN_FEATURES = "StandardROIHeads", ["p2", "p3", "p4", "p5"]
    m.ROI_HEADS.NUM_CLASSES, m.ROI_HEADS.BATCH_SIZE_PER_IMAGE = NUM_CLASSES, 512
    m.ROI_BOX_HEAD.NAME, m.ROI_BOX_HEAD.NUM_FC, m.ROI_BOX_HEAD.POOLER_RESOLUTION = "FastRCNNConvFCHead", 2, 7
    m.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = sampling_ratio
    cfg.SOLVER.BASE_LR = 1e-12  # the weights stay put (a random R50 without normalisation diverges); the step does all its work
    torch.manual_seed(0)
    model = build_model(cfg)
    trainer = SimpleTrainer(model, itertools.repeat(None), build_optimizer(cfg, model))
    return model, trainer


def d2_batch(images):
    from detectron2.structures import Boxes, Instances

    batch = []
    for image, boxes, labels in zip(images, BOXES, LABELS):
        inst = Instances(tuple(image.shape[1:]))
        inst.gt_boxes = Boxes(torch.tensor(boxes))
        inst.gt_classes = torch.tensor(labels)
        batch.append({"image": image.flip(0).contiguous(), "height": image.shape[1], "width": image.shape[2],
                      "instances": inst})  # BGR: detectron2's default format
    return batch


# ----------------------------------------------------------------------------------------------- both
def calibrate_frozen_bn(model, forward) -> int:
    """Set every frozen BatchNorm's statistics to those of its input in one ``forward()`` (layer by layer).

    A random R50 with identity frozen BatchNorm is unnormalised: its activations grow through 50 layers and
    the RPN's boxes degenerate, so that (in detectron2, whose init differs) only a handful of proposals survive
    NMS and the ROI heads have almost nothing to do. Calibrated, both engines see well-scaled features and
    their RPNs return proposals up to the caps, as a trained model's would. Returns how many layers were set.
    """
    layers = [m for m in model.modules() if type(m).__name__ == "FrozenBatchNorm2d"]

    def set_stats(module, inputs):
        x = inputs[0].detach()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    handles = [m.register_forward_pre_hook(set_stats) for m in layers]
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in handles:
            h.remove()
    return len(layers)


def count_proposals(module, run) -> list[int]:
    """Proposals per image that ``module`` (an RPN) returns during ``run()``."""
    counts = []
    handle = module.register_forward_hook(lambda m, i, out: counts.extend(len(p) for p in out[0]))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return counts


# ----------------------------------------------------------------------------------------------- timing
def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def alternate(fns: dict, rounds: int) -> dict:
    """ABBA over ``fns`` (name -> callable) after one warm-up call each; medians (ms) and ratio first / second."""
    names = list(fns)
    for name in names:
        fns[name]()
    cpu, wall = {n: [] for n in names}, {n: [] for n in names}
    for k in range(rounds):
        for name in (names if k % 2 == 0 else names[::-1]):
            w, c = timed(fns[name])
            wall[name].append(w)
            cpu[name].append(c)
    out = {f"{n}_cpu_ms": round(statistics.median(cpu[n]) * 1e3, 1) for n in names}
    out.update({f"{n}_wall_ms": round(statistics.median(wall[n]) * 1e3, 1) for n in names})
    if "detectron2" in names:
        ref = "detectron2"
        for n in names:
            if n != ref:
                suffix = "" if n == "lossmix" else f"_{n}"
                out[f"ratio_cpu{suffix}"] = round(statistics.median(cpu[n]) / statistics.median(cpu[ref]), 3)
                out[f"ratio_wall{suffix}"] = round(statistics.median(wall[n]) / statistics.median(wall[ref]), 3)
    if "lossmix_torchvision_bn" in names:
        out["fused_bn_over_torchvision_bn_cpu"] = round(
            statistics.median(cpu["lossmix"]) / statistics.median(cpu["lossmix_torchvision_bn"]), 3)
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    from lossmix.engine.inference import predict

    images = make_images(torch.Generator().manual_seed(0))
    cfg, ours, our_trainer = build_ours()
    report = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "rounds": args.rounds,
              "images_hw": [list(s) for s in SHAPES], "ours_roialign_sampling_ratio": 2}
    try:
        import detectron2
    except ImportError as err:
        detectron2 = None
        report["detectron2"] = f"skipped: detectron2 is not importable ({err})"
    fns_train, fns_infer = {}, {}
    batch = our_batch(images)
    step = itertools.count()

    def our_step():
        our_trainer.iter = next(step)
        our_trainer.run_step(batch)

    calibrate_frozen_bn(ours, lambda: predict(ours, batch, torch.device("cpu")))
    report["proposals_per_image_inference"] = {
        "lossmix": count_proposals(ours.rpn, lambda: [predict(ours, [b], torch.device("cpu")) for b in batch])}
    ours.train()
    fns_train["lossmix"] = our_step
    fns_infer["lossmix"] = lambda: [predict(ours, [b], torch.device("cpu")) for b in batch]
    if args.with_torchvision_bn:  # the same model and weights with torchvision's two-pass layer
        import copy

        from torchvision.ops import FrozenBatchNorm2d as TorchvisionFrozenBN

        tv_model = copy.deepcopy(ours)
        for m in tv_model.modules():
            if type(m).__name__ == "FrozenBatchNorm2d":
                m.__class__ = TorchvisionFrozenBN
        tv_optimizer = torch.optim.SGD([p for p in tv_model.parameters() if p.requires_grad], lr=1e-12, momentum=0.9)

        def tv_step():
            tv_optimizer.zero_grad(set_to_none=True)
            sum(tv_model(*_inputs_targets(batch)).values()).backward()
            tv_optimizer.step()

        tv_model.train()
        fns_train["lossmix_torchvision_bn"] = tv_step
        fns_infer["lossmix_torchvision_bn"] = lambda: [predict(tv_model, [b], torch.device("cpu")) for b in batch]
    if detectron2 is not None:
        from detectron2.utils.events import EventStorage

        d2_model, d2_trainer = build_d2(args.d2_stride_in_1x1, args.d2_sampling_ratio)
        report.update(detectron2=detectron2.__version__, d2_stride_in_1x1=args.d2_stride_in_1x1,
                      d2_roialign_sampling_ratio=args.d2_sampling_ratio)
        inputs = d2_batch(images)
        d2_trainer._data_loader_iter_obj = itertools.repeat(inputs)
        storage = EventStorage(0)

        def d2_step():
            with storage:
                d2_trainer.iter = storage.iter = next(step)
                d2_trainer.storage = storage
                d2_trainer.run_step()

        def d2_infer():
            with torch.no_grad():
                was = d2_model.training
                d2_model.eval()
                out = [d2_model([{k: x[k] for k in ("image", "height", "width")}]) for x in inputs]
                d2_model.train(was)
            return out

        calibrate_frozen_bn(d2_model, d2_infer)
        report["proposals_per_image_inference"]["detectron2"] = count_proposals(d2_model.proposal_generator, d2_infer)
        d2_model.train()
        fns_train["detectron2"] = d2_step
        fns_infer["detectron2"] = d2_infer
    if not args.skip_train:
        report["train_step_batch2"] = alternate(fns_train, args.rounds)
    infer = alternate(fns_infer, args.rounds)
    report["inference_per_image"] = {k: (round(v / len(images), 1) if k.endswith("_ms") else v)
                                     for k, v in infer.items()}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
