"""A protocol's report: :func:`build_report` pools the complete runs of each entry with
:mod:`lossmix.benchmark.compare` (mean, sample std, n; per class), refusing runs of one entry whose configs
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
from typing import Optional, Sequence

from . import compare
from .protocol import Protocol, RunSpec, _default_config, _metrics_rows, _summary_row

__all__ = ["TRAIN_SPLIT", "machine_info", "gap_closed", "claim_verdict", "judge_claims", "build_report",
           "pseudo_label_lines", "to_markdown", "write_report"]

TRAIN_SPLIT = "_train"  # datasets whose name holds this are training splits (shown apart, as train-split AP)


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


def gap_closed(summary: dict, source_only: str, oracle) -> dict[str, dict[str, float]]:
    """``{dataset: {entry: (mean - source_only mean) / (oracle mean - source_only mean)}}`` (NaN when the
    oracle does not beat source only, or either is missing on that dataset). ``oracle``: an entry name, or
    ``{dataset: entry}`` (each target domain its own oracle; datasets it does not name get NaN)."""
    out = {}
    for dataset, rows in summary.items():
        means = {row.method: row.ap_mean for row in rows}
        this_oracle = oracle.get(dataset) if isinstance(oracle, dict) else oracle
        lo, hi = means.get(source_only, float("nan")), means.get(this_oracle, float("nan"))
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
             "Box precision ignores the class: the share of pseudo-labels on a real object; the difference to the "
             "precision is the share on a real object with the wrong class.", "",
             "| entry | rows (iterations) | per image | images without | precision | box precision | recall |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name in [e["name"] for e in report["entries"]]:
        row = {key: by.get(key, {}).get(name) for key in compare.PSEUDO_LABEL_CURVES}
        present = [c for c in row.values() if c is not None and c.iterations]
        if not present:
            continue
        its = present[0].iterations
        cells = [_first_last(row["pseudo_labels_per_image"], 2)] + [
            _first_last(row[key], 0, percent=True) for key in ("pseudo_images_without_labels", "pseudo_precision",
                                                                "pseudo_precision_box", "pseudo_recall")]
        lines.append(f"| {name} | {len(its)} ({its[0]}–{its[-1]}) | " + " | ".join(cells) + " |")
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
