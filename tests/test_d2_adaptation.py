"""lossmix.d2.adaptation: Adaptive Teacher + LossMix pairs on detectron2 models (tools/d2_train_net.py, DA.ENABLED).

Skipped, with the reason, where detectron2 is not installed (see README 'Using lossmix from detectron2').
"""
import copy
import importlib.util
import os

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (optional plug-in; see README "
                                         "'Using lossmix from detectron2')")

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import lossmix.d2 as lmd2  # noqa: E402
from lossmix.d2.adaptation import AdaptiveTeacherTrainer  # noqa: E402
from lossmix.d2.datasets import register_voc_folder  # noqa: E402
from lossmix.data.synthetic import SYNTHETIC_CLASSES, generate  # noqa: E402

from .helpers import REPO  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "d2", "synthetic_at_lossmix.yaml")
TINY = ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64", "INPUT.MIN_SIZE_TRAIN", "(80, 96)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.BASE_LR", "0.01", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "()",
        "DATASETS.TRAIN", "('d2da_source_train',)", "DATASETS.TRAIN_UNLABELED", "('d2da_clipart_train',)",
        "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "100"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2da")
    generate(str(root), seed=0, num_train=8, num_test=2, image_size=96, domains=("source", "clipart"))
    for domain in ("source", "clipart"):
        name = f"d2da_{domain}_train"
        if name not in DatasetCatalog.list():
            register_voc_folder(name, str(root / domain), "train", SYNTHETIC_CLASSES)
    return root


def _cfg(tmp_path, *opts):
    cfg = get_cfg()
    lmd2.add_lossmix_config(cfg)
    lmd2.add_da_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(TINY + ["OUTPUT_DIR", str(tmp_path), *opts])
    lmd2.config.validate_lossmix_config(cfg)
    return cfg


def _trainer(cfg, resume=False):
    torch.manual_seed(0)
    trainer = AdaptiveTeacherTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer


def _history(trainer, key):
    return [v for v, _ in trainer.storage.history(key).values()]


def test_adaptation_lowers_the_loss_and_runs_every_part(data, tmp_path):
    """16 iterations of AT + LossMix (8 burn-in, 8 adaptation): the loss falls; pseudo-label, discriminator and
    t x t parts all run."""
    trainer = _trainer(_cfg(tmp_path, "SOLVER.MAX_ITER", "16", "DA.BURN_IN_ITERS", "8", "DA.PSEUDO_THRESHOLD", "0.05"))
    trainer.train()
    losses = _history(trainer, "total_loss")
    assert len(losses) == 16 and all(np.isfinite(losses))
    assert np.mean(losses[4:8]) < 0.8 * np.mean(losses[:4]), losses  # burn-in
    sup = [a + b + c + d for a, b, c, d in zip(*(_history(trainer, k)[-8:] for k in (
        "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")))]
    assert np.mean(sup[-4:]) < np.mean(losses[:4]), sup
    assert len(_history(trainer, "loss_cls_pseudo")) == 8 and len(_history(trainer, "loss_dis_target")) == 8
    assert np.mean(_history(trainer, "pseudo_labels_per_image")) > 0
    assert trainer.recipe.mix_targets  # t x t on pseudo-labels
    assert all(v == 0 for v in _history(trainer, "loss_box_reg_pseudo"))  # DA.PSEUDO_BOX_WEIGHT 0


def test_teacher_follows_the_student_by_ema(data, tmp_path):
    trainer = _trainer(_cfg(tmp_path, "SOLVER.MAX_ITER", "3", "DA.BURN_IN_ITERS", "1", "DA.EMA_DECAY", "0.9"))
    module = trainer.module
    with EventStorage(0) as trainer.storage:
        for it in range(2):  # burn-in step, then the step that copies the teacher and updates it
            trainer.iter = it
            trainer.run_step()
        before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
        trainer.iter = 2
        trainer.run_step()
    student = module.student.state_dict()
    checked = 0
    for k, t in module.teacher.state_dict().items():
        if t.is_floating_point():
            expected = 0.9 * before[k] + 0.1 * student[k]
            torch.testing.assert_close(t, expected, rtol=0, atol=1e-6)
            checked += int(not torch.equal(before[k], student[k]))
    assert checked > 10  # the student moved: the check is not vacuous


