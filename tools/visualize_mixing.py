#!/usr/bin/env python
"""Draw mixed training samples exactly as the training loader builds them.

    python tools/visualize_mixing.py --config-file configs/quickstart/synthetic_lossmix.yaml --num 8
    python tools/visualize_mixing.py --config-file CFG --output vis LOSSMIX.METHOD saliencymix

Boxes are coloured by their loss weight (colour bar below each picture) with the weight printed
beside them; the partner's boxes are dashed; a CutMix / SaliencyMix patch is outlined dotted, and
SaliencyMix adds a panel with the partner's saliency map and the chosen patch. Writes
``mix_<k>.png`` (k = 0..N-1) to ``--output``.
"""
from __future__ import annotations

import argparse
import os
import sys

try:
    import lossmix  # noqa: F401
except ImportError:  # runnable from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
    from lossmix.config.setup import split_options

    formatter = type("HelpFormatter", (argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter), {})
    p = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    p.add_argument("--config-file", "--config", dest="config_file", required=True, metavar="FILE",
                   help="YAML config (a bare name is looked up under configs/)")
    p.add_argument("--num", type=int, default=8, help="mixed samples to draw")
    p.add_argument("--output", default="output/visualize_mixing", help="folder for the PNGs")
    p.add_argument("--seed", type=int, default=None, help="overrides SEED (the loader's stream)")
    p.add_argument("--min-short", type=int, default=400, help="upscale small images to this short side")
    p.add_argument("--debug", action="store_true", help="show the full traceback of configuration and data errors")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides (options may follow them)")
    return split_options(p, argv)


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    from lossmix.config.setup import build_config
    from lossmix.data.builtin import register_custom  # (importing it registers the standard dataset names)
    from lossmix.data.catalog import MetadataCatalog
    from lossmix.data.loader import build_train_loader
    from lossmix.analysis.visualize import iter_mixed_samples, render_mixed_sample, save_png

    opts = list(args.opts) + ["DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", ""]  # no bad-sample log, no workers
    if args.seed is not None:
        opts += ["SEED", str(args.seed)]
    from lossmix.engine.defaults import report_user_errors

    with report_user_errors(debug=args.debug):
        cfg = build_config(args.config_file, opts)
        register_custom(cfg)  # DATASETS.CUSTOM_VOC, as training registers them
        class_names = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("thing_classes")
        samples = iter_mixed_samples(build_train_loader(cfg))
    os.makedirs(args.output, exist_ok=True)
    written = []
    for k in range(args.num):
        picture = render_mixed_sample(next(samples), class_names=class_names, mode=cfg.LOSSMIX.MODE,
                                      method=cfg.LOSSMIX.METHOD, min_short=args.min_short,
                                      saliency=cfg.LOSSMIX.SALIENCY, paste=cfg.LOSSMIX.PASTE)
        written.append(save_png(os.path.join(args.output, f"mix_{k}.png"), picture))
        print(written[-1])
    return written


if __name__ == "__main__":
    main()
