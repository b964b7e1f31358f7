#!/usr/bin/env python
"""Train or evaluate a detector: parse args -> setup -> run (the recipe the config names) -> print.

    python tools/train_net.py --config-file configs/faster_rcnn_r50_lossmix.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 2 SOLVER.IMS_PER_BATCH 8
"""
import argparse
import os
import sys

try:
    import lossmix  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lossmix.engine.launch import launch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", "--config", dest="config_file", default="", metavar="FILE")
    p.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS on DATASETS.TEST")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    p.add_argument("--num-gpus", type=int, default=1, help="processes to launch (gloo on CPU)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    return p.parse_args(argv)


def main(args):
    from lossmix.engine.defaults import setup
    from lossmix.engine.run import run
    from lossmix.evaluation import format_table
    from lossmix.utils import comm

    cfg = setup(args.config_file, args.opts)
    results = run(cfg, resume=args.resume, eval_only=args.eval_only)["results"]  # {dataset: {role: result}}
    if comm.is_main_process():
        for name, per_role in results.items():
            for role, r in per_role.items():
                print(f"\n{name} ({role}):\n{format_table(r) if r and 'per_class' in r else r}")
    return results


if __name__ == "__main__":
    args = parse_args()
    launch(main, args.num_gpus, args=(args,))
