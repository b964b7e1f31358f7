"""Event writers (detectron2's EventWriter idea): each periodic row of the trainer goes to every writer.

A row is ``{"iteration": int, "lr": float, "time": s/iter, "data_time": s/iter, "total_loss": float,
"loss_*": float, ...}`` plus whatever the recipe's ``after_step`` returned (domain-adaptation signals such as
``pseudo_labels_per_image``); ``iteration`` counts finished iterations (1 after the first step).

- :class:`JSONWriter`: ``OUTPUT_DIR/metrics.jsonl``, one JSON object per line (also evaluations and the summary).
- :class:`CommonMetricPrinter`: one detectron2-style line per row on the ``lossmix`` logger, so the console and
  ``log.txt`` both carry it: ``eta: 0:01:02  iter: 40  total_loss: 1.234  loss_classifier: 0.4 ...
  time: 0.5120  data_time: 0.0101  lr: 0.02``.
- :class:`TensorboardWriter`: ``OUTPUT_DIR/events.out.tfevents.*`` (``tensorboard --logdir OUTPUT_DIR``), one scalar
  per numeric entry, tagged like the row's keys.

Writers run on the main process only (the trainer averages the row over ranks first).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Optional

from ..utils import comm

logger = logging.getLogger("lossmix.engine.events")

TIMING_KEYS = ("time", "data_time")


class EventWriter:
    """``write(row)`` for each periodic row; ``write_extra(row)`` for evaluations / summaries; ``close()``."""

    def write(self, row: dict) -> None:
        raise NotImplementedError

    def write_extra(self, row: dict) -> None:
        """A non-periodic row (``{"iteration", "eval": ...}``, ``{"iteration", "summary": ...}``, ...)."""

    def close(self) -> None:
        pass


def drop_rows_after(path: str, iteration: int) -> int:
    """Move the rows of ``path`` (JSON lines) whose ``iteration`` is above ``iteration``, or that do not parse
    (a line cut by a kill), to ``<stem>.dropped.jsonl`` beside it; returns how many were moved."""
    if not os.path.exists(path):
        return 0
    keep, drop = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row_iter = json.loads(line).get("iteration", 0)
            except (ValueError, AttributeError):
                row_iter = None
            (keep if row_iter is not None and row_iter <= iteration else drop).append(line if line.endswith("\n") else line + "\n")
    if drop:
        with open(os.path.splitext(path)[0] + ".dropped.jsonl", "a", encoding="utf-8") as f:
            f.writelines(drop)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, path)
        logger.warning("%s: moved %d row(s) after iteration %d to %s", path, len(drop), iteration,
                       os.path.splitext(path)[0] + ".dropped.jsonl")
    return len(drop)


class JSONWriter(EventWriter):
    """Appends one JSON object per line to ``output_dir/metrics.jsonl`` (main process only).

    With ``start_iter`` (a run starting or resuming there), rows of a later iteration, left by a run that
    went further than the checkpoint now resumed, are moved to ``metrics.dropped.jsonl`` first, so the
    iterations in ``metrics.jsonl`` never go backwards.
    """

    def __init__(self, output_dir: str, *, start_iter: Optional[int] = None):
        self.path = os.path.join(output_dir, "metrics.jsonl") if output_dir else None
        if start_iter is not None and self.path and comm.is_main_process():
            drop_rows_after(self.path, start_iter)

    def write(self, row: dict) -> None:
        if self.path and comm.is_main_process():
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    write_extra = write

    def rows(self) -> list[dict]:
        if not self.path or not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class CommonMetricPrinter(EventWriter):
    """One line per row on the logger: eta, iter, total_loss, the loss terms, other signals, time, data_time, lr.

    ``eta`` is ``(max_iter - iteration) x`` the mean seconds per iteration since the last row (the first
    row's includes start-up, as detectron2's first line does).
    """

    def __init__(self, max_iter: int):
        self.max_iter = max_iter

    def write(self, row: dict) -> None:
        if not comm.is_main_process():
            return
        it = row["iteration"]
        eta = ""
        if row.get("time") is not None:
            eta = f"eta: {datetime.timedelta(seconds=int(row['time'] * (self.max_iter - it)))}  "
        losses = [k for k in row if k.startswith("loss")]
        signals = [k for k in row if k not in ("iteration", "lr", "total_loss", *TIMING_KEYS, *losses)
                   and isinstance(row[k], (int, float)) and not isinstance(row[k], bool)]
        parts = [f"{eta}iter: {it}"]
        if "total_loss" in row:
            parts.append(f"total_loss: {_fmt(row['total_loss'])}")
        parts += [f"{k}: {_fmt(row[k])}" for k in losses + signals]
        parts += [f"{k}: {row[k]:.4f}" for k in TIMING_KEYS if row.get(k) is not None]
        if "lr" in row:
            parts.append(f"lr: {row['lr']:.5g}")
        logger.info("  ".join(parts))


class TensorboardWriter(EventWriter):
    """TensorBoard scalars in ``output_dir`` (``torch.utils.tensorboard``; the ``tensorboard`` package).

    Periodic rows: every numeric entry under its own name; evaluations: ``eval/<dataset>/<role>/AP50``.
    """

    def __init__(self, output_dir: str, *, purge_step: Optional[int] = None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides events at or after it that an earlier (interrupted) run left behind
        self._writer = SummaryWriter(log_dir=output_dir, purge_step=purge_step)

    def write(self, row: dict) -> None:
        it = row["iteration"]
        for key, value in row.items():
            if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, it)

    def write_extra(self, row: dict) -> None:
        for dataset, per_role in (row.get("eval") or {}).items():
            for role, result in (per_role or {}).items():
                if isinstance(result, dict) and isinstance(result.get("AP50"), (int, float)):
                    self._writer.add_scalar(f"eval/{dataset}/{role}/AP50", result["AP50"], row["iteration"])

    def close(self) -> None:
        self._writer.close()


def default_writers(output_dir: str, *, max_iter: int, start_iter: int = 0) -> list[EventWriter]:
    """The console / log.txt printer, metrics.jsonl and (when there is an output folder) TensorBoard."""
    if not comm.is_main_process():
        return []
    writers: list[EventWriter] = [CommonMetricPrinter(max_iter), JSONWriter(output_dir, start_iter=start_iter)]
    if output_dir:
        try:
            # rows are numbered by finished iterations: those up to start_iter belong to the checkpoint resumed
            writers.append(TensorboardWriter(output_dir, purge_step=start_iter + 1 if start_iter else None))
        except ImportError:  # tensorboard is in requirements.txt; a trimmed environment still trains
            logger.warning("tensorboard is not installed: no TensorBoard event files (pip install tensorboard)")
    return writers


__all__ = ["EventWriter", "JSONWriter", "CommonMetricPrinter", "TensorboardWriter", "default_writers",
           "drop_rows_after"]
