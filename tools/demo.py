#!/usr/bin/env python
"""The demo behind ``make demo``: the embedded synthetic benchmark, end to end, on a CPU.

1. writes the synthetic domain-shift dataset (``datasets/synthetic``: source, clipart, watercolor);
2. trains a detector on the labelled source domain four ways: no mixing (baseline), uniform,
   noise and LossMix (``configs/quickstart/synthetic_*.yaml``), evaluating each on the source
   and both target test splits;
3. adapts source -> clipart with Adaptive Teacher and Adaptive Teacher + LossMix
   (``configs/quickstart/synthetic_at*.yaml``). To fit a CPU budget the burn-in is not trained
   again: AT starts from the baseline run's weights and AT + LossMix from the LossMix run's
   (source x source mixing), each with ``DA.BURN_IN_ITERS 0`` and ``ADAPT_ITERS`` adaptation steps;
   the source-only row is the baseline run evaluated on the target;
4. prints the tables (also written to ``output/quickstart/demo.md``).

Runs whose evaluation already exists are reused (``--force`` retrains). Any ``KEY VALUE`` after
the options is passed to every run, e.g. ``SOLVER.MAX_ITER 50`` for a quicker look.
"""
import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPERVISED = ("baseline", "uniform", "noise", "lossmix")
ADAPTATION = {"at": "baseline", "at_lossmix": "lossmix"}  # DA run -> the supervised run it starts from
ADAPT_ITERS = 30
NUM_TEST = 100  # test images per domain (the generator's default is 150)


def run(config: str, output: str, opts, force: bool) -> None:
    done = os.path.join(output, "eval")
    if not force and os.path.isdir(done) and os.listdir(done):
        print(f"[demo] reusing {output}")
        return
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", config,
           "OUTPUT_DIR", output, *opts]
    print("[demo] " + " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    print(f"[demo] {os.path.basename(output)} took {time.time() - start:.0f} s", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=os.path.join("output", "quickstart"))
    p.add_argument("--force", action="store_true", help="retrain runs that already have results")
    p.add_argument("--skip-adaptation", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = p.parse_args()
    start = time.time()
    root = os.environ.setdefault("LOSSMIX_DATASETS", os.path.join(REPO, "datasets"))
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_synthetic.py"), "--root",
                    os.path.join(root, "synthetic"), "--num-test", str(NUM_TEST)], check=True, stdout=subprocess.DEVNULL)

    runs = []
    for name in SUPERVISED:
        out = os.path.join(args.output, f"synthetic_{name}")
        run(os.path.join(REPO, "configs", "quickstart", f"synthetic_{name}.yaml"), out, args.opts, args.force)
        runs.append(out)
    if not args.skip_adaptation:
        for name, base in ADAPTATION.items():
            out = os.path.join(args.output, f"synthetic_{name}")
            init = os.path.join(args.output, f"synthetic_{base}", "model_final.pth")
            opts = ["MODEL.WEIGHTS", init, "DA.BURN_IN_ITERS", "0", "SOLVER.MAX_ITER", str(ADAPT_ITERS),
                    "SOLVER.WARMUP_ITERS", "0", *args.opts]
            run(os.path.join(REPO, "configs", "quickstart", f"synthetic_{name}.yaml"), out, opts, args.force)
            runs.append(out)

    sys.path.insert(0, REPO)
    from lossmix.utils.compare import load_runs, summarize, to_markdown

    table = to_markdown(summarize(load_runs(runs)))
    report = os.path.join(args.output, "demo.md")
    with open(report, "w") as f:
        f.write(table)
    print("\n" + table)
    print(f"[demo] total {time.time() - start:.0f} s; table written to {report}")


if __name__ == "__main__":
    main()
