#!/usr/bin/env python
"""Attribution maps of trained detectors side by side: where does each run look when it scores a box?

    python tools/attribution.py --runs output/quickstart/synthetic_{baseline,uniform,noise,lossmix} \\
        --dataset synthetic_source_test --num-images 8 --source gt --output output/attribution

Each run folder holds ``config.yaml`` and ``model_final.pth`` (as ``tools/train_net.py`` writes them).
For each of the first N images of the dataset (with ``--source gt``: the first N with a box), every
run explains one box: its top-scoring detection (``--source detections``; the score is the one the
detector reported, recomputed from the detection's source proposal, and the shares are measured
around the detection's final box) or the image's largest ground-truth box with its class
(``--source gt``; the same object for every run, and the same pixels when the runs share
``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``, so runs are directly comparable). Each run sees its own test
mapper's input (``LossMixDatasetMapper.from_config(cfg, is_train=False)``).

Writes to ``--output``: ``attribution_<method>.png`` (rows: images, columns: runs; each map as a heat
map over that run's input, normalised per cell, with the box drawn), ``attribution.md`` (share of the
map's mass inside the box / in the ring around it / elsewhere, mean +- std over images, per run and
method) and ``attribution.json`` (every image's box, score and shares).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

try:
    import lossmix  # noqa: F401
except ImportError:  # runnable from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lossmix.analysis.attribution import (  # noqa: E402
    AUTO_LAYER, METHODS, REGIONS, box_shares, detect_with_proposals, explain, summarize_shares,
)
from lossmix.config.setup import build_config  # noqa: E402
from lossmix.data.catalog import DatasetCatalog, MetadataCatalog  # noqa: E402
from lossmix.data.mapper import LossMixDatasetMapper, to_model_input  # noqa: E402
from lossmix.engine.trainer import resolve_device  # noqa: E402
from lossmix.engine.checkpoint import load_detector  # noqa: E402

CONFIG_NAME, WEIGHTS_NAME = "config.yaml", "model_final.pth"
DISPLAY_PERCENTILE = 99.5  # heat maps are shown up to this percentile: gradient maps have a few extreme pixels


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, metavar="DIR",
                        help=f"run folders, each with {CONFIG_NAME} and {WEIGHTS_NAME}")
    parser.add_argument("--dataset", required=True, help="a registered dataset name, e.g. synthetic_source_test")
    parser.add_argument("--num-images", type=int, default=8, help="the first N images of the dataset")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--source", choices=("detections", "gt"), default="detections",
                        help="explain each run's top detection, or the largest ground-truth box (same for all runs)")
    parser.add_argument("--output", default="output/attribution", help="folder for the PNGs and tables")
    parser.add_argument("--ring", type=float, default=0.5,
                        help="ring = the box grown by RING x its width/height on each side, minus the box")
    parser.add_argument("--gradcam-layer", default=AUTO_LAYER,
                        help="module path, e.g. backbone.body.layer4; 'auto': the FPN level the box is pooled from")
    parser.add_argument("--ig-steps", type=int, default=32, help="Integrated Gradients: steps from the black baseline")
    parser.add_argument("--smoothgrad-samples", type=int, default=16, help="SmoothGrad: noisy copies averaged")
    parser.add_argument("--smoothgrad-stdev", type=float, default=0.1, help="noise std in 0-1 pixel units")
    parser.add_argument("--batch-size", type=int, default=16, help="copies per forward for IG / SmoothGrad")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="where the models run")
    return parser.parse_args(argv)


def run_name(folder: str) -> str:
    """The folder's name; ``<parent>/seed<k>`` for a seed folder (benchmark and compare layouts)."""
    path = os.path.normpath(folder)
    name = os.path.basename(path)
    return f"{os.path.basename(os.path.dirname(path))}/{name}" if re.fullmatch(r"seed\d+", name) else name


def pick_images(dicts: list[dict], num_images: int, need_boxes: bool) -> list[dict]:
    """The first ``num_images`` dataset dicts (with at least one annotation when ``need_boxes``)."""
    chosen = [d for d in dicts if d.get("annotations") or not need_boxes]
    return chosen[:num_images]


def run_config(folder: str, opts=()):
    """The config a run folder was trained with (its ``config.yaml``), with ``opts`` on top."""
    config = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(config):
        raise FileNotFoundError(f"run folder {folder!r} has no {CONFIG_NAME}")
    return build_config(config, list(opts))


