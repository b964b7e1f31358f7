"""Adaptive-Teacher domain adaptation with LossMix mixing: EMA, pseudo-labels, gradient reversal,
skipped pseudo box regression, two views, mix-pair weights, an end-to-end run and its resume."""
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from lossmix.config.setup import ConfigError, build_config
from lossmix.data.adaptation import DomainAdaptationCollate, TwoViewMapper, active_pairs, build_da_loader
from lossmix.data.augment import StrongAugment
from lossmix.data.catalog import DatasetCatalog
from lossmix.data.mapper import LossMixDatasetMapper
from lossmix.data.mixer import Mixer
from lossmix.engine.ema import ema_update, make_teacher
from lossmix.engine.pseudo_labels import build_pseudo_inputs, filter_pseudo_labels
from lossmix.engine.recipes.adaptive_teacher import AdaptiveTeacherRecipe
from lossmix.engine.run import run as train_da
from lossmix.modeling.discriminator import ImageDomainDiscriminator, capture_feature, grad_reverse

from .helpers import make_tiny_dataset, tiny_cfg


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on 2 shared cores a second spinning thread costs more than it gains."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tinyda"), num_train=8, num_test=2, domains=("source", "clipart"))


def _da_opts(names, **extra):
    opts = {
        "DA.ENABLED": True,
        "DATASETS.TRAIN_UNLABELED": (names["clipart_train"],),
        "DATASETS.TEST": (names["clipart_test"],),
        "DA.BURN_IN_ITERS": 2,
        "DA.EMA_DECAY": 0.9,  # so the teacher visibly follows the student in a few steps
        "DA.PSEUDO_THRESHOLD": 0.0,  # an untrained teacher's scores are low: keep its top detections anyway
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0,
        "MODEL.ROI_HEADS.DETECTIONS_PER_IMAGE": 10,
        "DA.WEIGHT_BY_SCORE": True,
        "LOSSMIX.MODE": "lossmix",
        "DA.MIX_PAIRS": ("source_source", "source_target", "target_target"),
        "SOLVER.MAX_ITER": 4,
    }
    opts.update(extra)
    return opts


# ---------------------------------------------------------------------------------------------- teacher
def test_ema_update_matches_the_formula_and_the_teacher_gets_no_gradients():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    student(torch.randn(5, 3))  # BatchNorm statistics move away from their initial values
    teacher = make_teacher(student)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student(torch.randn(5, 3))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    after, current = teacher.state_dict(), student.state_dict()
    for key, old in before.items():
        if old.is_floating_point():
            torch.testing.assert_close(after[key], 0.9 * old + 0.1 * current[key], rtol=0, atol=1e-6)
        else:  # num_batches_tracked: copied
            assert torch.equal(after[key], current[key])
    assert not torch.equal(after["0.weight"], current["0.weight"])
    (teacher(torch.randn(2, 3)).sum() + student(torch.randn(2, 3)).sum()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_pseudo_labels_keep_exactly_the_detections_at_or_above_the_threshold():
    detections = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 30], [1, 2, 3, 4], [7, 8, 40, 41]]),
        "scores": torch.tensor([0.95, 0.79, 0.8, 0.5]),
        "labels": torch.tensor([3, 1, 2, 5]),  # 1-based (torchvision)
    }
    out = filter_pseudo_labels(detections, 0.8)
    np.testing.assert_array_equal(out["boxes"], np.array([[0, 0, 10, 10], [1, 2, 3, 4]], np.float32))
    np.testing.assert_array_equal(out["classes"], np.array([2, 1]))  # 0-based
    np.testing.assert_allclose(out["scores"], [0.95, 0.8])
    assert out["boxes"].dtype == np.float32 and out["classes"].dtype == np.int64
    none = filter_pseudo_labels(detections, 0.99)
    assert none["boxes"].shape == (0, 4) and none["classes"].shape == (0,)


def test_gradient_reversal_flips_and_scales_the_gradient_into_the_features():
    torch.manual_seed(0)
    x = torch.randn(2, 3, requires_grad=True)
    w = torch.randn(2, 3)
    (grad_reverse(x, 0.5) * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * w)

    disc = ImageDomainDiscriminator(in_channels=8, grl_lambda=2.0)
    features = torch.randn(2, 8, 5, 6, requires_grad=True)
    disc.net(features).sum().backward()
    plain = features.grad.clone()
    features.grad = None
    logits = disc(features)
    assert logits.shape == (2, 1, 5, 6)
    logits.sum().backward()
    torch.testing.assert_close(features.grad, -2.0 * plain)
    assert plain.abs().sum() > 0


