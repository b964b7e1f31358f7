#!/usr/bin/env python
"""Run a benchmark protocol (configs x seeds) and write its report to docs/benchmark/.

    python tools/benchmark.py supervised                 # configs/benchmark/supervised.yaml
    python tools/benchmark.py supervised --jobs 2        # two runs side by side, the cores shared (best on 2 cores)
    python tools/benchmark.py supervised --dry-run       # what would be trained, resumed or skipped
    python tools/benchmark.py supervised --report-only   # rebuild the report from the complete runs
    make benchmark PROTOCOL=supervised [BENCHMARK_ARGS="--jobs 2"]

Runs go to <output-root>/<protocol>/<entry>/seed<k> and are trained by tools/train_net.py in
subprocesses (log: <run>/benchmark.log). Complete runs are skipped, interrupted ones resumed; a run
whose config.yaml differs from what the protocol now asks is an error (--rerun-changed retrains it).
The protocol schema is in lossmix/benchmark/protocol.py's docstring.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

try:
    import lossmix  # noqa: F401
except ImportError:  # runnable from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lossmix import benchmark as bm  # noqa: E402

TRAIN_NET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net.py")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocol", help="protocol name (configs/benchmark/<name>.yaml) or a path to a protocol file")
    p.add_argument("--output-root", default="output/benchmark", help="runs go to <root>/<protocol>/<entry>/seed<k>")
    p.add_argument("--report-dir", default="docs/benchmark", help="where <protocol>.md / .png / .json go")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="fixed thread count of every run (default: the cores are shared among the runs in progress, "
                        "re-shared whenever one starts or ends, so a run left alone uses the idle cores)")
    p.add_argument("--cores", type=int, default=None,
                   help="cores to share among the runs when --threads is not given (default: those this process may use)")
    p.add_argument("--dry-run", action="store_true", help="list each run's state and command; train nothing")
    p.add_argument("--report-only", action="store_true", help="train nothing; rebuild the report from complete runs")
    p.add_argument("--rerun-changed", action="store_true",
                   help="delete and retrain runs whose config.yaml differs from what the protocol now asks")
    p.add_argument("--progress-every", type=float, default=60.0, help="seconds between progress lines")
    args = p.parse_args(argv)
    if args.jobs < 1 or any(n is not None and n < 1 for n in (args.threads, args.cores)):
        p.error("--jobs, --threads and --cores must be >= 1")
    return args


def reproduce_command(args) -> str:
    extra = " --jobs %d" % args.jobs if args.jobs != 1 else ""
    if args.output_root != "output/benchmark":
        extra += f" --output-root {shlex.quote(args.output_root)}"
    return f"python tools/benchmark.py {shlex.quote(args.protocol)}{extra}"


def main(argv=None) -> int:
    args = parse_args(argv)
    protocol = bm.load_protocol(bm.protocol_path(args.protocol))
    specs = bm.plan(protocol, args.output_root)
    counts = {s: sum(x.state == s for x in specs) for s in ("complete", "resume", "fresh", "changed")}
    print(f"[benchmark] {protocol.name}: {len(specs)} runs ({', '.join(f'{v} {k}' for k, v in counts.items() if v)})")
    if args.dry_run:
        for spec in specs:
            print(f"{spec.state:9s} {spec.output_dir}")
            if spec.state == "changed":
                print(f"          {bm.describe_changed(spec)}")
            elif spec.state != "complete":
                print("          " + " ".join(shlex.quote(c) for c in spec.command(sys.executable, TRAIN_NET)))
        return 0
    if not args.report_only:
        bm.execute(specs, jobs=args.jobs, threads=args.threads, cores=args.cores, train_net=TRAIN_NET,
                   rerun_changed=args.rerun_changed, progress_every=args.progress_every)
        specs = bm.plan(protocol, args.output_root)
    report = bm.build_report(protocol, specs, command=reproduce_command(args))
    for path in bm.write_report(report, args.report_dir):
        print(f"[benchmark] wrote {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (bm.ProtocolError, FileNotFoundError, ValueError, RuntimeError) as exc:
        sys.exit(f"benchmark: {exc}")
