"""Benchmark protocols: configs x seeds trained by ``tools/train_net.py`` in subprocesses, then one report.

A *protocol* is a YAML file, ``configs/benchmark/<name>.yaml``::

    DESCRIPTION: "what this protocol measures"      # optional, copied into the report
    SEEDS: [0, 1, 2]                                # default seeds of every entry (required unless each entry has SEEDS)
    OVERRIDES: ["SOLVER.MAX_ITER", "600"]           # optional KEY VALUE pairs applied to every entry
    DATASETS: ["synthetic_source_test"]             # optional: the eval results tabulated (default: every one found)
    GAP: {SOURCE_ONLY: source_only, ORACLE: oracle} # optional: adds the share of the gap closed per dataset,
                                                    #   (entry - source_only) / (oracle - source_only), on the means
    CLAIMS:                                         # optional: claims judged in the report (see claim_verdict)
      - {CLAIM: "LossMix > no mixing", BETTER: lossmix, THAN: none, DATASET: synthetic_source_test}
    ENTRIES:                                        # required, a non-empty list
      - NAME: none                                  # required, unique, letters / digits / . _ - (a folder name)
        CONFIG: configs/quickstart/synthetic_baseline.yaml   # required, relative to the working directory
        OVERRIDES: ["LOSSMIX.MODE", "none"]         # optional, applied after the protocol's OVERRIDES
        SEEDS: [0, 1]                               # optional, replaces the default seeds
        SHARED_WITH: supervised                     # optional: the runs live in <root>/supervised/<NAME>/seed<k>,
                                                    #   so one training serves both protocols (configs must agree)
        INIT_FROM: none                             # optional: MODEL.WEIGHTS = that entry's model_final.pth of the
                                                    #   same seed; the run starts once that run is complete
        THREADS: 2                                  # optional: a fixed thread count for this entry's runs (results are
                                                    #   bit-exact per thread count; default: as the runner is told)

Each (entry, seed) is a *run* in ``<output root>/<protocol>/<entry>/seed<k>``, trained by
``python tools/train_net.py --config-file CONFIG <protocol overrides> <entry overrides> SEED k OUTPUT_DIR <run>``.
A run is *complete* when its ``config.yaml`` exists, ``eval/`` holds a result for each of its
``DATASETS.TEST`` and ``metrics.jsonl`` has the final summary row (``model_final.pth`` alone is not enough); it is
*resumed* (``--resume``) when it is not complete and has a ``last_checkpoint``. A run whose existing
``config.yaml`` differs from the config it would get now (beyond ``OUTPUT_DIR``) is *changed*: never
reused silently (:func:`plan` marks it, :func:`execute` refuses unless asked to retrain it).

The report (:func:`build_report`) pools the complete runs of each entry with
:mod:`lossmix.utils.compare` (mean, sample std, n; per class), refusing runs of one entry whose configs
differ beyond ``SEED`` and ``OUTPUT_DIR``; :func:`write_report` writes ``<name>.md``, ``<name>.png``,
``<name>.json`` and, when runs evaluated during training, ``<name>_curves.png``. Domain-adaptation runs are drawn
apart, over *adaptation* iterations (teacher and student, from their starting model), with their pseudo-labels'
precision, recall and counts from ``metrics.jsonl``, in ``<name>_adaptation.png``; the report's markdown tables
the pseudo-labels at the first and last logged rows of adaptation.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import yaml

from . import compare
from .threads import THREADS_FILE_ENV, available_cores, thread_shares, write_thread_count

__all__ = ["ProtocolError", "Entry", "Protocol", "RunSpec", "load_protocol", "protocol_path", "plan", "run_state",
           "eta_seconds", "execute", "machine_info", "build_report", "to_markdown", "write_report"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TOP_KEYS = {"DESCRIPTION", "SEEDS", "OVERRIDES", "DATASETS", "GAP", "CLAIMS", "ENTRIES"}
_CLAIM_KEYS = {"CLAIM", "BETTER", "THAN", "DATASET"}
_ENTRY_KEYS = {"NAME", "CONFIG", "OVERRIDES", "SEEDS", "SHARED_WITH", "INIT_FROM", "THREADS"}
_RESERVED = ("SEED", "OUTPUT_DIR")  # set by the tool for each run
THREADS_FILE = "threads"  # in a run folder: the thread count the runner gives the run now
TRAIN_SPLIT = "_train"  # datasets whose name holds this are training splits (shown apart, as train-split AP)


class ProtocolError(ValueError):
    """A protocol file that cannot be used: the message names the file and the key."""


@dataclass
class Entry:
    name: str
    config: str
    overrides: list[str]
    seeds: list[int]
    shared_with: Optional[str] = None  # another protocol whose run folders this entry uses
    init_from: Optional[str] = None  # an earlier entry whose final weights of the same seed start this one
    threads: Optional[int] = None  # a fixed thread count for its runs (results are bit-exact per thread count)


@dataclass
class Protocol:
    name: str
    path: str
    description: str
    overrides: list[str]
    datasets: list[str]  # empty: every dataset found
    gap: Optional[dict]  # {"SOURCE_ONLY": entry, "ORACLE": entry} or None
    entries: list[Entry]
    claims: list[dict] = field(default_factory=list)  # {"CLAIM", "BETTER", "THAN", "DATASET"}

    def run_dir(self, output_root: str, entry: Entry, seed: int) -> str:
        return os.path.join(output_root, entry.shared_with or self.name, entry.name, f"seed{seed}")

    def entry(self, name: str) -> Entry:
        return next(e for e in self.entries if e.name == name)


# --------------------------------------------------------------------------------------------
# protocol files
# --------------------------------------------------------------------------------------------
def protocol_path(name: str, root: str = "configs/benchmark") -> str:
    """A protocol name (``supervised``) -> ``<root>/supervised.yaml``; a path to a ``.yaml`` file is kept."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return name
    return os.path.join(root, f"{name}.yaml")


