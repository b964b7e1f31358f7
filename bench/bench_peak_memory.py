"""Peak memory of a short quickstart training run (tools/train_net.py in a subprocess); prints one JSON object.

A small synthetic source domain is generated in a temporary folder (``LOSSMIX_DATASETS`` points
there), then ``configs/quickstart/synthetic_baseline.yaml`` trains for ``SOLVER.MAX_ITER`` steps
(20; 8 with --quick) and is evaluated on ``synthetic_source_test`` only. Reported:

- ``peak_gib``: ``ru_maxrss`` of ``getrusage(RUSAGE_CHILDREN)`` + ``getrusage(RUSAGE_SELF)`` (the
  largest process of the training tree, the trainer or a loader worker, plus this script);
- ``tree_pss_peak_gib``: the largest sum over the live training tree (trainer + DataLoader
  workers) of the proportional set size, polled from ``/proc`` every 0.1 s (PSS splits pages
  the forked workers share with the trainer, so the sum does not count them twice);
- ``meets_goal``: both under ``goal_gib`` (6 GiB).

    python bench/bench_peak_memory.py [--quick] [--max-iter N]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

try:
    import lossmix  # noqa: F401
except ImportError:  # runnable from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lossmix.data.synthetic import generate  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join("configs", "quickstart", "synthetic_baseline.yaml")
GOAL_GIB = 6.0
GIB = 1024 ** 3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer iterations and images")
    p.add_argument("--max-iter", type=int, default=None, help="training iterations (default 20; 8 with --quick)")
    return p.parse_args(argv)


def _descendants(pid: int) -> list[int]:
    """``pid`` and every live descendant (via /proc/<pid>/task/<tid>/children)."""
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except OSError:  # exited meanwhile
            continue
    return found


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreePoller(threading.Thread):
    """Tracks the peak over time of the summed PSS of a process tree."""

    def __init__(self, pid: int, period: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peak, self.peak_processes = 0, 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            pids = _descendants(self.pid)
            total = sum(_pss_bytes(p) for p in pids)
            if total > self.peak:
                self.peak, self.peak_processes = total, len(pids)
            self.stop.wait(self.period)


def main() -> None:
    args = parse_args()
    # No torch here: importing it would add ~0.5 GiB to this process's own max RSS, which the peak
    # includes. The trainer sets torch.set_flush_denormal(True) itself (lossmix.engine.trainer.resolve_device).
    max_iter = args.max_iter or (8 if args.quick else 20)
    root = tempfile.mkdtemp(prefix="bench_peak_memory_")
    try:
        generate(os.path.join(root, "synthetic"), seed=0, num_train=32 if args.quick else 64, num_test=8,
                 domains=("source",))
        out_dir = os.path.join(root, "output")
        cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", os.path.join(REPO, CONFIG),
               "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "0",
               "DATASETS.TEST", "('synthetic_source_test',)", "OUTPUT_DIR", out_dir]
        env = dict(os.environ, LOSSMIX_DATASETS=root)
        log_path = os.path.join(root, "train.log")
        start = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            poller = TreePoller(proc.pid)
            poller.start()
            rc = proc.wait()
            poller.stop.set()
            poller.join()
        seconds = time.perf_counter() - start
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = (children + own) / GIB
        report = {
            "config": CONFIG,
            "max_iter": max_iter,
            "returncode": rc,
            "seconds": round(seconds, 1),
            "peak_gib": round(peak, 3),
            "children_max_rss_gib": round(children / GIB, 3),
            "self_max_rss_gib": round(own / GIB, 3),
            "tree_pss_peak_gib": round(poller.peak / GIB, 3),
            "tree_processes_at_peak": poller.peak_processes,
            "goal_gib": GOAL_GIB,
            "meets_goal": rc == 0 and peak <= GOAL_GIB and poller.peak / GIB <= GOAL_GIB,
        }
        if rc != 0:
            with open(log_path) as f:
                report["log_tail"] = f.read()[-2000:]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
