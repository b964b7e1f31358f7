#!/usr/bin/env python
"""The demo behind ``make demo``: the short version of the benchmark, on a CPU, in under 20 minutes on 2 cores.

1. writes the embedded synthetic domain-shift dataset (``datasets/synthetic``, frozen parameters);
2. runs ``configs/benchmark/demo.yaml`` with ``tools/benchmark.py``, two runs side by side on one thread each:
   seed 0 of no mixing vs LossMix in the data-limited supervised regime and of source only vs Adaptive Teacher
   (256 source images -> clipart), each the benchmark's very seed-0 run (``output/benchmark/{supervised,
   adaptation}/...``: bit for bit the committed runs, and ``make benchmark`` later reuses them);
3. prints the demo's table, then the committed tables of the full benchmark (``docs/benchmark/``,
   mean +- std over seeds), so one seed is read beside the spread it comes from.

Runs already complete are reused; ``--report-only`` just prints.
"""
import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = ("supervised", "adaptation")


def first_table(markdown: str, after: str = "") -> str:
    """The first markdown table of a report (after the line starting with ``after``, if given), or ""."""
    lines = markdown.splitlines()
    begin = next((i for i, line in enumerate(lines) if line.startswith(after)), None) if after else 0
    if begin is None:
        return ""
    start = next((i for i in range(begin, len(lines)) if lines[i].startswith("|")), None)
    if start is None:
        return ""
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-root", default=os.path.join("output", "benchmark"), help="where the runs go")
    p.add_argument("--report-dir", default=os.path.join("output", "demo"), help="where demo.md / .png go")
    p.add_argument("--report-only", action="store_true", help="train nothing; print the tables")
    args = p.parse_args(argv)
    os.chdir(REPO)
    start = time.time()
    root = os.environ.setdefault("LOSSMIX_DATASETS", "datasets")
    subprocess.run([sys.executable, os.path.join("tools", "make_synthetic.py"), "--root",
                    os.path.join(root, "synthetic")], check=True, stdout=subprocess.DEVNULL)
    cmd = [sys.executable, os.path.join("tools", "benchmark.py"), "demo", "--output-root", args.output_root,
           "--report-dir", args.report_dir, "--jobs", "2", "--progress-every", "120"]
    subprocess.run(cmd + (["--report-only"] if args.report_only else []), check=True)
    with open(os.path.join(args.report_dir, "demo.md"), encoding="utf-8") as f:
        print("\n## This demo: seed 0 of the benchmark's runs (AP50 %)\n\n" + first_table(f.read()))
    for name in COMMITTED:
        path = os.path.join("docs", "benchmark", f"{name}.md")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                report = f.read()
            print(f"\n## The committed benchmark, {name} ({path}): AP50 %, mean ± std over seeds (n)\n\n"
                  + first_table(report) + "\n\n" + first_table(report, after="## Claims"))
    print(f"\n[demo] total {time.time() - start:.0f} s; the demo's report: {args.report_dir}/demo.md")


if __name__ == "__main__":
    main()