def _seeds(value, path: str, key: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool)
                                                         and s >= 0 for s in value):
        raise ProtocolError(f"{path}: {key} must be a non-empty list of non-negative integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ProtocolError(f"{path}: {key} repeats a seed: {value!r}")
    return list(value)


def _overrides(value, path: str, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) % 2:
        raise ProtocolError(f"{path}: {key} must be a list of KEY VALUE pairs (even length), got {value!r}")
    if any(isinstance(v, (dict, list)) for v in value):
        raise ProtocolError(f"{path}: {key} holds a nested value; write each VALUE as a string, got {value!r}")
    opts = [str(v) for v in value]
    for reserved in _RESERVED:
        if reserved in opts[0::2]:
            raise ProtocolError(f"{path}: {key} sets {reserved}, which the benchmark sets for each run")
    return opts


def load_protocol(path: str) -> Protocol:
    """Read and check a protocol file (see the module docstring); errors name the file and the key."""
    if not os.path.isfile(path):
        raise ProtocolError(f"{path}: protocol file not found")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ProtocolError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{path}: expected a mapping with ENTRIES, got {type(data).__name__}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ProtocolError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    default_seeds = _seeds(data["SEEDS"], path, "SEEDS") if "SEEDS" in data else None
    overrides = _overrides(data.get("OVERRIDES"), path, "OVERRIDES")
    datasets = data.get("DATASETS") or []
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        raise ProtocolError(f"{path}: DATASETS must be a list of dataset names, got {datasets!r}")
    entries_data = data.get("ENTRIES")
    if not isinstance(entries_data, list) or not entries_data:
        raise ProtocolError(f"{path}: ENTRIES must be a non-empty list, got {entries_data!r}")
    entries = []
    for i, e in enumerate(entries_data):
        where = f"ENTRIES[{i}]"
        if not isinstance(e, dict):
            raise ProtocolError(f"{path}: {where} must be a mapping, got {e!r}")
        unknown = sorted(set(e) - _ENTRY_KEYS)
        if unknown:
            raise ProtocolError(f"{path}: {where}: unknown key(s) {unknown}; allowed: {sorted(_ENTRY_KEYS)}")
        name = e.get("NAME")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ProtocolError(f"{path}: {where}.NAME must be a folder-safe name (letters, digits, . _ -), got {name!r}")
        where = f"ENTRIES[{i}] ({name})"
        if name in (x.name for x in entries):
            raise ProtocolError(f"{path}: {where}.NAME repeats an earlier entry's name")
        config = e.get("CONFIG")
        if not isinstance(config, str) or not config:
            raise ProtocolError(f"{path}: {where}.CONFIG must be a config file path, got {config!r}")
        if "SEEDS" in e:
            seeds = _seeds(e["SEEDS"], path, f"{where}.SEEDS")
        elif default_seeds is None:
            raise ProtocolError(f"{path}: {where} has no SEEDS and the protocol has no default SEEDS")
        else:
            seeds = default_seeds
        shared_with, init_from = e.get("SHARED_WITH"), e.get("INIT_FROM")
        if shared_with is not None and (not isinstance(shared_with, str) or not _NAME.match(shared_with)):
            raise ProtocolError(f"{path}: {where}.SHARED_WITH must be a protocol name, got {shared_with!r}")
        if init_from is not None:
            earlier = {x.name: x for x in entries}
            if init_from not in earlier:
                raise ProtocolError(f"{path}: {where}.INIT_FROM = {init_from!r} is not the NAME of an earlier entry")
            if set(seeds) - set(earlier[init_from].seeds):
                raise ProtocolError(f"{path}: {where}.INIT_FROM = {init_from!r} lacks seeds "
                                    f"{sorted(set(seeds) - set(earlier[init_from].seeds))}")
        entry_overrides = overrides + _overrides(e.get("OVERRIDES"), path, f"{where}.OVERRIDES")
        if init_from is not None and "MODEL.WEIGHTS" in entry_overrides[0::2]:
            raise ProtocolError(f"{path}: {where} sets both INIT_FROM and MODEL.WEIGHTS")
        threads = e.get("THREADS")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ProtocolError(f"{path}: {where}.THREADS must be an int >= 1, got {threads!r}")
        entries.append(Entry(name=name, config=config, overrides=entry_overrides, seeds=seeds,
                             shared_with=shared_with, init_from=init_from, threads=threads))
    gap = data.get("GAP")
    if gap is not None:
        if not isinstance(gap, dict) or set(gap) != {"SOURCE_ONLY", "ORACLE"}:
            raise ProtocolError(f"{path}: GAP must be {{SOURCE_ONLY: entry, ORACLE: entry}}, got {gap!r}")
        for key, value in gap.items():
            if value not in (x.name for x in entries):
                raise ProtocolError(f"{path}: GAP.{key} = {value!r} is not an entry NAME")
    claims = data.get("CLAIMS") or []
    if not isinstance(claims, list):
        raise ProtocolError(f"{path}: CLAIMS must be a list of {{CLAIM, BETTER, THAN, DATASET}}, got {claims!r}")
    for i, claim in enumerate(claims):
        if not isinstance(claim, dict) or set(claim) != _CLAIM_KEYS:
            raise ProtocolError(f"{path}: CLAIMS[{i}] must have exactly the keys {sorted(_CLAIM_KEYS)}, got {claim!r}")
        for key in ("BETTER", "THAN"):
            if claim[key] not in (x.name for x in entries):
                raise ProtocolError(f"{path}: CLAIMS[{i}].{key} = {claim[key]!r} is not an entry NAME")
    name = os.path.splitext(os.path.basename(path))[0]
    return Protocol(name=name, path=path, description=str(data.get("DESCRIPTION") or ""), overrides=overrides,
                    datasets=list(datasets), gap=gap, entries=entries, claims=claims)


# --------------------------------------------------------------------------------------------
# planning: which runs to train, resume or skip
# --------------------------------------------------------------------------------------------
@dataclass
class RunSpec:
    """One (entry, seed) run. ``state``: complete | resume | fresh | changed (see the module docstring)."""

    entry: str
    seed: int
    output_dir: str
    config_file: str
    opts: list[str]  # every KEY VALUE override, SEED and OUTPUT_DIR included
    tests: list[str]  # DATASETS.TEST of the run's config
    max_iter: int
    state: str = "fresh"
    changed_keys: dict = field(default_factory=dict)
    after: Optional[str] = None  # output_dir of the run whose final weights this one starts from
    threads: Optional[int] = None  # the entry's fixed THREADS (None: as execute() is told)

    def command(self, python: str = sys.executable, train_net: str = "tools/train_net.py") -> list[str]:
        # fresh: nothing to resume; an aborted attempt's leftovers (an early eval/, metrics) are deleted, never mixed in
        resume = ["--resume"] if self.state == "resume" else ["--overwrite"]
        return [python, train_net, "--config-file", self.config_file, *resume, *self.opts]


def _read_yaml(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _metrics_rows(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill: the rest of the file is still usable
                    continue
    return rows


def _summary_row(run_dir: str) -> Optional[dict]:
    summaries = [r["summary"] for r in _metrics_rows(run_dir) if isinstance(r.get("summary"), dict)]
    return summaries[-1] if summaries else None


def run_state(run_dir: str, expected_config: dict, tests: Sequence[str], *, defaults: Optional[dict] = None
              ) -> tuple[str, dict]:
    """``(state, changed keys)`` of a run folder given the config it would be trained with now."""
    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(cfg_path):
        return "fresh", {}
    diffs = compare.config_differences(_read_yaml(cfg_path), expected_config, ignore=("OUTPUT_DIR",),
                                       defaults=defaults)
    if diffs:
        return "changed", diffs
    evals = all(os.path.isfile(os.path.join(run_dir, "eval", f"{t}.json")) for t in tests)
    # The final summary row, not model_final.pth alone: a second run started over in the folder moves the first
    # one's rows (summary included) to metrics.dropped.jsonl, while its model_final.pth and eval/ files stay.
    finished = _summary_row(run_dir) is not None
    if evals and finished:
        return "complete", {}
    if os.path.isfile(os.path.join(run_dir, "last_checkpoint")):
        return "resume", {}
    return "fresh", {}


def _default_config() -> dict:
    from ..config.defaults import get_cfg

    return yaml.safe_load(get_cfg().dump())


def plan(protocol: Protocol, output_root: str) -> list[RunSpec]:
    """Every run of the protocol with its state; builds each run's config (a bad key names the entry)."""
    from ..config.setup import build_config

    defaults = _default_config()
    specs = []
    for entry in protocol.entries:
        for seed in entry.seeds:
            out = protocol.run_dir(output_root, entry, seed)
            after = None
            init = []
            if entry.init_from:
                after = protocol.run_dir(output_root, protocol.entry(entry.init_from), seed)
                init = ["MODEL.WEIGHTS", os.path.join(after, "model_final.pth")]
            opts = list(entry.overrides) + init + ["SEED", str(seed), "OUTPUT_DIR", out]
            try:
                cfg = build_config(entry.config, opts)
            except (KeyError, ValueError, FileNotFoundError) as err:
                msg = err.args[0] if isinstance(err, KeyError) and err.args else err
                raise ProtocolError(f"{protocol.path}: entry {entry.name!r}: {msg}") from None
            expected = yaml.safe_load(cfg.dump())
            state, diffs = run_state(out, expected, list(cfg.DATASETS.TEST), defaults=defaults)
            specs.append(RunSpec(entry=entry.name, seed=seed, output_dir=out, config_file=entry.config, opts=opts,
                                 tests=list(cfg.DATASETS.TEST), max_iter=int(cfg.SOLVER.MAX_ITER), state=state,
                                 changed_keys=diffs, after=after, threads=entry.threads))
    return specs


def describe_changed(spec: RunSpec) -> str:
    keys = "; ".join(f"{k}: {old!r} in its config.yaml, {new!r} now" for k, (old, new) in spec.changed_keys.items())
    return f"{spec.output_dir} (entry {spec.entry!r}, seed {spec.seed}) was trained with another config: {keys}"


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
def machine_info() -> dict:
    """CPU model (``/proc/cpuinfo``), logical cores, Python / torch versions, platform."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover
        torch_version = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch_version,
            "platform": platform.platform()}


def _shown(path: str) -> str:
    """A run folder as the report shows it: relative to the working directory when inside it."""
    rel = os.path.relpath(path)
    return path if rel.startswith(os.pardir) else rel


def _attempt_threads(attempts: Sequence[dict]) -> list[int]:
    """Every thread count a run's attempts had (``threads`` is a list, or an int in older records)."""
    counts = set()
    for a in attempts:
        t = a.get("threads")
        counts.update(t if isinstance(t, list) else [t] if isinstance(t, int) else [])
    return sorted(counts)


def _run_record(run: compare.Run, role_runs: dict) -> dict:
    summary = _summary_row(run.path) or {}
    attempts = []
    bench_path = os.path.join(run.path, "benchmark.json")
    if os.path.isfile(bench_path):
        with open(bench_path, encoding="utf-8") as f:
            attempts = json.load(f).get("attempts", [])
    record = {"path": _shown(run.path), "seed": run.config.get("SEED"), "train_seconds": summary.get("seconds"),
              "iterations": summary.get("iterations"), "threads": _attempt_threads(attempts) or None,
              "wall_seconds": round(sum(a["wall_seconds"] for a in attempts), 1) if attempts else None,
              "results": {d: {"AP50": r["AP50"], "per_class": r.get("per_class", {}), "evaluated": run.evaluated[d]}
                          for d, r in run.results.items()},
              # the logged training losses, so a rerun of the first iterations can be checked against the report
              "total_loss": {str(r["iteration"]): r["total_loss"] for r in _metrics_rows(run.path) if "total_loss" in r}}
    for role, runs in role_runs.items():
        other = runs.get(run.path)
        if other is not None:
            record[role] = {d: {"AP50": r["AP50"], "per_class": r.get("per_class", {})}
                            for d, r in other.results.items()}
    return record


def _summary_json(summary: dict) -> dict:
    return {dataset: {row.method: {"mean": row.ap_mean, "std": row.ap_std, "n": row.n, "values": row.ap_values,
                                   "per_class": row.per_class, "evaluated": row.evaluated}
                      for row in rows} for dataset, rows in summary.items()}


def gap_closed(summary: dict, source_only: str, oracle: str) -> dict[str, dict[str, float]]:
    """``{dataset: {entry: (mean - source_only mean) / (oracle mean - source_only mean)}}`` (NaN when the
    oracle does not beat source only, or either is missing on that dataset)."""
    out = {}
    for dataset, rows in summary.items():
        means = {row.method: row.ap_mean for row in rows}
        lo, hi = means.get(source_only, float("nan")), means.get(oracle, float("nan"))
        ok = math.isfinite(lo) and math.isfinite(hi) and hi > lo
        out[dataset] = {m: ((v - lo) / (hi - lo) if ok and math.isfinite(v) else float("nan"))
                        for m, v in means.items()}
    return out


def claim_verdict(better: Sequence[float], than: Sequence[float]) -> dict:
    """Is ``mean(better) > mean(than)`` beyond the seed-to-seed spread?

    ``difference`` = the difference of the means; ``se`` = its standard error,
    sqrt(s_b^2 / n_b + s_t^2 / n_t) with sample variances. The verdict is ``holds`` when the difference
    exceeds 2 se, ``does not hold`` when it is below -2 se, else ``within the spread``; with fewer than
    two runs on either side there is no spread to judge by: ``not judged (n = 1)``. A rule of thumb, not
    a significance test: with 3 seeds a real effect of one standard error is often ``within the spread``.
    """
    (mean_b, std_b, n_b), (mean_t, std_t, n_t) = compare.mean_std(better), compare.mean_std(than)
    if not n_b or not n_t:
        return {"difference": float("nan"), "se": float("nan"), "verdict": "missing runs", "n": [n_b, n_t]}
    diff = mean_b - mean_t
    if n_b < 2 or n_t < 2:
        return {"difference": diff, "se": float("nan"), "verdict": "not judged (n = 1)", "n": [n_b, n_t]}
    se = math.sqrt(std_b ** 2 / n_b + std_t ** 2 / n_t)
    verdict = "holds" if diff > 2 * se else "does not hold" if diff < -2 * se else "within the spread"
    return {"difference": diff, "se": se, "verdict": verdict, "n": [n_b, n_t]}


def judge_claims(protocol: Protocol, summary: dict) -> list[dict]:
    """Each of the protocol's CLAIMS with the two entries' means and its :func:`claim_verdict`."""
    out = []
    for claim in protocol.claims:
        rows = {row.method: row for row in summary.get(claim["DATASET"], [])}
        better, than = rows.get(claim["BETTER"]), rows.get(claim["THAN"])
        result = claim_verdict(better.ap_values if better else [], than.ap_values if than else [])
        out.append({"claim": claim["CLAIM"], "better": claim["BETTER"], "than": claim["THAN"],
                    "dataset": claim["DATASET"], "better_mean": better.ap_mean if better else float("nan"),
                    "than_mean": than.ap_mean if than else float("nan"), **result})
    return out


def _filter(runs: list, datasets: Sequence[str]) -> list:
    if not datasets:
        return runs
    for run in runs:
        run.results = {d: r for d, r in run.results.items() if d in datasets}
        run.evaluated = {d: w for d, w in run.evaluated.items() if d in datasets}
    return [r for r in runs if r.results]


def build_report(protocol: Protocol, specs: Sequence[RunSpec], *, command: str = "") -> dict:
    """Everything the report shows, as one JSON-ready dict, from the complete runs in ``specs``."""
    complete = [s.output_dir for s in specs if s.state == "complete"]
    missing = [_shown(s.output_dir) for s in specs if s.state != "complete"]
    if not complete:
        changed = sum(s.state == "changed" for s in specs)
        todo = f"{len(missing) - changed} to train" if len(missing) > changed else ""
        if changed:
            todo += (", " if todo else "") + (f"{changed} trained with another config: rerun with --rerun-changed "
                                              "to retrain them, or point --output-root elsewhere")
        raise FileNotFoundError(f"no complete run of protocol {protocol.name!r} yet ({todo})")
    runs = _filter([compare.load_run(p, group_by="parent") for p in complete], protocol.datasets)
    # an INIT_FROM entry's MODEL.WEIGHTS is its own seed's start: it differs between seeds by design
    initialised = {e.name for e in protocol.entries if e.init_from}
    compare.check_poolable([r for r in runs if r.method not in initialised], defaults=_default_config())
    compare.check_poolable([r for r in runs if r.method in initialised], defaults=_default_config(),
                           ignore=("SEED", "OUTPUT_DIR", "MODEL.WEIGHTS"))
    summary = compare.summarize(runs)
    role_runs, role_summaries = {}, {}
    if any(compare.has_roles(r.path) for r in runs):
        for role in ("teacher", "student"):
            loaded = []
            for r in runs:
                try:
                    loaded.append(compare.load_run(r.path, group_by="parent", role=role))
                except FileNotFoundError:  # that role has no result in this run (e.g. no teacher yet)
                    pass
            loaded = _filter(loaded, protocol.datasets)
            role_runs[role] = {r.path: r for r in loaded}
            if loaded:
                role_summaries[role] = compare.summarize(loaded)
    adapted = [r for r in runs if compare.is_adaptation_run(r)]
    curves = compare.summarize_curves([r for r in runs if not compare.is_adaptation_run(r)])
    adaptation_curves = compare.summarize_adaptation_curves(adapted)
    pseudo_curves = compare.summarize_pseudo_label_curves(adapted)
    gap = gap_closed(summary, protocol.gap["SOURCE_ONLY"], protocol.gap["ORACLE"]) if protocol.gap else None
    records = [_run_record(r, role_runs) for r in runs]
    train_seconds = [r["train_seconds"] for r in records if r["train_seconds"] is not None]
    wall_seconds = [r["wall_seconds"] for r in records if r["wall_seconds"] is not None]
    threads = sorted({t for r in records for t in (r["threads"] or [])})
    order = [e.name for e in protocol.entries]
    return {
        "protocol": protocol.name, "protocol_file": protocol.path, "description": protocol.description,
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": command,
        "machine": dict(machine_info(), threads=threads or None),
        "entries": [{"name": e.name, "config": e.config, "overrides": e.overrides, "seeds": e.seeds}
                    for e in protocol.entries],
        "missing_runs": missing,
        "summary": _summary_json(summary),
        "roles": {role: _summary_json(s) for role, s in role_summaries.items()},
        "gap_closed": gap,
        "claims": judge_claims(protocol, summary),
        "curves": {d: {c.method: {"iterations": c.iterations, "mean": c.mean, "std": c.std, "n": c.n,
                                  "values": {p: {str(i): v for i, v in pts.items()} for p, pts in c.values.items()}}
                       for c in rows} for d, rows in curves.items()},
        "adaptation_curves": {d: {f"{c.method}/{c.role}": _curve_json(c) for c in rows}
                              for d, rows in adaptation_curves.items()},
        "pseudo_label_curves": {k: {c.method: _curve_json(c) for c in rows} for k, rows in pseudo_curves.items()},
        "runs": {name: [r for r, run in zip(records, runs) if run.method == name] for name in order},
        "train_seconds": {"total": round(sum(train_seconds), 1), "per_run_mean": round(sum(train_seconds) /
                                                                                      len(train_seconds), 1)
                          if train_seconds else None},
        "wall_seconds_total": round(sum(wall_seconds), 1) if wall_seconds else None,
        "_objects": {"summary": summary, "roles": role_summaries, "curves": curves,  # dropped from the JSON
                     "adaptation_curves": adaptation_curves, "pseudo_label_curves": pseudo_curves},
    }


def _curve_json(c: compare.Curve) -> dict:
    return {"iterations": c.iterations, "mean": c.mean, "std": c.std, "n": c.n,
            "values": {p: {str(i): v for i, v in pts.items()} for p, pts in c.values.items()}}


def _first_last(curve: Optional[compare.Curve], digits: int, percent: bool = False) -> str:
    """``"a -> b"``: the curve's mean at its first and last logged iteration."""
    if curve is None or not curve.iterations:
        return "–"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    shown = [f"{scale * v:.{digits}f}{unit}" if math.isfinite(v) else "n/a" for v in (curve.mean[0], curve.mean[-1])]
    return " → ".join(shown)


def pseudo_label_lines(report: dict) -> list[str]:
    """Markdown: the pseudo-labels of each domain-adaptation entry at its first and last logged rows (means over seeds)."""
    curves = report["_objects"].get("pseudo_label_curves") or {}
    if not curves:
        return []
    by = {key: {c.method: c for c in rows} for key, rows in curves.items()}
    lines = ["", "## Pseudo-labels (domain-adaptation runs)", "",
             "The teacher's pseudo-labels on the target training images, pooled over each log period, at the first "
             "and the last logged row of adaptation (mean over seeds; adaptation iterations in brackets). Precision "
             "and recall are at IoU 0.5 against the target split's own annotations (never given to the student unless "
             "DA.TARGET_LABELS ground_truth); `pseudo_*` keys of each run's metrics.jsonl hold every row, per class too. "
             f"Curves: `{report['protocol']}_adaptation.png`.", "",
             "| entry | rows (iterations) | per image | images without | precision | recall |",
             "|---|---|---:|---:|---:|---:|"]
    for name in [e["name"] for e in report["entries"]]:
        row = [by.get(key, {}).get(name) for key in compare.PSEUDO_LABEL_CURVES]
        present = [c for c in row if c is not None and c.iterations]
        if not present:
            continue
        its = present[0].iterations
        precision, recall, per_image, without = row
        lines.append(f"| {name} | {len(its)} ({its[0]}–{its[-1]}) | {_first_last(per_image, 2)} | "
                     f"{_first_last(without, 0, percent=True)} | {_first_last(precision, 0, percent=True)} | "
                     f"{_first_last(recall, 0, percent=True)} |")
    return lines


def _is_train_split(dataset: str) -> bool:
    return TRAIN_SPLIT in dataset


def _dataset_label(dataset: str) -> str:
    return f"{dataset} (train-split AP)" if _is_train_split(dataset) else dataset


def to_markdown(report: dict) -> str:
    """The report as markdown: overview (entry x dataset, mean ± std (n)), gap closed, per-class tables,
    teacher / student tables for DA runs, wall time per run, machine and the command to reproduce."""
    summary = report["_objects"]["summary"]
    datasets = sorted(summary, key=_is_train_split)  # test splits first, train splits after
    entries = [e["name"] for e in report["entries"]]
    lines = [f"# Benchmark: {report['protocol']}", ""]
    if report["description"]:
        lines += [report["description"].strip(), ""]
    lines += ["AP50 (%), mean ± sample std over seeds (n runs). "
              "Columns marked train-split AP are measured on training images (overfitting shows as a gap to the test split).",
              ""]
    gap = report["gap_closed"]
    header = ["entry"] + [_dataset_label(d) for d in datasets]
    if gap:
        header += [f"gap closed: {d}" for d in datasets if not _is_train_split(d)]
    header += ["train s / run"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name in entries:
        cells = [name]
        for d in datasets:
            row = next((r for r in summary[d] if r.method == name), None)
            cells.append(compare.format_ap(row.ap_mean, row.ap_std, row.n, show_n=True) if row else "–")
        if gap:
            for d in datasets:
                if not _is_train_split(d):
                    v = gap.get(d, {}).get(name, float("nan"))
                    cells.append(f"{100 * v:.0f}%" if math.isfinite(v) else "n/a")
        secs = [r["train_seconds"] for r in report["runs"].get(name, []) if r["train_seconds"] is not None]
        cells.append(f"{sum(secs) / len(secs):.0f}" if secs else "–")
        lines.append("| " + " | ".join(cells) + " |")
    if gap:
        lines += ["", "Gap closed = (entry − source only) / (oracle − source only), on the means."]
    if report.get("claims"):
        lines += ["", "## Claims", "", "Verdict: *holds* when the difference of the means exceeds twice its standard "
                  "error (sample std over seeds), *does not hold* when it is below minus that, else *within the spread*.",
                  "", "| claim | on | means | difference ± se | n | verdict |", "|---|---|---:|---:|---:|---|"]
        for c in report["claims"]:
            se = f" ± {c['se']:.1f}" if math.isfinite(c["se"]) else ""
            diff = f"{c['difference']:+.1f}{se}" if math.isfinite(c["difference"]) else "–"
            means = (f"{c['better_mean']:.1f} vs {c['than_mean']:.1f}"
                     if math.isfinite(c["better_mean"]) and math.isfinite(c["than_mean"]) else "–")
            lines.append(f"| {c['claim']} | {_dataset_label(c['dataset'])} | {means} | {diff} | "
                         f"{c['n'][0]} vs {c['n'][1]} | **{c['verdict']}** |")
    lines += ["", "## Per class", "", compare.to_markdown(summary, show_n=True).rstrip()]
    for role, role_summary in report["_objects"]["roles"].items():
        lines += ["", f"## {role.capitalize()} model (domain-adaptation runs)", "",
                  compare.to_markdown(role_summary, show_n=True).rstrip()]
    lines += ["", "## Runs", "", "| entry | seed | train s | wall s (incl. eval) | " + " | ".join(datasets) + " |",
              "|---|---:|---:|---:|" + "---:|" * len(datasets)]
    for name in entries:
        for r in report["runs"].get(name, []):
            aps = [f"{r['results'][d]['AP50']:.1f}" if d in r["results"] else "–" for d in datasets]
            lines.append(f"| {name} | {r['seed']} | {r['train_seconds'] if r['train_seconds'] is not None else '–'} | "
                         f"{r['wall_seconds'] if r['wall_seconds'] is not None else '–'} | " + " | ".join(aps) + " |")
    m = report["machine"]
    lines += ["", f"Training time: {report['train_seconds']['total']} s in all"
              + (f", {report['wall_seconds_total']} s wall time of the benchmark's subprocesses"
                 if report["wall_seconds_total"] else "") + ".",
              f"Machine: {m['cpu']}, {m['cores']} cores, threads per run {m['threads'] or 'unknown'}, "
              f"torch {m['torch']}, Python {m['python']}. Date: {report['date']}."]
    if report["missing_runs"]:
        lines += ["", f"**Incomplete: {len(report['missing_runs'])} run(s) not in this report:** "
                  + ", ".join(f"`{p}`" for p in report["missing_runs"])]
    lines += pseudo_label_lines(report)
    if report["curves"]:
        lines += ["", f"Learning curves: `{report['protocol']}_curves.png` (values in the JSON)."]
    if report.get("adaptation_curves") or report.get("pseudo_label_curves"):
        lines += ["", f"Adaptation curves (teacher and student AP50 over adaptation iterations, from their starting "
                  f"model; pseudo-label precision, recall and counts): `{report['protocol']}_adaptation.png`."]
    lines += ["", "Reproduce:", "", "```", report["command"] or f"make benchmark PROTOCOL={report['protocol']}",
              "```", ""]
    return "\n".join(lines)


def _json_ready(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    return obj


def write_report(report: dict, out_dir: str) -> list[str]:
    """``<protocol>.md``, ``.png``, ``.json`` (NaN written as null), ``_curves.png`` when there are curves and
    ``_adaptation.png`` when domain-adaptation runs left curves or pseudo-label metrics."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, report["protocol"])
    objects = report["_objects"]
    with open(base + ".md", "w", encoding="utf-8") as f:
        f.write(to_markdown(report))
    compare.plot(objects["summary"], base + ".png", title=f"benchmark: {report['protocol']}")
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(_json_ready({k: v for k, v in report.items() if k != "_objects"}), f, indent=1)
        f.write("\n")
    written = [base + ".md", base + ".png", base + ".json"]
    if objects["curves"]:
        compare.plot_curves(objects["curves"], base + "_curves.png", title=f"benchmark: {report['protocol']}",
                            panel_titles={d: _dataset_label(d) for d in objects["curves"]})
        written.append(base + "_curves.png")
    panels = {**objects.get("adaptation_curves", {}), **objects.get("pseudo_label_curves", {})}
    if panels:
        titles = {d: f"{_dataset_label(d)}: teacher / student" for d in objects.get("adaptation_curves", {})}
        titles.update({k: v for k, v in compare.PSEUDO_LABEL_CURVES.items() if k in panels})
        compare.plot_curves(panels, base + "_adaptation.png", title=f"benchmark: {report['protocol']} (adaptation)",
                            panel_titles=titles, xlabel="adaptation iteration",
                            ylabels={k: "mean ± std over seeds" for k in compare.PSEUDO_LABEL_CURVES})
        written.append(base + "_adaptation.png")
    return written
