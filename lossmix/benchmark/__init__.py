"""The embedded benchmark: protocols of configs x seeds, trained in subprocesses, pooled into one report.

- :mod:`.protocol`: the protocol file's schema, the plan (one :class:`RunSpec` per entry and seed) and the state of a
  run folder (:func:`run_state`: complete, resume, fresh or changed);
- :mod:`.runner`: :func:`execute` trains the runs that are not complete (subprocesses, resume, thread sharing);
- :mod:`.report`: :func:`build_report` / :func:`write_report` pool the complete runs (claims, tables, plots);
- :mod:`.compare`: pooling finished runs over seeds, tables and charts (also used by ``tools/compare.py``).
"""
from .protocol import (Entry, Protocol, ProtocolError, RunSpec, config_run_state, describe_changed, load_protocol, plan,
                       protocol_path, run_state)
from .report import (TRAIN_SPLIT, build_report, claim_verdict, gap_closed, judge_claims, machine_info,
                     pseudo_label_lines, to_markdown, write_report)
from .runner import THREADS_FILE, eta_seconds, execute

__all__ = ["ProtocolError", "Entry", "Protocol", "RunSpec", "load_protocol", "protocol_path", "plan", "run_state",
           "config_run_state", "describe_changed", "THREADS_FILE", "eta_seconds", "execute", "TRAIN_SPLIT",
           "machine_info", "gap_closed", "claim_verdict", "judge_claims", "build_report", "pseudo_label_lines",
           "to_markdown", "write_report"]
