#!/usr/bin/env python
"""Compare methods over seeds: a markdown table (mAP mean ± std, per-class AP) and a bar chart.

    # finished runs (a folder of seed<k>/ sub-folders stands for all of them)
    python tools/compare.py --runs output/compare/baseline output/compare/lossmix --output output/compare

    # train each config for each seed first (OUTPUT_DIR = <output-root>/<config stem>/seed<k>), then compare
    python tools/compare.py --configs configs/quickstart/synthetic_{baseline,lossmix}.yaml --seeds 0 1 2 \\
        --output-root output/compare SOLVER.MAX_ITER 200

Trailing ``KEY VALUE`` pairs (upper-case dotted keys) override every config. Writes
``compare.md`` and ``compare.png`` to ``--output`` (default: ``--output-root`` when training,
else the current folder) and prints the markdown.

With ``--configs``, ``--skip-existing`` keeps the runs that are complete by the benchmark's rule (the same config,
a result for every ``DATASETS.TEST``, the final summary row in ``metrics.jsonl``). A run folder that holds any other
run (complete but not skipped, interrupted, or trained with another config) is refused before anything trains,
unless ``--overwrite``: its checkpoints, metrics and evaluations are then deleted and the run trained again.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

try:
    import lossmix  # noqa: F401
except ImportError:  # runnable from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lossmix.benchmark.compare import GROUP_BY, load_runs, plot, summarize, to_markdown  # noqa: E402

_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
# a run folder's state (lossmix.benchmark.protocol.run_state) as the refusal to retrain over it names it
_STATES = {"complete": "complete", "resume": "interrupted", "fresh": "not complete",
           "changed": "trained with another config"}


def parse_args(argv=None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the overrides start at the first KEY-looking token (list options would swallow them otherwise)
    split = next((i for i, tok in enumerate(argv) if _KEY.match(tok)), len(argv))
    argv, opts = argv[:split], argv[split:]
    formatter = type("HelpFormatter", (argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter), {})
    p = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs", nargs="+", metavar="DIR", help="run folders (or folders of seed<k>/ run folders)")
    src.add_argument("--configs", nargs="+", metavar="CFG", help="config files to train for each seed, then compare")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds for --configs")
    p.add_argument("--output-root", default="output/compare", help="where --configs runs go")
    p.add_argument("--output", default=None, help="folder for compare.md / compare.png (None: --output-root with --configs, else the working directory)")
    p.add_argument("--skip-existing", action="store_true",
                   help="with --configs: do not retrain a complete run (same config, every DATASETS.TEST result, "
                        "the final summary row)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --configs: delete and retrain the runs already in --output-root that are not skipped "
                        "(without it such a folder is refused)")
    p.add_argument("--group-by", choices=GROUP_BY, default="auto",
                   help="auto: parent folder of seed<k>/ folders, else LOSSMIX.MODE[+METHOD] from config.yaml")
    args = p.parse_args(argv)
    if opts and not args.configs:
        p.error(f"overrides {opts} need --configs")
    if len(opts) % 2:
        p.error(f"overrides must be KEY VALUE pairs, got {opts}")
    args.opts = opts
    return args


def train_runs(configs, seeds, output_root, opts, skip_existing=False, overwrite=False) -> list[str]:
    """Train every config for every seed in this process; returns the run folders. With ``skip_existing`` a run
    complete by the benchmark's rule (:func:`lossmix.benchmark.protocol.run_state`) is kept; a folder holding any
    other run is refused before anything trains, or with ``overwrite`` its run is deleted and trained again."""
    from lossmix.benchmark.protocol import config_run_state
    from lossmix.config.setup import build_config
    from lossmix.engine.checkpoint import run_outputs
    from lossmix.engine.defaults import setup
    from lossmix.engine.run import run

    stems = [os.path.splitext(os.path.basename(c))[0] for c in configs]
    if len(set(stems)) != len(stems):
        raise SystemExit(f"config file names must differ (their stems name the methods): {stems}")
    planned = []  # (config, seed, run folder, overrides, state)
    for config, stem in zip(configs, stems):
        for seed in seeds:
            out = os.path.join(output_root, stem, f"seed{seed}")
            run_opts = list(opts) + ["SEED", str(seed), "OUTPUT_DIR", out]
            state, _ = config_run_state(out, build_config(config, run_opts))  # setup() would rewrite config.yaml
            planned.append((config, seed, out, run_opts, state))
    keep = {out for *_, out, _, state in planned if skip_existing and state == "complete"}
    held = [f"{out} ({_STATES[state]})" for *_, out, _, state in planned if out not in keep and run_outputs(out)]
    if held and not overwrite:
        keep_hint = "" if skip_existing else "--skip-existing to keep the complete ones, "
        raise SystemExit(f"compare: {len(held)} run folder(s) already hold a run: {', '.join(held)}; add "
                         f"{keep_hint}--overwrite to delete and retrain them, or choose another --output-root")
    for config, seed, out, run_opts, state in planned:
        if out in keep:
            print(f"[compare] {out}: complete, skipped", file=sys.stderr)
        else:
            print(f"[compare] training {config} seed {seed} -> {out}", file=sys.stderr)
            run(setup(config, run_opts, resume=None if overwrite else False), overwrite=overwrite)
    return [out for _, _, out, _, _ in planned]


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.configs:
        run_dirs = train_runs(args.configs, args.seeds, args.output_root, args.opts, args.skip_existing,
                              args.overwrite)
        output = args.output or args.output_root
    else:
        run_dirs, output = args.runs, args.output or "."
    summary = summarize(load_runs(run_dirs, group_by=args.group_by))
    markdown = to_markdown(summary)
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "compare.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    plot(summary, os.path.join(output, "compare.png"))
    print(markdown)
    print(f"wrote {os.path.join(output, 'compare.md')} and compare.png", file=sys.stderr)
    return markdown


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"compare: {exc}")
