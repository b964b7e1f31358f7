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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """-h shows each option's default and keeps the description's line breaks."""


def parse_args(argv=None):
    from lossmix.config.setup import split_options

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config-file", "--config", dest="config_file", default=None, metavar="FILE",
                   help="YAML config; a bare name such as faster_rcnn_r50_lossmix.yaml is looked up under configs/")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate MODEL.WEIGHTS on DATASETS.TEST; writes under OUTPUT_DIR/eval_only/<weights name>/")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in OUTPUT_DIR that loads (a damaged one is renamed "
                        "*.damaged); stops if none loads but OUTPUT_DIR holds a run")
    p.add_argument("--allow-fresh", action="store_true",
                   help="with --resume: start from iteration 0 when no checkpoint loads, instead of stopping")
    p.add_argument("--overwrite", action="store_true",
                   help="without --resume: delete the checkpoints, metrics and evaluations of a run already in "
                        "OUTPUT_DIR and start over (otherwise such a folder is refused)")
    p.add_argument("--num-gpus", type=int, default=1, help="processes to launch (NCCL on GPUs, gloo on CPU)")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of configuration and data errors (always written to log.txt)")
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="KEY VALUE config overrides, e.g. SOLVER.MAX_ITER 1000 (options may follow them)")
    return split_options(p, argv)


def main(args):
    from lossmix.engine.defaults import report_user_errors, setup
    from lossmix.engine.run import run
    from lossmix.evaluation import format_table
    from lossmix.utils import comm

    with report_user_errors(debug=args.debug):
        cfg = setup(args.config_file, args.opts, eval_only=args.eval_only,
                    resume=None if args.resume or args.overwrite else False)
        results = run(cfg, resume=args.resume, allow_fresh=args.allow_fresh, eval_only=args.eval_only,
                      overwrite=args.overwrite)["results"]  # {dataset: {role: result}}
    if comm.is_main_process():
        for name, per_role in results.items():
            for role, r in per_role.items():
                print(f"\n{name} ({role}):\n{format_table(r) if r and 'per_class' in r else r}")
    return results


if __name__ == "__main__":
    args = parse_args()
    try:
        launch(main, args.num_gpus, args=(args,))
    except Exception as err:  # a spawned process that exited on a user error has printed its one line
        if getattr(err, "exit_code", None) == 2:
            sys.exit(2)
        raise
