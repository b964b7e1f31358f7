"""Training a protocol's runs: ``tools/train_net.py`` subprocesses, ``jobs`` at a time, resumed where they stopped,
sharing the cores among the runs in progress (:mod:`lossmix.utils.threads`); progress lines with an ETA."""
from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

from ..utils.threads import THREADS_FILE_ENV, available_cores, thread_shares, write_thread_count
from .protocol import RunSpec, _metrics_rows, describe_changed

__all__ = ["THREADS_FILE", "eta_seconds", "execute"]

THREADS_FILE = "threads"  # in a run folder: the thread count the runner gives the run now


def eta_seconds(done_seconds: Sequence[float], waiting: int, running_fractions: Sequence[tuple[float, float]],
                jobs: int) -> Optional[float]:
    """Seconds left, or ``None`` when nothing allows a guess.

    ``done_seconds``: wall time of runs finished in this session; ``waiting``: runs not started;
    ``running_fractions``: ``(elapsed seconds, fraction of iterations done)`` of each running run.
    A run's length is the mean of the finished ones, else estimated from the running ones' progress.
    """
    lengths = [s for s in done_seconds if s > 0]
    if not lengths:
        lengths = [elapsed / frac for elapsed, frac in running_fractions if frac > 0]
    if not lengths:
        return None if (waiting or running_fractions) else 0.0
    per_run = sum(lengths) / len(lengths)
    left = waiting * per_run + sum(max(per_run - elapsed, 0.0) for elapsed, _ in running_fractions)
    return left / max(min(jobs, waiting + len(running_fractions)), 1)


def _fmt_seconds(s: Optional[float]) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _last_iteration(run_dir: str) -> int:
    rows = [r for r in _metrics_rows(run_dir) if "iteration" in r and "summary" not in r]
    return int(rows[-1]["iteration"]) if rows else 0