def test_capture_feature_hook_is_removed_on_exit():
    backbone = nn.Module()
    backbone.forward = lambda x: {"0": x, "1": x * 2}
    with capture_feature(backbone, "1") as got:
        backbone(torch.ones(1))
    backbone(torch.ones(1))
    assert len(got) == 1 and got[0].item() == 2 and not backbone._forward_hooks


# ---------------------------------------------------------------------------------------------- data
def test_weak_and_strong_views_share_geometry(names):
    cfg = tiny_cfg(names, "")
    dataset_dict = DatasetCatalog.get(names["source_train"])[0]
    mapper = TwoViewMapper(weak=LossMixDatasetMapper.from_config(cfg), strong=StrongAugment(jitter_prob=1.0),
                           keep_annotations=True)
    views = mapper.load(dataset_dict, np.random.default_rng(3))
    weak, strong = views["weak"], views["strong"]
    assert len(weak["boxes"]) > 0
    np.testing.assert_array_equal(weak["boxes"], strong["boxes"])
    np.testing.assert_array_equal(weak["classes"], strong["classes"])
    assert weak["image"].shape == strong["image"].shape and weak["image"].dtype == np.uint8
    assert not np.array_equal(weak["image"], strong["image"])
    unlabelled = TwoViewMapper.from_config(cfg).load(dataset_dict, np.random.default_rng(3))
    assert unlabelled["weak"]["boxes"].shape == (0, 4) and unlabelled["strong"]["boxes"].shape == (0, 4)