def load_run(folder: str, device: torch.device):
    """``(model in eval mode, test mapper)`` of a run folder."""
    weights = os.path.join(folder, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"run folder {folder!r} has no {WEIGHTS_NAME}")
    cfg = run_config(folder, ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", device.type])
    if cfg.MODEL.META_ARCHITECTURE != "FasterRCNN":
        raise ValueError(f"run folder {folder!r} holds a {cfg.MODEL.META_ARCHITECTURE}: attribution explains a "
                         "Faster R-CNN ROI-head score of one box; one-stage detectors (RetinaNet, FCOS) are not supported")
    model = load_detector(cfg).to(device).eval()
    return model, LossMixDatasetMapper.from_config(cfg, is_train=False)


def target_box(model, image: torch.Tensor, target: dict, source: str):
    """``(pooled box, label, region box, reported score)`` to explain; None when there is nothing to explain.

    ``label`` is torchvision's (class + 1). Detections: the top detection's source proposal is pooled
    (so the score is the reported one) and its final box is the region; ground truth: the largest box.
    """
    if source == "gt":
        boxes = target["boxes"]
        if not len(boxes):
            return None
        k = int(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).argmax())
        return boxes[k], int(target["labels"][k]), boxes[k], math.nan
    det = detect_with_proposals(model, image)
    if not len(det["scores"]):
        return None
    k = int(det["scores"].argmax())
    return det["proposals"][k], int(det["labels"][k]), det["boxes"][k], float(det["scores"][k])


def analyse(args, methods: list[str]) -> tuple[list[str], list[list[dict]]]:
    """``(run names, cells[run][image])``; a cell holds the image (HxWx3 uint8), the boxes, maps and shares."""
    try:
        import lossmix.data.builtin  # noqa: F401  (registers the standard dataset names)
    except ImportError as err:
        if err.name != "lossmix.data.builtin":
            raise
    from lossmix.data.builtin import register_custom

    for folder in args.runs:  # a run's own datasets (DATASETS.CUSTOM_VOC in its config.yaml), as training registered them
        register_custom(run_config(folder))
    device = resolve_device(args.device)
    dicts = pick_images(DatasetCatalog.get(args.dataset), args.num_images, args.source == "gt")
    if not dicts:
        raise ValueError(f"dataset {args.dataset!r} has no images to explain")
    class_names = MetadataCatalog.get(args.dataset).get("thing_classes") or []
    settings = dict(ig_steps=args.ig_steps, smoothgrad_samples=args.smoothgrad_samples,
                    smoothgrad_stdev=args.smoothgrad_stdev, internal_batch_size=args.batch_size)
    cells = []
    for folder in args.runs:
        model, mapper = load_run(folder, device)
        row = []
        for index, record in enumerate(dicts):
            inp = to_model_input(mapper.load(record, np.random.default_rng(0)))  # the test mapper is deterministic
            image = inp["image"].to(device).float() / 255.0
            cell = {"image_id": str(record.get("image_id", index)), "image": inp["image"].permute(1, 2, 0).numpy()}
            chosen = target_box(model, image, {k: v.to(device) for k, v in inp["target"].items()}, args.source)
            if chosen is not None:
                pooled, label, region, reported = chosen
                explanation = explain(model, image, pooled, label, methods=methods,
                                      gradcam_layer=args.gradcam_layer, **settings)
                area = box_shares(torch.ones(image.shape[-2:]), region, ring=args.ring)  # an evenly spread map
                name = class_names[label - 1] if 0 < label <= len(class_names) else f"class {label - 1}"
                cell.update(pooled_box=explanation.box, region_box=[float(v) for v in region], **{"class": label - 1},
                            class_name=name,
                            score=explanation.score, reported_score=reported, gradcam_layer=explanation.gradcam_layer,
                            maps={m: h.numpy() for m, h in explanation.maps.items()},
                            shares={m: box_shares(h, region, ring=args.ring) for m, h in explanation.maps.items()},
                            area_shares=area)
            row.append(cell)
            what = f"{cell['class_name']}, score {cell['score']:.3f}" if "maps" in cell else "nothing to explain"
            print(f"[{run_name(folder)}] {index + 1}/{len(dicts)} {cell['image_id']}: {what}", flush=True)
        cells.append(row)
        del model
    return [run_name(f) for f in args.runs], cells


