import json
import os

import pytest
import torch

from lossmix.engine.checkpoint import Checkpointer
from lossmix.engine.recipes.supervised import SupervisedRecipe
from lossmix.engine.run import run as train
from lossmix.engine.schedule import build_optimizer, build_scheduler, lr_factor
from lossmix.engine.trainer import NonFiniteLossError, Trainer
from lossmix.modeling.build import build_detector

from .helpers import make_tiny_dataset, tiny_cfg


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tinyeng"), num_train=8, num_test=3)


def test_lr_schedule():
    kw = dict(warmup_iters=10, warmup_factor=0.001, steps=(20, 30), gamma=0.1)
    assert lr_factor(0, **kw) == pytest.approx(0.001)
    assert lr_factor(5, **kw) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(10, **kw) == 1.0 and lr_factor(19, **kw) == 1.0
    assert lr_factor(20, **kw) == pytest.approx(0.1) and lr_factor(30, **kw) == pytest.approx(0.01)


def _metrics(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["iteration"]: r for r in rows if "total_loss" in r}


def test_training_reduces_loss_on_a_repeated_batch(names, tmp_path):
    cfg = tiny_cfg(names, tmp_path, **{"SOLVER.MAX_ITER": 12, "SOLVER.STEPS": (100,), "SOLVER.CLIP_GRADIENTS": 5.0})
    torch.manual_seed(0)
    model = build_detector(cfg)
    from lossmix.data.loader import build_train_loader

    batch = next(iter(build_train_loader(cfg)))
    opt = build_optimizer(cfg, model)
    cpu = torch.device("cpu")
    trainer = Trainer.from_config(cfg, recipe=SupervisedRecipe(model=model, device=cpu), optimizer=opt,
                                  scheduler=build_scheduler(cfg, opt), data_loader=iter(lambda: batch, None), device=cpu,
                                  checkpointer=Checkpointer(str(tmp_path), model=model))
    trainer.train()
    kept = [k for k, v in vars(trainer).items() if isinstance(v, (list, dict, tuple)) and len(v) >= cfg.SOLVER.MAX_ITER]
    assert kept == []  # nothing per iteration is kept in memory: metrics.jsonl has it
    losses = [row["total_loss"] for _, row in sorted(_metrics(tmp_path).items())]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses


def test_resume_continues_at_the_right_iteration_with_the_same_lr_and_losses(names, tmp_path):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    train(tiny_cfg(names, full_dir))
    train(tiny_cfg(names, cut_dir, **{"SOLVER.MAX_ITER": 3}))  # a run cut after iteration 3
    assert (cut_dir / "last_checkpoint").read_text() == "model_final.pth"
    (cut_dir / "model_interrupted.pth").write_bytes((cut_dir / "model_final.pth").read_bytes())  # as Ctrl-C leaves
    result = train(tiny_cfg(names, cut_dir), resume=True)
    assert not (cut_dir / "model_interrupted.pth").exists()  # the run it saved has finished
    assert result["summary"]["iterations"] == 6 and result["summary"]["iterations_this_session"] == 3
    full, cut = _metrics(full_dir), _metrics(cut_dir)
    for it in (4, 5, 6):
        assert cut[it]["lr"] == pytest.approx(full[it]["lr"], rel=1e-12)
        assert cut[it]["total_loss"] == pytest.approx(full[it]["total_loss"], rel=1e-5), it
    assert cut[6]["lr"] == pytest.approx(0.01 * 0.1)  # past SOLVER.STEPS (4)
    assert result["results"][names["source_test"]]["model"]["num_images"] == 3
    saved = json.loads((cut_dir / "eval" / f"{names['source_test']}.json").read_text())
    assert saved["model"]["num_images"] == 3  # eval files have the one shape {role: result}


class _NanAt(torch.nn.Module):
    """Wraps a detector; returns a NaN loss at the given iterations (counted by calls)."""

    def __init__(self, model, bad):
        super().__init__()
        self.model, self.bad, self.calls = model, set(bad), 0

    def forward(self, images, targets):
        losses = self.model(images, targets)
        self.calls += 1
        if self.calls - 1 in self.bad:
            losses["loss_classifier"] = losses["loss_classifier"] * float("nan")
        return losses


def _nan_trainer(names, tmp_path, bad, **extra):
    cfg = tiny_cfg(names, tmp_path, **extra)
    model = _NanAt(build_detector(cfg), bad)
    opt = build_optimizer(cfg, model)
    from lossmix.data.loader import build_train_loader

    cpu = torch.device("cpu")
    return Trainer.from_config(cfg, recipe=SupervisedRecipe(model=model, device=cpu), optimizer=opt,
                               scheduler=build_scheduler(cfg, opt), data_loader=build_train_loader(cfg), device=cpu,
                               checkpointer=Checkpointer(str(tmp_path), model=model.model))


def test_nan_step_is_skipped_and_counted(names, tmp_path):
    trainer = _nan_trainer(names, tmp_path, bad=[2], **{"SOLVER.MAX_ITER": 4, "SOLVER.CHECKPOINT_PERIOD": 0})
    params_before = None

    def snapshot():
        return [p.detach().clone() for p in trainer.recipe.trainable.parameters()]

    data = iter(trainer.data_loader)
    for trainer.iter in range(4):
        if trainer.iter == 2:
            params_before = snapshot()
        trainer.run_step(next(data))
        if trainer.iter == 2:
            assert all(torch.equal(a, b) for a, b in zip(params_before, snapshot()))  # not applied
    assert trainer.skipped_steps == 1 and trainer.bad_steps == 0
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows[0]["iteration"] == 2 and "loss_classifier" in rows[0]["non_finite_loss"]


