"""Benchmark protocols: configs x seeds trained by ``tools/train_net.py`` in subprocesses, then one report.

A *protocol* is a YAML file, ``configs/benchmark/<name>.yaml``::

    DESCRIPTION: "what this protocol measures"      # optional, copied into the report
    SEEDS: [0, 1, 2]                                # default seeds of every entry (required unless each entry has SEEDS)
    OVERRIDES: ["SOLVER.MAX_ITER", "600"]           # optional KEY VALUE pairs applied to every entry
    DATASETS: ["synthetic_source_test"]             # optional: the eval results tabulated (default: every one found)
    GAP: {SOURCE_ONLY: source_only, ORACLE: oracle} # optional: adds the share of the gap closed per dataset,
                                                    #   (entry - source_only) / (oracle - source_only), on the means;
                                                    #   ORACLE may map datasets to entries ({dataset: entry, ...})
    CLAIMS:                                         # optional: claims judged in the report (see report.claim_verdict)
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
reused silently (:func:`plan` marks it, :func:`~lossmix.benchmark.runner.execute` refuses unless asked to retrain it).

Training the runs: :mod:`lossmix.benchmark.runner`; pooling them into one report: :mod:`lossmix.benchmark.report`.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

import yaml

from . import compare

__all__ = ["ProtocolError", "Entry", "Protocol", "RunSpec", "load_protocol", "protocol_path", "plan", "run_state",
           "config_run_state", "describe_changed"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TOP_KEYS = {"DESCRIPTION", "SEEDS", "OVERRIDES", "DATASETS", "GAP", "CLAIMS", "ENTRIES"}
_CLAIM_KEYS = {"CLAIM", "BETTER", "THAN", "DATASET"}
_ENTRY_KEYS = {"NAME", "CONFIG", "OVERRIDES", "SEEDS", "SHARED_WITH", "INIT_FROM", "THREADS"}
_RESERVED = ("SEED", "OUTPUT_DIR")  # set by the tool for each run


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
    gap: Optional[dict]  # {"SOURCE_ONLY": entry, "ORACLE": entry or {dataset: entry}} or None
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
        oracles = gap["ORACLE"].values() if isinstance(gap["ORACLE"], dict) else [gap["ORACLE"]]
        for key, value in [("SOURCE_ONLY", gap["SOURCE_ONLY"])] + [("ORACLE", v) for v in oracles]:
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


def config_run_state(run_dir: str, cfg, *, defaults: Optional[dict] = None) -> tuple[str, dict]:
    """:func:`run_state` of ``run_dir`` for the built config ``cfg`` it would be trained with now (its
    ``DATASETS.TEST`` are the results a complete run holds); ``defaults``: the default config, as a dict."""
    return run_state(run_dir, yaml.safe_load(cfg.dump()), list(cfg.DATASETS.TEST),
                     defaults=_default_config() if defaults is None else defaults)


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
            state, diffs = config_run_state(out, cfg, defaults=defaults)
            specs.append(RunSpec(entry=entry.name, seed=seed, output_dir=out, config_file=entry.config, opts=opts,
                                 tests=list(cfg.DATASETS.TEST), max_iter=int(cfg.SOLVER.MAX_ITER), state=state,
                                 changed_keys=diffs, after=after, threads=entry.threads))
    return specs


def describe_changed(spec: RunSpec) -> str:
    keys = "; ".join(f"{k}: {old!r} in its config.yaml, {new!r} now" for k, (old, new) in spec.changed_keys.items())
    return f"{spec.output_dir} (entry {spec.entry!r}, seed {spec.seed}) was trained with another config: {keys}"