def _fmt(stats: dict) -> str:
    if not stats["n"]:
        return "n/a"
    if math.isnan(stats["std"]):
        return f"{stats['mean']:.3f}"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def share_table(names: list[str], cells: list[list[dict]], methods: list[str]) -> str:
    """Markdown: one row per (run, method) with the in-box / ring / outside shares, mean ± std over images.

    Each run's first row, ``(area)``, gives the shares of an evenly spread map: the regions' areas.
    """
    lines = ["| run | method | in box | ring | outside | images | mean score |",
             "|---|---|---|---|---|---|---|"]
    for name, row in zip(names, cells):
        explained = [c for c in row if "maps" in c]
        score = np.mean([c["score"] for c in explained]) if explained else math.nan
        rows = [("(area)", [c["area_shares"] for c in explained])]
        rows += [(method, [c["shares"][method] for c in explained]) for method in methods]
        for method, records in rows:
            stats = summarize_shares(records)
            lines.append(f"| {name} | {method} | " + " | ".join(_fmt(stats[r]) for r in REGIONS)
                         + f" | {stats['inside']['n']}/{len(row)} | {score:.3f} |")
    return "\n".join(lines)


def write_report(args, names, cells, methods) -> str:
    path = os.path.join(args.output, "attribution.md")
    what = ("the top-scoring detection of each run (score from its source proposal; shares around its final box)"
            if args.source == "detections" else "the largest ground-truth box of each image, with its class")
    layers = sorted({c.get("gradcam_layer", "") for row in cells for c in row} - {""})
    with open(path, "w") as f:
        f.write(f"# Attribution: {args.dataset}, {len(cells[0])} image(s)\n\n")
        f.write(f"Explained: {what}. Ring: the box grown by {args.ring:g} x its size on each side, minus the box.\n")
        if "gradcam" in methods:
            f.write(f"Grad-CAM layer(s): {', '.join(layers) or args.gradcam_layer}.\n")
        f.write("Shares of each map's mass (mean ± std over images; 'images' counts those with a box and a "
                "non-zero map; '(area)' is an evenly spread map, i.e. the regions' share of the image; "
                "'mean score' is the explained class score).\n\n")
        f.write(share_table(names, cells, methods) + "\n")
    records = [{"run": name, **{k: v for k, v in c.items() if k not in ("image", "maps")}}
               for name, row in zip(names, cells) for c in row]
    with open(os.path.join(args.output, "attribution.json"), "w") as f:
        json.dump(records, f, indent=1)
    return path


def draw_grids(args, names, cells, methods) -> list[str]:
    """One PNG per method: rows images, columns runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    paths = []
    rows, cols = len(cells[0]), len(names)
    for method in methods:
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
        for j, (name, row) in enumerate(zip(names, cells)):
            for i, cell in enumerate(row):
                ax = axes[i][j]
                ax.imshow(cell["image"])
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(name, fontsize=10)
                if j == 0:
                    ax.set_ylabel(cell["image_id"], fontsize=8)
                if "maps" not in cell:
                    ax.set_xlabel("nothing to explain", fontsize=8)
                    continue
                heat = cell["maps"][method]
                top = np.percentile(heat, DISPLAY_PERCENTILE)
                ax.imshow(np.clip(heat / top, 0, 1) if top > 0 else heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                x1, y1, x2, y2 = cell["region_box"]
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white", linewidth=1.5))
                share = cell["shares"][method]["inside"]
                ax.set_xlabel(f"{cell['class_name']}  p={cell['score']:.2f}  in box {share:.2f}", fontsize=8)
        fig.suptitle(f"{method} ({args.source})", fontsize=11)
        fig.tight_layout()
        path = os.path.join(args.output, f"attribution_{method}.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods or args.num_images < 1 or args.ring < 0:
        print(f"error: --methods must be a subset of {','.join(METHODS)} (unknown: {unknown}); "
              "--num-images >= 1; --ring >= 0", file=sys.stderr)
        return 2
    try:
        names, cells = analyse(args, methods)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    report = write_report(args, names, cells, methods)
    for path in draw_grids(args, names, cells, methods):
        print("wrote", path)
    print("wrote", report)
    print()
    print(share_table(names, cells, methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