def test_consecutive_nan_steps_stop_training(names, tmp_path):
    trainer = _nan_trainer(names, tmp_path, bad=[3, 4, 5], **{"SOLVER.MAX_ITER": 8, "SOLVER.MAX_BAD_STEPS": 3,
                                                               "SOLVER.CHECKPOINT_PERIOD": 2})
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive non-finite losses .*MAX_BAD_STEPS = 3.* iteration 5"):
        trainer.train()
    assert not (tmp_path / "model_final.pth").exists()
    last = Checkpointer(str(tmp_path)).last_checkpoint()
    assert last.endswith("model_0000004.pth")  # written after a skipped step: still the good weights
    state = torch.load(last, weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_build_detector_leaves_batchnorm_statistics_untouched():
    # Issue 10: the level-count probe ran in train mode and moved running_var / num_batches_tracked.
    cfg = tiny_cfg({"source_train": "unused", "source_test": "unused"}, "")
    model = build_detector(cfg)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and model.backbone.training
    for bn in bns:
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        assert int(bn.num_batches_tracked) == 0


def test_periodic_evaluation_covers_only_eval_period_datasets(names, tmp_path):
    # Learning curves on the test split and the training images, the other test sets only at the end.
    subset = f"{names['source_train']}[:2]"
    cfg = tiny_cfg(names, tmp_path, **{"SOLVER.MAX_ITER": 2, "TEST.EVAL_PERIOD": 1,
                                       "DATASETS.TEST": (names["source_test"], subset),
                                       "TEST.EVAL_PERIOD_DATASETS": (subset,)})
    train(cfg)
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        evals = [json.loads(line) for line in f if '"eval"' in line]
    assert [(r["iteration"], sorted(r["eval"])) for r in evals] == [(1, [subset])]
    assert sorted(os.listdir(os.path.join(tmp_path, "eval"))) == sorted(f"{d}.json" for d in cfg.DATASETS.TEST)


@pytest.mark.parametrize("workers", [0, 1])
def test_periodic_evaluation_leaves_training_bit_identical(names, tmp_path, workers):
    """Evaluating every 2 iterations (test loader, teacher-style eval mode, evaluator) must not move the random
    streams or the module modes the training reads: the losses equal those of a run that never evaluates."""
    common = {"SOLVER.MAX_ITER": 6, "DATALOADER.NUM_WORKERS": workers}
    train(tiny_cfg(names, tmp_path / "never", **common, **{"TEST.EVAL_PERIOD": 0}))
    train(tiny_cfg(names, tmp_path / "every2", **common, **{"TEST.EVAL_PERIOD": 2}))
    never, every2 = _metrics(tmp_path / "never"), _metrics(tmp_path / "every2")
    with open(os.path.join(tmp_path / "every2", "metrics.jsonl")) as f:
        assert sum('"eval"' in line for line in f) == 2  # iterations 2 and 4 were evaluated
    assert sorted(never) == list(range(1, 7))
    for it in never:
        assert every2[it]["total_loss"] == never[it]["total_loss"], it  # bit-identical, not approximately


def test_evaluation_restores_each_submodule_mode_and_the_random_streams():
    import random

    import numpy as np

    from lossmix.engine.inference import training_state_kept

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    model.train()
    model[1].eval()  # a submodule deliberately kept in eval mode
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    expected = (torch.rand(2), np.random.rand(), random.random())
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    with training_state_kept([model]):
        model.eval()
        torch.rand(5), np.random.rand(4), random.random()
        torch.utils.data.DataLoader([1, 2]).__iter__()  # draws its base seed from torch's global generator
    assert model.training and model[0].training and not model[1].training
    got = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_a_new_run_in_a_folder_holding_a_run_is_refused_or_overwritten(names, tmp_path, capsys):
    import importlib.util

    from .helpers import REPO, tiny_opts

    spec = importlib.util.spec_from_file_location("train_net_tool_engine", os.path.join(REPO, "tools", "train_net.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "run"
    opts = tiny_opts(names, out, **{"SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 0})
    tool.main(tool.parse_args(opts))
    final = (out / "model_final.pth").read_bytes()
    evals = (out / "eval" / f"{names['source_test']}.json").read_text()
    config = (out / "config.yaml").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        tool.main(tool.parse_args(opts + ["SEED", "1"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: RunFolderError: OUTPUT_DIR {out} already holds a run (")
    assert "add --resume to continue it, set OUTPUT_DIR to a new folder, or add --overwrite" in err
    assert (out / "model_final.pth").read_bytes() == final and (out / "config.yaml").read_text() == config
    assert (out / "eval" / f"{names['source_test']}.json").read_text() == evals  # nothing of the run touched
    tool.main(tool.parse_args(opts + ["SEED", "1", "--overwrite"]))
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["iteration"] for r in rows if "total_loss" in r] == [1, 2]  # one run's rows, not two
    assert not (out / "metrics.dropped.jsonl").exists()
    assert "SEED: 1" in (out / "config.yaml").read_text()