def _sample(value, boxes, position=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    out = {"image": np.full((40, 50, 3), value, np.uint8), "boxes": boxes, "classes": np.arange(len(boxes)),
           "weights": np.ones(len(boxes), np.float32)}
    if position is not None:
        out["position"] = position
    return out


def _lossmix_mixer(mode="lossmix"):
    return Mixer(mode=mode, method="mixup", alpha=1.0, prob=1.0)


def _collate(pairs, mode="lossmix"):
    sources = [_sample(10, [[1, 1, 20, 20], [5, 5, 30, 30]], 0), _sample(60, [[2, 3, 10, 12]], 1)]
    target = {"weak": _sample(200, []), "strong": _sample(220, []), "position": 0}
    collate = DomainAdaptationCollate(_lossmix_mixer(mode), source_pairs=pairs)
    return collate([{"source": s, "target": dict(target, position=j)} for j, s in enumerate(sources)])


def test_source_source_mixing_weighs_both_box_sets():
    first = _collate(("source_source",))["source"][0]
    t = first["target"]
    lam = float(t["lam"])
    assert 0 < lam < 1
    torch.testing.assert_close(t["weights"], torch.tensor([lam, lam, 1 - lam]))
    assert t["from_partner"].tolist() == [False, False, True] and first["domain"] == 0.0


def test_source_target_mixing_keeps_source_boxes_at_lambda_and_adds_no_target_boxes():
    out = _collate(("source_target",))
    for inp, n in zip(out["source"], (2, 1)):
        t = inp["target"]
        lam = float(t["lam"])
        assert 0 < lam < 1 and len(t["boxes"]) == n
        torch.testing.assert_close(t["weights"], torch.full((n,), lam))
        assert inp["domain"] == pytest.approx(1 - lam)  # the target share of the pixels
        expected = np.round(lam * 10 + (1 - lam) * 200) if n == 2 else np.round(lam * 60 + (1 - lam) * 200)
        assert abs(int(inp["image"][0, 0, 0]) - expected) <= 1
    assert len(out["target"]) == 2 and out["target"][0]["weak"]["target"]["boxes"].shape == (0, 4)


def test_mixing_off_is_plain_adaptive_teacher(names):
    out = _collate(("source_source", "source_target"), mode="none")
    for inp, n in zip(out["source"], (2, 1)):
        assert inp["target"]["weights"].tolist() == [1.0] * n and inp["domain"] == 0.0
    assert active_pairs(tiny_cfg(names, "", **{"DA.MIX_PAIRS": ("source_source",)})) == ()
    assert active_pairs(tiny_cfg(names, "", **{"DA.MIX_PAIRS": ("source_source",), "LOSSMIX.MODE": "lossmix"})) == (
        "source_source",)


@pytest.mark.parametrize("by_score", [True, False])
def test_target_target_mixing_weighs_pseudo_labels_by_lambda_times_score(by_score):
    views = [_sample(30, []), _sample(90, [])]
    pseudo = [
        {"boxes": np.array([[1, 1, 9, 9], [2, 2, 30, 20]], np.float32), "classes": np.array([0, 4]),
         "scores": np.array([0.9, 0.85], np.float32)},
        {"boxes": np.array([[3, 4, 25, 35]], np.float32), "classes": np.array([2]),
         "scores": np.array([0.8], np.float32)},
    ]
    inputs = build_pseudo_inputs(views, pseudo, positions=[0, 1], mixer=_lossmix_mixer(), mix=True,
                                 weight_by_score=by_score, box_weight=0.0)
    score = (lambda s: np.asarray(s)) if by_score else (lambda s: np.ones(len(s)))
    for j, inp in enumerate(inputs):
        t, other = inp["target"], 1 - j
        lam = float(t["lam"])
        assert 0 < lam < 1
        expected = np.concatenate([lam * score(pseudo[j]["scores"]), (1 - lam) * score(pseudo[other]["scores"])])
        np.testing.assert_allclose(t["weights"].numpy(), expected, rtol=1e-6)
        assert t["labels"].tolist() == (np.concatenate([pseudo[j]["classes"], pseudo[other]["classes"]]) + 1).tolist()
        assert t["box_weights"].tolist() == [0.0] * len(expected) and inp["domain"] == 1.0


# ---------------------------------------------------------------------------------------------- model
def test_pseudo_box_weight_zero_computes_no_box_regression(names, tmp_path, monkeypatch):
    cfg = tiny_cfg(names, tmp_path, **_da_opts(names, **{"LOSSMIX.MODE": "none"}))
    torch.manual_seed(0)
    trainer = AdaptiveTeacherRecipe.from_config(cfg, device=torch.device("cpu"))
    assert next(iter(build_da_loader(cfg, start_iter=0)))["target"] == []  # no target decoding during burn-in
    batch = next(iter(build_da_loader(cfg, start_iter=cfg.DA.BURN_IN_ITERS)))
    inputs = trainer.pseudo_label(batch["target"])
    assert sum(len(i["target"]["boxes"]) for i in inputs) > 0
    import lossmix.modeling.losses as losses

    calls = []
    real = losses.F.smooth_l1_loss
    monkeypatch.setattr(losses.F, "smooth_l1_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = trainer.detector_losses(inputs)
    assert got["loss_box_reg"].item() == 0 and got["loss_rpn_box_reg"].item() == 0
    assert calls == [] and got["loss_classifier"].item() > 0 and got["loss_objectness"].item() > 0

    trainer.pseudo_box_weight = 0.5  # the same pseudo-labels with box regression on
    got = trainer.detector_losses(trainer.pseudo_label(batch["target"]))
    assert calls and got["loss_box_reg"].item() > 0


# ---------------------------------------------------------------------------------------------- loop
def _rows(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["iteration"]: r for r in rows if "total_loss" in r}


@pytest.fixture(scope="module")
def full_run(names, tmp_path_factory):
    folder = tmp_path_factory.mktemp("da_full")
    return folder, train_da(tiny_cfg(names, folder, **_da_opts(names)))


def test_da_runs_end_to_end(names, full_run):
    folder, result = full_run
    assert result["summary"]["iterations"] == 4
    rows = _rows(folder)
    for it in (1, 2):  # burn-in: source only
        assert not any(k.endswith("_pseudo") or k.startswith("loss_dis") for k in rows[it])
    for it in (3, 4):
        assert rows[it]["loss_dis_source"] > 0 and rows[it]["loss_dis_target"] > 0
        assert rows[it]["loss_classifier_pseudo"] > 0 and rows[it]["pseudo_labels_per_image"] > 0
        # the tiny clipart training split is annotated: its pseudo-labels are scored (DA.PSEUDO_LABEL_METRICS auto)
        assert 0 <= rows[it]["pseudo_precision"] <= 1 and 0 <= rows[it]["pseudo_recall"] <= 1
        assert rows[it]["pseudo_tp"] + rows[it]["pseudo_fp"] == pytest.approx(2 * rows[it]["pseudo_labels_per_image"])
        assert "pseudo_recall/circle" in rows[it]
        assert rows[it]["loss_box_reg_pseudo"] == 0 and rows[it]["loss_rpn_box_reg_pseudo"] == 0
    with open(folder / "eval" / f"{names['clipart_test']}.json") as f:  # {role: result}
        saved = json.load(f)
    assert set(saved) == {"teacher", "student"} and saved["student"]["num_images"] == 2
    returned = result["results"][names["clipart_test"]]
    assert all(saved[role]["AP50"] == returned[role]["AP50"] for role in ("teacher", "student"))
    state = torch.load(folder / "model_final.pth", weights_only=True)
    assert {"model", "teacher", "discriminator", "optimizer", "scheduler", "iteration"} <= set(state)
    name = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(state["model"][name], state["teacher"][name])  # the teacher is its own EMA copy


def test_resume_restores_student_and_teacher(names, full_run, tmp_path):
    full_dir, _ = full_run
    train_da(tiny_cfg(names, tmp_path, **_da_opts(names, **{"SOLVER.MAX_ITER": 3})))  # cut after iteration 3
    result = train_da(tiny_cfg(names, tmp_path, **_da_opts(names)), resume=True)
    assert result["summary"]["iterations"] == 4 and result["summary"]["iterations_this_session"] == 1
    full, cut = _rows(full_dir), _rows(tmp_path)
    losses = [k for k in full[4] if k.startswith("loss") or k == "total_loss"]
    assert "loss_classifier_pseudo" in losses
    for key in losses:
        assert cut[4][key] == pytest.approx(full[4][key], rel=1e-5, abs=1e-7), key
    a = torch.load(full_dir / "model_final.pth", weights_only=True)
    b = torch.load(tmp_path / "model_final.pth", weights_only=True)
    for part in ("model", "teacher", "discriminator"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            torch.testing.assert_close(b[part][k], a[part][k], rtol=1e-5, atol=1e-6, msg=f"{part}.{k}")


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("key,value", [("DA.EMA_DECAY", "1.5"), ("DA.PSEUDO_THRESHOLD", "-0.1"),
                                       ("DA.UNSUP_LOSS_WEIGHT", "-1.0"), ("DA.MIX_PAIRS", "('source_sauce',)"),
                                       ("DA.ENABLED", "True"), ("DA.TARGET_LABELS", "truth"),
                                       ("DA.PSEUDO_LABEL_METRICS", "on"), ("DA.NO_PSEUDO_LABEL_WARN_ITERS", "-1")])
def test_da_config_values_are_validated(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config("", [key, value])


def test_da_loader_honours_on_bad_sample(tmp_path):
    from lossmix.data.adaptation import build_da_loader
    from lossmix.data.errors import BadSampleError

    own = make_tiny_dataset(tmp_path / "data", num_train=3, num_test=1, domains=("source", "clipart"))
    xml = tmp_path / "data" / "clipart" / "Annotations" / "clipart_train_00001.xml"
    xml.write_text("<annotation>")
    with pytest.raises(BadSampleError, match="malformed XML.*DATALOADER.ON_BAD_SAMPLE skip"):
        build_da_loader(tiny_cfg(own, tmp_path / "error", **_da_opts(own)))
    (tmp_path / "skip").mkdir()
    loader = build_da_loader(tiny_cfg(own, tmp_path / "skip", **_da_opts(own, **{"DATALOADER.ON_BAD_SAMPLE": "skip"})))
    assert len(loader.dataset.target) == 2  # the bad annotation file is left out, the run goes on
    rows = [json.loads(line) for line in open(tmp_path / "skip" / "bad_samples.jsonl")]
    assert [(r["file"], r["kind"], r["dataset"]) for r in rows] == [(str(xml), "malformed_xml", own["clipart_train"])]


def test_strong_source_augmentation_never_reaches_the_teachers_view(names, tmp_path):
    """INPUT.STRONG_AUGMENT_PROB strong-augments source images only: the target's weak view (the teacher's input)
    is the same with it at 1 as at 0, while the source images differ."""
    opts = _da_opts(names, **{"LOSSMIX.MODE": "none"})
    plain = next(iter(build_da_loader(tiny_cfg(names, tmp_path / "a", **opts), start_iter=2)))
    strong = next(iter(build_da_loader(tiny_cfg(names, tmp_path / "b", **opts, **{"INPUT.STRONG_AUGMENT_PROB": 1.0}),
                                       start_iter=2)))
    assert len(plain["target"]) == len(strong["target"]) > 0
    for p, s in zip(plain["target"], strong["target"]):
        assert torch.equal(p["weak"]["image"], s["weak"]["image"])
    assert all(p["image"].shape == s["image"].shape for p, s in zip(plain["source"], strong["source"]))
    assert not any(torch.equal(p["image"], s["image"]) for p, s in zip(plain["source"], strong["source"]))