def execute(specs: Sequence[RunSpec], *, jobs: int = 1, threads: Optional[int] = None, cores: Optional[int] = None,
            python: str = sys.executable, train_net: str = "tools/train_net.py", rerun_changed: bool = False,
            log: Callable[[str], None] = print, progress_every: float = 60.0) -> list[dict]:
    """Train every run that is not complete, ``jobs`` at a time (seed-major order).

    Threads: with ``threads`` set, every run gets that many for its whole life (bit-exact per thread
    count). Otherwise the ``cores`` (default: :func:`~lossmix.utils.threads.available_cores`) are shared
    among the runs in progress (:func:`~lossmix.utils.threads.thread_shares`) and re-shared at each start
    and end: a run left alone, or started when fewer runs remain than cores, gets the idle cores at its next
    iteration (through ``<run>/threads``, see :mod:`lossmix.utils.threads`).

    Changed runs raise ``RuntimeError`` (naming each run and key) unless ``rerun_changed``: their
    folder is then deleted and trained again. Each run's output goes to ``<run>/benchmark.log``, its
    wall time and thread counts (in the order it had them) to ``<run>/benchmark.json``. Progress lines
    (done / total, elapsed, ETA) are printed at each start and end and every ``progress_every`` seconds.
    Returns one ``{"run", "returncode", "seconds"}`` per run trained; raises ``RuntimeError`` if any failed.
    """
    changed = [s for s in specs if s.state == "changed"]
    if changed and not rerun_changed:
        raise RuntimeError("runs exist with another config (use --rerun-changed to delete and retrain them):\n  "
                           + "\n  ".join(describe_changed(s) for s in changed))
    cores = cores or available_cores()
    # seed-major: every entry's first seed before any second seed, so a cut-short session still gives a table
    seed_rank = {seed: i for i, seed in enumerate(sorted({s.seed for s in specs}))}
    todo = sorted((s for s in specs if s.state != "complete"), key=lambda s: seed_rank[s.seed])
    total, skipped = len(specs), len(specs) - len(todo)
    done_seconds, finished, failures = [], [], []
    running: list[tuple[RunSpec, subprocess.Popen, float, object]] = []
    given: dict[str, list[int]] = {}  # run folder -> thread counts it was given, in order

    def share_threads() -> None:
        """(Re)write each running run's thread count: its entry's THREADS, else fixed ``threads``, else a share of
        the cores the fixed runs leave."""
        free = [spec for spec, *_ in running if not spec.threads]
        left = max(cores - sum(spec.threads for spec, *_ in running if spec.threads), 1)
        shared = iter([threads] * len(free) if threads else thread_shares(left, len(free)))
        for spec, *_ in running:
            n = spec.threads or next(shared)
            if given.setdefault(spec.output_dir, [])[-1:] != [n]:
                given[spec.output_dir].append(n)
                write_thread_count(os.path.join(spec.output_dir, THREADS_FILE), n)
    start = time.monotonic()
    last_report = start

    def progress(event: str) -> None:
        fractions = [(time.monotonic() - t0, _last_iteration(s.output_dir) / max(s.max_iter, 1))
                     for s, _, t0, _ in running]
        eta = eta_seconds(done_seconds, len(todo), fractions, jobs)
        log(f"[benchmark] {skipped + len(finished)}/{total} runs done ({skipped} already complete), "
            f"{len(running)} running, elapsed {_fmt_seconds(time.monotonic() - start)}, ETA {_fmt_seconds(eta)}"
            f"{': ' + event if event else ''}")

    progress("")
    env = dict(os.environ)
    # the runs import the same lossmix as this process (a checkout's, not another install's)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in [env.get("PYTHONPATH")] if p])
    pending = {s.output_dir for s in todo}  # a run INIT_FROM one of these waits until it has finished
    while todo or running:
        starting = []
        while len(running) < jobs:
            ready = [s for s in todo if s.after is None or s.after not in pending]
            if not ready:
                break
            spec = ready[0]
            todo.remove(spec)
            if spec.state == "changed":
                log(f"[benchmark] deleting {spec.output_dir}: {describe_changed(spec)}")
                shutil.rmtree(spec.output_dir)
                spec.state = "fresh"
            os.makedirs(spec.output_dir, exist_ok=True)
            logf = open(os.path.join(spec.output_dir, "benchmark.log"), "a", encoding="utf-8")
            given.pop(spec.output_dir, None)
            running.append((spec, None, time.monotonic(), logf))
            starting.append(len(running) - 1)
        if starting:
            share_threads()  # the new runs' counts (written to their folders) and the others' new shares
        for i in starting:
            spec, _, t0, logf = running[i]
            cmd = spec.command(python, train_net)
            logf.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')} {' '.join(cmd)}\n")
            logf.flush()
            n = str(given[spec.output_dir][-1])
            run_env = dict(env, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n,
                           **{THREADS_FILE_ENV: os.path.abspath(os.path.join(spec.output_dir, THREADS_FILE))})
            running[i] = (spec, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=run_env), t0, logf)
            progress(f"started {spec.entry} seed {spec.seed}{' (resumed)' if spec.state == 'resume' else ''}")
        if todo and not running:  # every run left starts from one that failed
            for spec in todo:
                failures.append(spec)
                log(f"[benchmark] NOT RUN {spec.entry} seed {spec.seed}: it starts from {spec.after}, which failed")
            todo.clear()
        time.sleep(0.2)
        for item in list(running):
            spec, proc, t0, logf = item
            if proc.poll() is None:
                continue
            running.remove(item)
            logf.close()
            seconds = time.monotonic() - t0
            _record_attempt(spec, seconds, given.get(spec.output_dir, []), proc.returncode)
            share_threads()  # the cores it leaves go to the runs still in progress
            finished.append({"run": spec.output_dir, "returncode": proc.returncode, "seconds": round(seconds, 1)})
            if proc.returncode == 0:
                pending.discard(spec.output_dir)
                done_seconds.append(seconds)
                progress(f"finished {spec.entry} seed {spec.seed} in {_fmt_seconds(seconds)}")
            else:
                failures.append(spec)
                progress(f"FAILED {spec.entry} seed {spec.seed} (exit {proc.returncode}); see "
                         f"{os.path.join(spec.output_dir, 'benchmark.log')}")
        if time.monotonic() - last_report >= progress_every and running:
            last_report = time.monotonic()
            progress("")
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed: " + ", ".join(
            os.path.join(s.output_dir, "benchmark.log") for s in failures))
    return finished


def _record_attempt(spec: RunSpec, seconds: float, threads: list[int], returncode: int) -> None:
    path = os.path.join(spec.output_dir, "benchmark.json")
    record = {"attempts": []}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    record["attempts"].append({"date": datetime.datetime.now().isoformat(timespec="seconds"),
                               "wall_seconds": round(seconds, 1), "threads": list(threads), "returncode": returncode,
                               "resumed": spec.state == "resume"})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
