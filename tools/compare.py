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
                   help="with --configs: do not retrain a run whose eval/ already has every DATASETS.TEST result")
    p.add_argument("--group-by", choices=GROUP_BY, default="auto",
                   help="auto: parent folder of seed<k>/ folders, else LOSSMIX.MODE[+METHOD] from config.yaml")
    args = p.parse_args(argv)
    if opts and not args.configs:
        p.error(f"overrides {opts} need --configs")
    if len(opts) % 2:
        p.error(f"overrides must be KEY VALUE pairs, got {opts}")
    args.opts = opts
    return args


def train_runs(configs, seeds, output_root, opts, skip_existing=False) -> list[str]:
    """Train every config for every seed in this process; returns the run folders."""
    from lossmix.config.setup import build_config
    from lossmix.engine.defaults import setup
    from lossmix.engine.run import run

    stems = [os.path.splitext(os.path.basename(c))[0] for c in configs]
    if len(set(stems)) != len(stems):
        raise SystemExit(f"config file names must differ (their stems name the methods): {stems}")
    run_dirs = []
    for config, stem in zip(configs, stems):
        for seed in seeds:
            out = os.path.join(output_root, stem, f"seed{seed}")
            run_opts = list(opts) + ["SEED", str(seed), "OUTPUT_DIR", out]
            tests = build_config(config, run_opts).DATASETS.TEST  # setup() would rewrite config.yaml
            if skip_existing and all(os.path.isfile(os.path.join(out, "eval", f"{t}.json")) for t in tests):
                print(f"[compare] {out}: results exist, skipped", file=sys.stderr)
            else:
                print(f"[compare] training {config} seed {seed} -> {out}", file=sys.stderr)
                run(setup(config, run_opts))
            run_dirs.append(out)
    return run_dirs


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.configs:
        run_dirs = train_runs(args.configs, args.seeds, args.output_root, args.opts, args.skip_existing)
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
