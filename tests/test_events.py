"""Event writers: detectron2-style lines in the console and log.txt, metrics.jsonl, TensorBoard (read back)."""
from __future__ import annotations

import json
import logging
import re

import pytest

from lossmix.engine.defaults import setup
from lossmix.engine.events import CommonMetricPrinter
from lossmix.engine.run import run as train

from .helpers import jsonl_rows, make_tiny_dataset, tiny_opts


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("events"), num_train=4, num_test=2)


def test_printer_line_is_detectron2_style(caplog):
    row = {"iteration": 40, "lr": 0.02, "total_loss": 1.5, "loss_cls": 0.5, "pseudo_labels_per_image": 2.5,
           "time": 0.5, "data_time": 0.01}
    with caplog.at_level(logging.INFO, logger="lossmix.engine.events"):
        CommonMetricPrinter(max_iter=100).write(row)
    assert caplog.records[-1].getMessage() == ("eta: 0:00:30  iter: 40  total_loss: 1.5  loss_cls: 0.5  "
                                               "pseudo_labels_per_image: 2.5  time: 0.5000  data_time: 0.0100  lr: 0.02")


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_log_lines_tensorboard_and_the_summary_after_a_resume(names, tmp_path):
    out = tmp_path / "run"
    common = {"SOLVER.CHECKPOINT_PERIOD": 0, "DATASETS.TEST": (), "LOG_PERIOD": 1}
    train(setup("", tiny_opts(names, out, **common, **{"SOLVER.MAX_ITER": 2})))
    result = train(setup("", tiny_opts(names, out, **common, **{"SOLVER.MAX_ITER": 3})), resume=True)
    assert result["summary"]["iterations"] == 3 and result["summary"]["iterations_this_session"] == 1

    log = (out / "log.txt").read_text()
    lines = re.findall(r"eta: \d+:\d\d:\d\d  iter: (\d)  total_loss: \S+  loss_classifier: \S+  .*"
                       r"loss_rpn_box_reg: \S+  time: \d+\.\d{4}  data_time: \d+\.\d{4}  lr: \S+", log)
    assert lines == ["1", "2", "3"]
    assert "training done: 3 iterations (1 after resuming at 2)" in log

    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    periodic = {r["iteration"]: r for r in rows if "total_loss" in r}
    assert sorted(periodic) == [1, 2, 3] and all(r["time"] >= r["data_time"] >= 0 for r in periodic.values())
    scalars = _scalars(out)
    assert [step for step, _ in scalars["total_loss"]] == [1, 2, 3]
    for step, value in scalars["total_loss"]:
        assert value == pytest.approx(periodic[step]["total_loss"], rel=1e-6)  # float32 in the event file
    assert {"lr", "time", "data_time", "loss_classifier"} <= set(scalars)


def test_metrics_rows_never_go_backwards(tmp_path):
    from lossmix.engine.trainer import drop_rows_after

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iteration": i, "total_loss": i}) + "\n" for i in (1, 2, 3, 4)) + '{"itera')
    assert drop_rows_after(str(path), 2) == 3  # rows 3, 4 and the line cut by a kill
    assert [r["iteration"] for r in jsonl_rows(path)] == [1, 2]
    assert [json.loads(line).get("iteration") for line in open(tmp_path / "metrics.dropped.jsonl")
            if line.startswith('{"iteration": ')] == [3, 4]