def test_pseudo_labels_below_the_threshold_never_reach_the_student(data, tmp_path):
    trainer = _trainer(_cfg(tmp_path, "DA.MIX_PAIRS", "()", "LOSSMIX.MODE", "none", "DA.PSEUDO_THRESHOLD", "0.8",
                            "DA.BURN_IN_ITERS", "0"))  # target views from iteration 0
    recipe = trainer.recipe
    batch = next(iter(trainer.build_train_loader(trainer.cfg)))
    assert len(batch["target"]) == 2
    boxes = torch.tensor([[5.0, 5, 40, 40], [10, 12, 60, 50], [20, 20, 70, 80]])
    recipe.teacher_detections = lambda weak: [{"boxes": boxes, "scores": torch.tensor([0.9, 0.79999, 0.8]),
                                               "labels": torch.tensor([1, 2, 3])} for _ in weak]
    inputs = recipe.pseudo_label(batch["target"])
    for inp in inputs:
        inst = inp["instances"]
        torch.testing.assert_close(inst.gt_boxes.tensor, boxes[[0, 2]])
        assert inst.gt_classes.tolist() == [0, 2] and inst.gt_weights.tolist() == [1.0, 1.0]
        assert inst.gt_box_weights.tolist() == [0.0, 0.0] and inp["domain"] == 1.0


def test_weight_zero_pseudo_box_changes_no_loss(data, tmp_path):
    """Pseudo box weight 0 (the default): no box-regression loss from pseudo-labels, wherever their boxes are;
    the class of a pseudo-label of weight 0 changes no loss at all."""
    trainer = _trainer(_cfg(tmp_path, "DA.MIX_PAIRS", "()", "LOSSMIX.MODE", "none"))
    recipe, student = trainer.recipe, trainer.module.student
    rng = np.random.default_rng(0)
    views = [{"image": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)} for _ in range(2)]
    from lossmix.engine.pseudo_labels import build_pseudo_inputs

    def losses(boxes, scores, box_weight=0.0, classes=None):
        classes = np.arange(len(boxes)) % 3 if classes is None else np.array(classes)
        pseudo = [{"boxes": np.array(boxes, np.float32).reshape(-1, 4), "classes": classes,
                   "scores": np.array(scores, np.float32)} for _ in views]
        inputs = build_pseudo_inputs(views, pseudo, positions=list(range(len(views))), mixer=recipe.mixer, mix=False,
                                     weight_by_score=True, box_weight=box_weight, to_input=recipe.to_input)
        torch.manual_seed(5)
        with EventStorage():
            return {k: v.item() for k, v in student(inputs).items()}

    one = losses([[5, 5, 40, 40]], [1.0])
    assert one["loss_box_reg"] == 0 and one["loss_rpn_loc"] == 0 and one["loss_cls"] > 0
    moved = losses([[30, 20, 90, 70]], [1.0])
    assert moved["loss_box_reg"] == 0 and moved["loss_rpn_loc"] == 0
    assert losses([[5, 5, 40, 40]], [1.0], box_weight=1.0)["loss_rpn_loc"] > 0
    # a pseudo-box of weight 0 (score 0 with weight_by_score): its class changes nothing; with weight 1 it does
    two = [[5, 5, 40, 40], [50, 50, 90, 90]]
    zero, relabelled = losses(two, [1.0, 0.0], classes=[0, 1]), losses(two, [1.0, 0.0], classes=[0, 2])
    for k in zero:
        assert relabelled[k] == pytest.approx(zero[k], abs=1e-7), k
    assert losses(two, [1.0, 1.0], classes=[0, 2])["loss_cls"] != pytest.approx(
        losses(two, [1.0, 1.0], classes=[0, 1])["loss_cls"], abs=1e-6)


