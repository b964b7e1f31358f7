"""Two processes over gloo (CPU): --num-gpus 2 trains, syncs gradients and evaluates on rank 0."""
import json
import os
import subprocess
import sys

import torch

from .helpers import REPO, tiny_opts


def test_two_process_gloo_training(tmp_path):
    from lossmix.data.synthetic import generate

    generate(str(tmp_path / "ds" / "synthetic"), num_train=4, num_test=2, image_size=96, domains=("source",))
    names = {"source_train": "synthetic_source_train", "source_test": "synthetic_source_test"}
    out = tmp_path / "out"
    opts = tiny_opts(names, out, **{"SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 0,
                                    "MODEL.BACKBONE.NORM": "GN"})
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--num-gpus", "2", *opts]
    proc = subprocess.run(cmd, env={**os.environ, "LOSSMIX_DATASETS": str(tmp_path / "ds")}, capture_output=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    result = json.load(open(out / "eval" / "synthetic_source_test.json"))
    assert result["num_images"] == 2  # both ranks' shares gathered on rank 0
    state = torch.load(out / "model_final.pth", weights_only=True)
    assert state["iteration"] == 2
    assert not any(k.startswith("module.") for k in state["model"])  # saved unwrapped
