"""Compare finished runs: group them into methods, average AP over seeds, write a table and a chart.

A *run folder* holds ``config.yaml`` (the merged config ``setup`` writes) and
``eval/<dataset>.json`` (what :func:`lossmix.engine.inference.evaluate` writes: ``{role: result}``,
role ``model`` for a supervised run, ``teacher`` / ``student`` for Adaptive Teacher; a result is
``{"AP50": float, "per_class": {name: AP}, ...}``, AP in percent). The teacher's result is used
when there is one (it is the model Adaptive Teacher reports), and the summary records which role
was read. Files of earlier versions (a supervised run's bare result) are read too.

Runs are grouped into *methods*: a run folder named ``seed<k>`` belongs to the method named by
its parent folder (``tools/compare.py --configs`` writes ``<root>/<config stem>/seed<k>``);
otherwise the method is read from the config: ``LOSSMIX.MODE``, plus ``LOSSMIX.METHOD`` when
that is not the default mixup (``lossmix+cutmix``), prefixed ``da:`` for a domain-adaptation run
(``DA.ENABLED``).

    runs = load_runs(["output/a/seed0", "output/a/seed1", "output/b"])
    summary = summarize(runs)
    print(to_markdown(summary))
    plot(summary, "compare.png")
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import yaml

__all__ = ["GROUP_BY", "ROLES", "PSEUDO_LABEL_CURVES", "Run", "MethodSummary", "Curve", "find_run_dirs", "has_roles",
           "load_run", "load_runs", "method_of", "summarize", "flatten_config", "config_differences", "check_poolable",
           "read_curves", "summarize_curves", "is_adaptation_run", "read_adaptation_curves",
           "summarize_adaptation_curves", "read_metric_curves", "summarize_pseudo_label_curves", "mean_std",
           "format_ap", "to_markdown", "plot", "plot_curves"]

_SEED_DIR = re.compile(r"^seed\d+$")
GROUP_BY = ("auto", "parent", "config", "dir")
ROLES = ("auto", "teacher", "student", "model")  # which model of an eval file: auto = the teacher, else the student, else the model
# metrics.jsonl keys of a domain-adaptation run drawn over adaptation iterations, with their panel titles
PSEUDO_LABEL_CURVES = {"pseudo_precision": "pseudo-label precision (IoU 0.5)",
                       "pseudo_recall": "pseudo-label recall (IoU 0.5)",
                       "pseudo_precision_box": "pseudo-label box precision (IoU 0.5, any class)",
                       "pseudo_labels_per_image": "pseudo-labels per target image",
                       "pseudo_images_without_labels": "share of target images without pseudo-labels"}


@dataclass
class Run:
    """One run folder's results: ``results[dataset]`` is the eval dict used (the teacher's for DA runs)."""

    path: str
    method: str
    results: dict[str, dict]
    evaluated: dict[str, str]  # dataset -> "teacher" | "student" | "model" (which model's result was read)
    config: dict = field(default_factory=dict)


@dataclass
class MethodSummary:
    """One method on one dataset, over its runs (seeds).

    ``ap_std`` is the sample standard deviation (ddof 1) of the runs' AP50, NaN with one run.
    ``per_class`` holds the mean AP of each class over the runs where it is defined (NaN where
    it never is). ``evaluated`` says which model's result was read ("teacher" for DA runs).
    """

    method: str
    dataset: str
    ap_values: list[float]
    ap_mean: float
    ap_std: float
    per_class: dict[str, float]
    evaluated: str
    runs: list[str]

    @property
    def n(self) -> int:
        return len(self.ap_values)


@dataclass
class Curve:
    """AP50 (or another logged value) over training iterations of one method on one dataset, over its runs (seeds).

    ``mean[i]`` / ``std[i]`` (ddof 1, NaN with one run) / ``n[i]`` are over the runs that evaluated at
    ``iterations[i]``; ``values[run path]`` holds each run's ``{iteration: AP50}``. ``role``: which model of a
    domain-adaptation run (``teacher`` / ``student``), "" otherwise.
    """

    method: str
    dataset: str
    iterations: list[int]
    mean: list[float]
    std: list[float]
    n: list[int]
    values: dict[str, dict[int, float]]
    role: str = ""


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def _is_run_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "eval"))


def find_run_dirs(paths: Iterable[str]) -> list[str]:
    """Each path that is a run folder (has ``eval/``), or else its immediate sub-folders that are.

    So ``output/compare/lossmix`` (holding ``seed0/``, ``seed1/``...) stands for all its seeds.
    Raises ``FileNotFoundError`` for a path that is neither.
    """
    found = []
    for path in paths:
        if _is_run_dir(path):
            found.append(path)
            continue
        subs = sorted(os.path.join(path, d) for d in os.listdir(path)) if os.path.isdir(path) else []
        subs = [d for d in subs if _is_run_dir(d)]
        if not subs:
            raise FileNotFoundError(f"{path!r} is not a run folder (no eval/ in it or in its sub-folders)")
        found.extend(subs)
    return found


def _read_config(path: str) -> dict:
    cfg_path = os.path.join(path, "config.yaml")
    if not os.path.isfile(cfg_path):
        return {}
    with open(cfg_path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def method_of(path: str, config: dict, group_by: str = "auto") -> str:
    """The method a run belongs to (see the module docstring).

    ``group_by``: ``"auto"`` (parent folder name for ``seed<k>`` folders, else the config),
    ``"parent"`` (always the parent folder's name), ``"config"`` (always the config) or ``"dir"``
    (the run folder's own name: no grouping).
    """
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {GROUP_BY}, got {group_by!r}")
    path = os.path.normpath(os.path.abspath(path))
    name, parent = os.path.basename(path), os.path.basename(os.path.dirname(path))
    if group_by == "dir":
        return name
    if group_by == "parent" or (group_by == "auto" and _SEED_DIR.match(name)):
        return parent
    lossmix_cfg = config.get("LOSSMIX") or {}
    mode = lossmix_cfg.get("MODE")
    if mode is None:  # no config to read: the folder is the best name there is
        return name
    method = lossmix_cfg.get("METHOD", "mixup")
    name = mode if mode in ("none", "noise") or method == "mixup" else f"{mode}+{method}"
    return f"da:{name}" if (config.get("DA") or {}).get("ENABLED") else name


def _pick_model(data: dict, role: str = "auto") -> tuple[Optional[dict], str]:
    """``(result, which)`` from one eval file.

    A plain result (``{"AP50": ...}``) is returned as ``"model"``. A ``{role: result}`` file (DA runs
    write ``{"teacher": ..., "student": ...}``) gives, for ``role="auto"``, the teacher's result (the
    student's when the teacher's is null: burn-in never ended), else the named role's result, or
    ``(None, role)`` when that role is absent or null.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if "AP50" in data:
        return data, "model"
    if role != "auto":
        result = data.get(role)
        return (result, role) if isinstance(result, dict) and "AP50" in result else (None, role)
    for which in ("teacher", "student", "model"):
        if isinstance(data.get(which), dict) and "AP50" in data[which]:
            return data[which], which
    return data, "model"


def has_roles(path: str) -> bool:
    """Whether a run folder's eval files hold teacher / student results (a DA run's)."""
    eval_dir = os.path.join(path, "eval")
    for fname in sorted(os.listdir(eval_dir)) if os.path.isdir(eval_dir) else []:
        if fname.endswith(".json"):
            with open(os.path.join(eval_dir, fname), encoding="utf-8") as f:
                if {"teacher", "student"} & set(json.load(f)):
                    return True
    return False


def load_run(path: str, group_by: str = "auto", role: str = "auto") -> Run:
    """Read one run folder (``config.yaml`` optional, ``eval/*.json`` required).

    ``role`` picks the model of DA eval files (see :func:`_pick_model`); a dataset whose file lacks
    that role is left out of ``results``.
    """
    config = _read_config(path)
    eval_dir = os.path.join(path, "eval")
    results, evaluated = {}, {}
    tests = list((config.get("DATASETS") or {}).get("TEST") or [])
    fnames = sorted((f for f in os.listdir(eval_dir) if f.endswith(".json")),  # DATASETS.TEST order, then the rest
                    key=lambda f: (tests.index(f[:-5]) if f[:-5] in tests else len(tests), f))
    for fname in fnames:
        with open(os.path.join(eval_dir, fname), encoding="utf-8") as f:
            data = json.load(f)  # Python's json reads the NaN that evaluate() writes for undefined classes
        result, which = _pick_model(data, role)
        if result is None:
            continue
        if "AP50" not in result:
            raise ValueError(f"{os.path.join(eval_dir, fname)}: no AP50 (keys: {sorted(data)})")
        dataset = fname[:-len(".json")]
        results[dataset], evaluated[dataset] = result, which
    if not results:
        wanted = "" if role == "auto" else f" with a {role!r} result"
        raise FileNotFoundError(f"{eval_dir}: no <dataset>.json results{wanted}")
    return Run(path=path, method=method_of(path, config, group_by), results=results, evaluated=evaluated,
               config=config)


def load_runs(paths: Sequence[str], group_by: str = "auto", role: str = "auto") -> list[Run]:
    """:func:`load_run` for every run folder in ``paths`` (see :func:`find_run_dirs`)."""
    return [load_run(p, group_by, role) for p in find_run_dirs(paths)]


def flatten_config(config: dict, prefix: str = "") -> dict:
    """``{"A": {"B": 1}}`` -> ``{"A.B": 1}`` (lists and tuples are leaves, as tuples)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = _freeze(value)
    return flat


def _freeze(value):
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


_MISSING = object()


def config_differences(a: dict, b: dict, *, ignore: Iterable[str] = ("SEED", "OUTPUT_DIR"),
                       defaults: Optional[dict] = None) -> dict[str, tuple]:
    """``{dotted key: (value in a, value in b)}`` for every key whose values differ, ``ignore`` aside.

    A key present in only one config (the other shows ``"<absent>"``) is a difference, unless
    ``defaults`` (a config dict, e.g. ``yaml.safe_load(get_cfg().dump())``) gives it the value it has
    on the side where it is present: a key added to lossmix after a run was made, at its default,
    does not change that run.
    """
    fa, fb = flatten_config(a), flatten_config(b)
    fd = flatten_config(defaults) if defaults is not None else {}
    ignored = set(ignore)
    diffs = {}
    for key in sorted(set(fa) | set(fb)):
        if key in ignored:
            continue
        va, vb = fa.get(key, _MISSING), fb.get(key, _MISSING)
        if va == vb:
            continue
        if va is _MISSING or vb is _MISSING:
            present = vb if va is _MISSING else va
            if key in fd and fd[key] == present:
                continue
        diffs[key] = tuple("<absent>" if v is _MISSING else v for v in (va, vb))
    return diffs


def check_poolable(runs: Sequence[Run], *, ignore: Iterable[str] = ("SEED", "OUTPUT_DIR"),
                   defaults: Optional[dict] = None) -> None:
    """Raise ``ValueError`` when two runs of one method have configs that differ beyond ``ignore``.

    The message names both runs and each differing key with its two values: a mean over seeds
    must be a mean over seeds only.
    """
    first: dict[str, Run] = {}
    for run in runs:
        ref = first.setdefault(run.method, run)
        if ref is run:
            continue
        diffs = config_differences(ref.config, run.config, ignore=ignore, defaults=defaults)
        if diffs:
            listed = "; ".join(f"{k}: {va!r} vs {vb!r}" for k, (va, vb) in diffs.items())
            raise ValueError(f"refusing to pool {ref.path} and {run.path} into {run.method!r}: their configs differ "
                             f"beyond {', '.join(ignore)}: {listed}")


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def _finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else float("nan")


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof 1); NaN for fewer than two values."""
    if len(values) < 2:
        return float("nan")
    m = _mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """``(mean, sample std (ddof 1), n)`` of the finite values; NaN mean with none, NaN std with one."""
    finite = _finite(values)
    return _mean(finite), _std(finite), len(finite)


def _evaluated_label(labels: list[str]) -> str:
    kinds = sorted(set(labels))
    if len(kinds) == 1:
        return kinds[0]
    return ", ".join(f"{k} ({labels.count(k)}/{len(labels)})" for k in kinds)


def summarize(runs: Sequence[Run]) -> dict[str, list[MethodSummary]]:
    """``{dataset: [MethodSummary, ...]}``; datasets and methods in the order first met in ``runs``.

    A run whose AP50 is NaN (no class with ground truth) is left out of that dataset's mean.
    """
    order: dict[str, dict[str, list[Run]]] = {}
    for run in runs:
        for dataset in run.results:
            order.setdefault(dataset, {}).setdefault(run.method, []).append(run)
    summary = {}
    for dataset, methods in order.items():
        rows = []
        for method, group in methods.items():
            aps = _finite(r.results[dataset]["AP50"] for r in group)
            classes = list(dict.fromkeys(c for r in group for c in r.results[dataset].get("per_class", {})))
            per_class = {c: _mean(_finite(r.results[dataset].get("per_class", {}).get(c) for r in group))
                         for c in classes}
            rows.append(MethodSummary(method=method, dataset=dataset, ap_values=aps, ap_mean=_mean(aps),
                                      ap_std=_std(aps), per_class=per_class,
                                      evaluated=_evaluated_label([r.evaluated[dataset] for r in group]),
                                      runs=[r.path for r in group]))
        summary[dataset] = rows
    return summary


def read_curves(run: Run, role: str = "auto") -> dict[str, dict[int, float]]:
    """``{dataset: {iteration: AP50}}`` from the run's ``metrics.jsonl`` rows ``{"iteration": i, "eval": {...}}``
    (written every ``TEST.EVAL_PERIOD``), each ending with the run's final result at ``SOLVER.MAX_ITER``
    (when the config gives it).

    A row's result may be plain or a ``{role: result}`` map (read per ``role`` as in :func:`load_run`).
    """
    curves: dict[str, dict[int, float]] = {}
    path = os.path.join(run.path, "metrics.jsonl")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: not JSON ({err})") from None
                for dataset, data in (row.get("eval") or {}).items():
                    result, _ = _pick_model(data or {}, role)
                    if result is not None and "AP50" in result:
                        curves.setdefault(dataset, {})[int(row["iteration"])] = float(result["AP50"])
    max_iter = (run.config.get("SOLVER") or {}).get("MAX_ITER")
    if max_iter is not None:
        for dataset, points in curves.items():  # datasets evaluated during training end with the final result
            if dataset in run.results:
                points[int(max_iter)] = float(run.results[dataset]["AP50"])
    return curves


def summarize_curves(runs: Sequence[Run], role: str = "auto") -> dict[str, list[Curve]]:
    """``{dataset: [Curve, ...]}``: per method, mean / std / n of AP50 at each iteration over its runs.

    Only runs that evaluated during training contribute; datasets and methods in first-met order.
    """
    grouped: dict[str, dict[str, dict[str, dict[int, float]]]] = {}
    for run in runs:
        for dataset, points in read_curves(run, role).items():
            grouped.setdefault(dataset, {}).setdefault(run.method, {})[run.path] = points
    return {dataset: [_curve(method, dataset, per_run) for method, per_run in methods.items()]
            for dataset, methods in grouped.items()}


def _curve(method: str, dataset: str, per_run: dict[str, dict[int, float]], role: str = "") -> Curve:
    its = sorted({i for points in per_run.values() for i in points})
    stats = [mean_std(points[i] for points in per_run.values() if i in points) for i in its]
    return Curve(method=method, dataset=dataset, iterations=its, mean=[m for m, _, _ in stats],
                 std=[s for _, s, _ in stats], n=[k for _, _, k in stats], values=per_run, role=role)


def is_adaptation_run(run: Run) -> bool:
    """Whether the run trained with domain adaptation (``DA.ENABLED`` in its config)."""
    return bool((run.config.get("DA") or {}).get("ENABLED"))


def _burn_in(run: Run) -> int:
    return int((run.config.get("DA") or {}).get("BURN_IN_ITERS") or 0)


def _start_results(run: Run) -> dict[str, float]:
    """``{dataset: AP50}`` of the model an adaptation run started from: the run folder holding its ``MODEL.WEIGHTS``
    (a benchmark's INIT_FROM run), when that folder has results; ``{}`` otherwise."""
    weights = (run.config.get("MODEL") or {}).get("WEIGHTS") or ""
    folder = os.path.dirname(weights)
    if not folder or not _is_run_dir(folder):
        return {}
    try:
        start = load_run(folder, group_by="dir")
    except (FileNotFoundError, ValueError):
        return {}
    return {d: float(r["AP50"]) for d, r in start.results.items()}


def read_adaptation_curves(run: Run, role: str) -> dict[str, dict[int, float]]:
    """``{dataset: {adaptation iteration: AP50}}`` of one model (``role``: ``teacher`` / ``student``) of a
    domain-adaptation run, on the datasets it evaluated during training.

    The axis is iterations since the end of burn-in (``iteration - DA.BURN_IN_ITERS``), so a run
    that starts from a supervised run's weights (``BURN_IN_ITERS 0``) is not drawn on that run's
    axis. Such a run's curves start at 0 with its starting model's result (both models start as
    that model), read from the folder of ``MODEL.WEIGHTS`` when it holds results; each ends with
    the run's final result of that role.
    """
    try:
        own = load_run(run.path, group_by="dir", role=role)
    except FileNotFoundError:  # no result of that role (e.g. burn-in never ended: no teacher)
        return {}
    own.config = run.config
    burn_in = _burn_in(run)
    start = _start_results(run) if burn_in == 0 else {}
    out = {}
    for dataset, points in read_curves(own, role).items():
        shifted = {i - burn_in: v for i, v in points.items() if i >= burn_in}
        if dataset in start:
            shifted.setdefault(0, start[dataset])
        out[dataset] = dict(sorted(shifted.items()))
    return out


def summarize_adaptation_curves(runs: Sequence[Run]) -> dict[str, list[Curve]]:
    """``{dataset: [Curve, ...]}`` over adaptation iterations (:func:`read_adaptation_curves`): per method, one
    curve of the teacher and one of the student, mean / std / n over its runs. Other runs are left out."""
    grouped: dict[str, dict[tuple[str, str], dict[str, dict[int, float]]]] = {}
    for run in runs:
        if not is_adaptation_run(run):
            continue
        for role in ("teacher", "student"):
            for dataset, points in read_adaptation_curves(run, role).items():
                grouped.setdefault(dataset, {}).setdefault((run.method, role), {})[run.path] = points
    return {dataset: [_curve(method, dataset, per_run, role) for (method, role), per_run in methods.items()]
            for dataset, methods in grouped.items()}


def read_metric_curves(run: Run, keys: Iterable[str]) -> dict[str, dict[int, float]]:
    """``{key: {adaptation iteration: value}}`` of the finite values of ``keys`` in the run's ``metrics.jsonl`` rows
    (iteration - ``DA.BURN_IN_ITERS``; rows of the burn-in left out)."""
    keys = list(keys)
    burn_in = _burn_in(run)
    out: dict[str, dict[int, float]] = {}
    path = os.path.join(run.path, "metrics.jsonl")
    if not os.path.isfile(path):
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if not isinstance(row, dict) or "iteration" not in row or int(row["iteration"]) < burn_in:
                continue
            for key in keys:
                value = row.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    out.setdefault(key, {})[int(row["iteration"]) - burn_in] = float(value)
    return out


def summarize_pseudo_label_curves(runs: Sequence[Run], keys: Iterable[str] = tuple(PSEUDO_LABEL_CURVES)
                                  ) -> dict[str, list[Curve]]:
    """``{key: [Curve, ...]}``: per method, mean / std / n over its runs of each logged pseudo-label metric
    (:data:`PSEUDO_LABEL_CURVES`) over adaptation iterations; domain-adaptation runs only, keys in ``keys`` order."""
    keys = list(keys)
    grouped: dict[str, dict[str, dict[str, dict[int, float]]]] = {k: {} for k in keys}
    for run in runs:
        if is_adaptation_run(run):
            for key, points in read_metric_curves(run, keys).items():
                grouped[key].setdefault(run.method, {})[run.path] = points
    return {key: [_curve(method, key, per_run) for method, per_run in methods.items()]
            for key, methods in grouped.items() if methods}


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def format_ap(mean: float, std: float, n: int, digits: int = 1, *, show_n: bool = False) -> str:
    """``"48.3 ±1.2 (n=3)"``; just ``"48.3"`` with one run (``"48.3 (n=1)"`` with ``show_n``); ``"n/a"`` when undefined."""
    if not math.isfinite(mean):
        return "n/a"
    if n < 2:
        return f"{mean:.{digits}f} (n={n})" if show_n else f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ±{std:.{digits}f} (n={n})"


def to_markdown(summary: dict[str, list[MethodSummary]], digits: int = 1, *, show_n: bool = False) -> str:
    """One markdown table per dataset: method, mAP (mean ± std over seeds), evaluated model, per-class means."""
    blocks = []
    for dataset, rows in summary.items():
        classes = list(dict.fromkeys(c for row in rows for c in row.per_class))
        header = ["method", "mAP (AP50)", "evaluated"] + classes
        lines = [f"### {dataset}", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join(["---"] + ["---:"] + ["---"] + ["---:"] * len(classes)) + "|"]
        for row in rows:
            cells = [row.method, format_ap(row.ap_mean, row.ap_std, row.n, digits, show_n=show_n), row.evaluated]
            for c in classes:
                v = row.per_class.get(c, float("nan"))
                cells.append(f"{v:.{digits}f}" if math.isfinite(v) else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def plot(summary: dict[str, list[MethodSummary]], path: str, *, title: Optional[str] = None) -> str:
    """Grouped bar chart (one group per dataset, one bar per method, error bars = std over seeds) -> PNG.

    Draws on a standalone Agg canvas, so it neither needs a display nor touches pyplot's global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = list(summary)
    methods = list(dict.fromkeys(row.method for rows in summary.values() for row in rows))
    fig = Figure(figsize=(max(6.0, 1.2 + len(datasets) * (0.5 + 0.35 * len(methods))), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(methods), 1)
    for k, method in enumerate(methods):
        xs, means, errs = [], [], []
        for d, dataset in enumerate(datasets):
            row = next((r for r in summary[dataset] if r.method == method), None)
            if row is None or not math.isfinite(row.ap_mean):
                continue
            xs.append(d - 0.4 + width * (k + 0.5))
            means.append(row.ap_mean)
            errs.append(row.ap_std if math.isfinite(row.ap_std) else 0.0)  # one seed: no error bar
        ax.bar(xs, means, width * 0.9, label=method)
        with_err = [i for i, e in enumerate(errs) if e > 0]
        if with_err:
            ax.errorbar([xs[i] for i in with_err], [means[i] for i in with_err], yerr=[errs[i] for i in with_err],
                        fmt="none", ecolor="black", elinewidth=1, capsize=3)
        for x, m, e in zip(xs, means, errs):
            ax.annotate(f"{m:.1f}", (x, m + e), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(range(len(datasets)))
    crowded = len(datasets) > 3
    ax.set_xticklabels(datasets, rotation=15 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylabel("AP50 (%)  mean ± std over seeds")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_curves(curves: dict[str, list[Curve]], path: str, *, title: Optional[str] = None,
                panel_titles: Optional[dict[str, str]] = None, xlabel: str = "iteration",
                ylabel: str = "AP50 (%)  mean ± std", ylabels: Optional[dict[str, str]] = None) -> str:
    """AP50 vs iteration: one panel per dataset, one line per method (mean over runs), a ±std band -> PNG.

    ``panel_titles`` may rename panels (e.g. to mark a train split), ``ylabels`` give some panels their own
    y label. A method keeps one colour in every panel; a curve with a ``role`` is labelled with it, the
    student's dashed. Standalone Agg canvas, as :func:`plot`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = list(curves)
    cols = min(3, max(len(datasets), 1))
    rows = -(-max(len(datasets), 1) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows))
    FigureCanvasAgg(fig)
    methods = list(dict.fromkeys(c.method for rows_ in curves.values() for c in rows_))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for k, dataset in enumerate(datasets):
        ax = fig.add_subplot(rows, cols, k + 1)
        for curve in curves[dataset]:
            mean = [m for m in curve.mean]
            label = f"{curve.method} ({curve.role})" if curve.role else curve.method
            (line,) = ax.plot(curve.iterations, mean, marker="o", markersize=3, label=label,
                              color=colours[curve.method], linestyle="--" if curve.role == "student" else "-")
            lo = [m - (s if math.isfinite(s) else 0.0) for m, s in zip(mean, curve.std)]
            hi = [m + (s if math.isfinite(s) else 0.0) for m, s in zip(mean, curve.std)]
            ax.fill_between(curve.iterations, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title((panel_titles or {}).get(dataset, dataset), fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel((ylabels or {}).get(dataset, ylabel))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
