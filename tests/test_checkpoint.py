"""Checkpoints (lossmix.engine.checkpoint): resume from the newest loadable one, damaged ones moved aside."""
from __future__ import annotations

import logging
import os

import pytest
import torch

from lossmix.engine import checkpoint
from lossmix.engine.checkpoint import Checkpointer
from lossmix.engine.run import run as train

from .helpers import jsonl_rows, make_tiny_dataset, tiny_cfg


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("ckpt") / "data", num_train=4, num_test=2)


def _checkpointer(folder, **modules):
    model = torch.nn.Linear(2, 2)
    return Checkpointer(str(folder), keep=5, model=model, **modules), model


def test_resume_skips_a_missing_last_checkpoint(tmp_path):
    ckpt, _ = _checkpointer(tmp_path)
    ckpt.save("model_0000003", 3)
    ckpt.save("model_final", 6)
    os.remove(tmp_path / "model_final.pth")  # the user deleted the broken newest checkpoint
    assert ckpt.resume() == 3  # was: silently iteration 0


def test_damaged_newest_checkpoint_is_moved_aside_and_named(tmp_path, caplog):
    ckpt, _ = _checkpointer(tmp_path)
    ckpt.save("model_0000003", 3)
    ckpt.save("model_0000006", 6)
    data = (tmp_path / "model_0000006.pth").read_bytes()
    (tmp_path / "model_0000006.pth").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        assert ckpt.resume() == 3
    assert (tmp_path / "model_0000006.pth.damaged").read_bytes() == data[: len(data) // 2]  # kept, renamed
    assert not (tmp_path / "model_0000006.pth").exists()
    assert any("model_0000006.pth does not load" in r.getMessage() and "truncated or corrupt" in r.getMessage()
               for r in caplog.records)


def test_no_loadable_checkpoint_in_a_run_folder_stops(tmp_path):
    ckpt, _ = _checkpointer(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\n')
    (tmp_path / "model_final.pth").write_text("garbage")
    with pytest.raises(checkpoint.ResumeError, match="no loadable checkpoint in .*--allow-fresh"):
        ckpt.resume()
    assert ckpt.resume(allow_fresh=True) == 0
    empty, _ = _checkpointer(tmp_path / "new")
    assert empty.resume() == 0  # a new run folder: --resume simply starts


def test_train_resumes_from_the_previous_checkpoint(names, tmp_path):
    out = tmp_path / "run"
    opts = {"SOLVER.MAX_ITER": 4, "SOLVER.CHECKPOINT_PERIOD": 2, "DATASETS.TEST": ()}
    train(tiny_cfg(names, out, **opts))
    os.remove(out / "model_final.pth")
    result = train(tiny_cfg(names, out, **opts), resume=True)
    assert result["summary"]["iterations_this_session"] == 2  # from model_0000002, not from 0
    iterations = [r["iteration"] for r in jsonl_rows(out / "metrics.jsonl")]
    assert iterations == sorted(iterations) and iterations.count(3) == 1