def test_gradient_reversal_flips_the_discriminators_gradient_into_the_backbone(data, tmp_path):
    trainer = _trainer(_cfg(tmp_path))
    recipe = trainer.recipe
    batch = next(iter(trainer.build_train_loader(trainer.cfg)))
    grads = {}
    for name, coeff in (("reversed", recipe.discriminator.grl_lambda), ("plain", None)):
        feats = recipe.backbone_features(batch["source"]).detach().requires_grad_(True)
        if coeff is None:  # the discriminator's layers without the reversal
            from lossmix.modeling.discriminator import domain_loss
            logits = recipe.discriminator.net(feats)
            loss = domain_loss(logits, torch.tensor([float(i["domain"]) for i in batch["source"]]))
        else:
            loss = recipe.discriminator_loss(feats, batch["source"])
        grads[name] = torch.autograd.grad(loss, feats)[0]
    assert recipe.dis_feature == "p4" and grads["plain"].abs().sum() > 0
    torch.testing.assert_close(grads["reversed"], -recipe.discriminator.grl_lambda * grads["plain"])


def test_resume_gives_the_uninterrupted_losses_teacher_included(data, tmp_path):
    opts = ["SOLVER.MAX_ITER", "6", "DA.BURN_IN_ITERS", "2", "DA.PSEUDO_THRESHOLD", "0.05", "SOLVER.CHECKPOINT_PERIOD", "3"]
    whole = _trainer(_cfg(tmp_path / "whole", *opts))
    whole.train()
    first = _trainer(_cfg(tmp_path / "split", *opts[:1], "3", *opts[2:]))  # stops after iteration 2 (checkpointed)
    first.train()
    torch.manual_seed(123)  # a fresh process's global random state: the checkpoint restores it
    rest = _trainer(_cfg(tmp_path / "split", *opts), resume=True)
    assert rest.start_iter == 3
    rest.train()
    for key in ("total_loss", "loss_cls_pseudo", "loss_dis_source"):
        a = [v for v, it in whole.storage.history(key).values()]
        b = [v for v, it in first.storage.history(key).values()] + [v for v, it in rest.storage.history(key).values()]
        np.testing.assert_allclose(b, a, rtol=1e-5, err_msg=key)
    for name, t in whole.module.teacher.state_dict().items():
        torch.testing.assert_close(rest.module.teacher.state_dict()[name], t, rtol=1e-5, atol=1e-6)


def test_tool_help_and_configs(data):
    spec = importlib.util.spec_from_file_location("d2_train_net", os.path.join(REPO, "tools", "d2_train_net.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    parser, have = tool._parser()
    assert have and "DA.ENABLED" in parser.format_help()
    folder = os.path.join(REPO, "configs", "d2")
    for name in ("synthetic_at.yaml", "synthetic_at_lossmix.yaml", "voc2clipart_at.yaml", "voc2clipart_at_lossmix.yaml",
                 "voc2watercolor_at.yaml", "voc2watercolor_at_lossmix.yaml"):
        cfg = get_cfg()
        lmd2.add_lossmix_config(cfg)
        lmd2.add_da_config(cfg)
        cfg.merge_from_file(os.path.join(folder, name))
        lmd2.config.validate_lossmix_config(cfg)
        assert cfg.DA.ENABLED, name
    # Adaptive Teacher's released VOC -> Watercolor2k / Clipart1k settings (faster_rcnn_R101_cross_{water,clipart}.yaml)
    assert (cfg.DA.EMA_DECAY, cfg.DA.PSEUDO_THRESHOLD, cfg.DA.DIS_LOSS_WEIGHT, cfg.DA.BURN_IN_ITERS,
            cfg.DA.DIS_FEATURE, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (0.9996, 0.7, 0.1, 1, "res4", 32, 0.01)
    from detectron2.modeling import build_model

    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    model = build_model(cfg)  # AT's R101 with res4 features, the weighted heads
    assert "res4" in model.backbone.output_shape() and type(model.roi_heads).__name__ == "LossMixStandardROIHeads"
