#!/usr/bin/env python
"""Write the embedded synthetic domain-shift benchmark (VOC format, one folder per domain).

    python tools/make_synthetic.py --root datasets/synthetic --seed 0 [--num-train N --num-test N --overwrite]

Re-running with the same parameters is a no-op (each domain folder carries a stamp); other
parameters regenerate the folders; a folder without a stamp is only replaced with --overwrite.
"""
import argparse
import json
import sys
from pathlib import Path

try:
    import lossmix  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lossmix.data.synthetic import SOURCE_CLASS_HUE_PROB, SYNTHETIC_DOMAINS, generate


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="datasets/synthetic", help="parent folder; domain d goes to ROOT/d")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=600, help="train images per domain")
    parser.add_argument("--num-test", type=int, default=150, help="test images per domain")
    parser.add_argument("--image-size", type=int, default=256, help="shorter image side in pixels")
    parser.add_argument("--class-hue-prob", type=float, default=SOURCE_CLASS_HUE_PROB,
                        help="source domain: probability that an object takes its class's hue (the colour cue)")
    parser.add_argument("--domains", nargs="+", default=list(SYNTHETIC_DOMAINS), choices=SYNTHETIC_DOMAINS)
    parser.add_argument("--workers", type=int, default=None, help="render threads (default: by size and CPUs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="also replace domain folders that exist without a stamp (folders stamped "
                             "with other parameters are always regenerated)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    summary = generate(args.root, seed=args.seed, num_train=args.num_train, num_test=args.num_test,
                       image_size=args.image_size, domains=args.domains, overwrite=args.overwrite,
                       workers=args.workers, class_hue_prob=args.class_hue_prob)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    try:
        main(parse_args())
    except (FileExistsError, ValueError) as exc:
        sys.exit(f"make_synthetic: {exc}")
