"""What the teacher's pseudo-labels are worth: VOC-style matching on hand-made cases, pooling over a log period,
the no-pseudo-label warning, the target annotations kept apart from the views, and the upper bound that gives
the student exactly the target's labels."""
import itertools
import json
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from lossmix.config.setup import build_config
from lossmix.data.adaptation import build_da_loader, target_ground_truth
from lossmix.data.catalog import DatasetCatalog
from lossmix.data.mixer import Mixer
from lossmix.engine.pseudo_labels import NoPseudoLabelWatch, PseudoLabelStats, count_matches, match_pseudo_labels
from lossmix.engine.recipes import Recipe, register_recipe
from lossmix.engine.recipes.adaptive_teacher import AdaptiveTeacherRecipe
from lossmix.engine.run import run
from lossmix.structures import to_xyxy

from .helpers import make_tiny_dataset, tiny_cfg


def _labels(rows):
    """[(class, box, score)] -> a pseudo-label dict."""
    return {"boxes": np.array([r[1] for r in rows], np.float32).reshape(-1, 4),
            "classes": np.array([r[0] for r in rows], np.int64), "scores": np.array([r[2] for r in rows], np.float32)}


# Image 1: ground truth A (class 0), B (class 1), C (class 0).
GT1 = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], np.float32),
       "classes": np.array([0, 1, 0])}
P1 = _labels([
    (0, [1, 0, 10, 10], 0.90),      # IoU 0.9 with A, but below the next one in score: a duplicate -> FP
    (0, [0, 0, 10, 10], 0.95),      # A exactly -> TP
    (0, [20, 20, 40, 40], 0.85),    # B's box with the wrong class -> FP (and B is missed)
    (0, [50, 50, 60, 54.99], 0.80),  # IoU 0.499 with C -> FP
    (0, [50, 50, 60, 56], 0.70),    # IoU 0.6 with C, still free -> TP
])
GT2 = {"boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int64)}  # image 2: no ground truth
P2 = _labels([(1, [0, 0, 5, 5], 0.60)])  # -> FP
GT3 = {"boxes": np.array([[0, 0, 10, 10]], np.float32), "classes": np.array([1])}  # image 3: no pseudo-label -> FN
P3 = _labels([])


def test_matching_is_greedy_by_score_one_gt_once_class_must_agree():
    assert match_pseudo_labels(P1, GT1["boxes"], GT1["classes"]).tolist() == [False, True, False, False, True]
    assert match_pseudo_labels(P2, GT2["boxes"], GT2["classes"]).tolist() == [False]
    assert match_pseudo_labels(P3, GT3["boxes"], GT3["classes"]).tolist() == []
    # class ignored: B's box with the wrong class becomes a TP; the duplicate and the IoU-0.499 box stay FPs
    agnostic = match_pseudo_labels(P1, GT1["boxes"], GT1["classes"], class_agnostic=True)
    assert agnostic.tolist() == [False, True, True, False, True]
    # exactly 0.5 is not a match (strictly above, as the VOC evaluator); just above is
    half = _labels([(0, [50, 50, 60, 55], 0.9)])
    assert match_pseudo_labels(half, GT1["boxes"], GT1["classes"]).tolist() == [False]
    assert match_pseudo_labels(half, GT1["boxes"], GT1["classes"], iou_threshold=0.49).tolist() == [True]


def test_per_class_counts_of_the_hand_made_case():
    tp, fp, fn = (sum(x) for x in zip(count_matches(P1, GT1["boxes"], GT1["classes"], 3),
                                      count_matches(P2, GT2["boxes"], GT2["classes"], 3),
                                      count_matches(P3, GT3["boxes"], GT3["classes"], 3)))
    assert tp.tolist() == [2, 0, 0] and fp.tolist() == [3, 1, 0] and fn.tolist() == [0, 2, 0]


def test_period_summary_pools_counts_over_its_steps_then_starts_again():
    stats = PseudoLabelStats(class_names=["circle", "square", "star"])
    stats.update([P1, P2], [GT1, GT2])  # step 1
    stats.update([P3], [GT3])  # step 2
    out = stats.summary()
    assert out["pseudo_labels_per_image"] == pytest.approx(6 / 3)
    assert out["pseudo_images_without_labels"] == pytest.approx(1 / 3)
    # scores 0.6 0.7 0.8 0.85 0.9 0.95: linear quartiles by hand
    assert out["pseudo_score_mean"] == pytest.approx(4.8 / 6)
    assert (out["pseudo_score_q25"], out["pseudo_score_median"], out["pseudo_score_q75"]) == pytest.approx(
        (0.725, 0.825, 0.8875), abs=1e-6)
    # pooled: TP 2, FP 4, FN 2 (the mean of the two steps' ratios would give recall (2/3 + 0) / 2)
    assert (out["pseudo_tp"], out["pseudo_fp"], out["pseudo_fn"]) == (2.0, 4.0, 2.0)
    assert out["pseudo_precision"] == pytest.approx(2 / 6) and out["pseudo_recall"] == pytest.approx(2 / 4)
    assert out["pseudo_precision_box"] == pytest.approx(3 / 6)  # + B's box with the wrong class
    assert out["pseudo_precision/circle"] == pytest.approx(2 / 5) and out["pseudo_recall/circle"] == 1.0
    assert out["pseudo_precision/square"] == 0.0 and out["pseudo_recall/square"] == 0.0
    assert math.isnan(out["pseudo_precision/star"]) and math.isnan(out["pseudo_recall/star"])
    assert stats.summary() == {}  # a new period: nothing recorded yet
    stats.update([P3, P3])  # no ground truth: counts and scores only
    out = stats.summary()
    assert out["pseudo_labels_per_image"] == 0 and out["pseudo_images_without_labels"] == 1.0
    assert math.isnan(out["pseudo_score_mean"]) and not any(k.startswith(("pseudo_precision", "pseudo_recall"))
                                                            for k in out)


def test_no_pseudo_label_warning_once_per_streak_naming_iteration_and_threshold(caplog):
    watch = NoPseudoLabelWatch(patience=3, threshold=0.8)
    with caplog.at_level(logging.WARNING, logger="lossmix.engine.pseudo_labels"):
        warned = [watch.update(it, n) for it, n in zip(range(10, 20), [0, 0, 0, 0, 0, 2, 0, 0, 1, 0])]
        assert warned == [False, False, True, False, False, False, False, False, False, False]
        warned = [watch.update(it, 0) for it in range(20, 23)]  # 19, 20, 21: a new streak of 3
        assert warned == [False, True, False]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("iteration 12: ") and "DA.PSEUDO_THRESHOLD = 0.8" in messages[0]
    assert "3 iterations in a row (since iteration 10)" in messages[0]
    assert messages[1].startswith("iteration 21: ") and "(since iteration 19)" in messages[1]
    never = NoPseudoLabelWatch(patience=0, threshold=0.8)
    assert not any(never.update(it, 0) for it in range(100))


# ------------------------------------------------------------------------------------- through the recipe
class FixedTeacher(nn.Module):
    """A teacher whose detections are given: ``(boxes, scores, labels (1-based))`` for every image, or a list of
    such per image of the batch."""

    def __init__(self, *per_image):
        super().__init__()
        per_image = per_image if isinstance(per_image[0], tuple) else (per_image,)
        self.detections = [{"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
                            "scores": torch.tensor(s, dtype=torch.float32),
                            "labels": torch.tensor(c, dtype=torch.int64)} for b, s, c in per_image]

    def forward(self, images):
        return [dict(self.detections[j % len(self.detections)]) for j in range(len(images))]


def _recipe(teacher, *, target_labels="pseudo", threshold=0.8, mix=False, warn_after=50):
    return AdaptiveTeacherRecipe(student=nn.Linear(1, 1), teacher=teacher, discriminator=nn.Linear(1, 1),
                                 device=torch.device("cpu"), mixer=Mixer(mode="lossmix" if mix else "none"),
                                 mix_targets=mix, burn_in=0, threshold=threshold, dis_weight=0.0,
                                 target_labels=target_labels, class_names=["a", "b", "c", "d", "e", "f"],
                                 warn_after=warn_after)


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tinypl"), num_train=4, num_test=1, domains=("source", "clipart"))


def _batch(names, tmp_path, **extra):
    opts = {"DA.ENABLED": True, "DATASETS.TRAIN_UNLABELED": (names["clipart_train"],), "DA.BURN_IN_ITERS": 0,
            "INPUT.MIN_SIZE_TRAIN": (80,), "INPUT.RANDOM_FLIP": 0.0}
    opts.update(extra)
    return next(iter(build_da_loader(tiny_cfg(names, tmp_path, **opts), start_iter=0)))


def _expected_truth(names, weak_input, flip):
    """The dataset's own annotations of a view, by hand: scaled per axis to the view's size, flipped if asked."""
    record = next(d for d in DatasetCatalog.get(names["clipart_train"]) if d["file_name"] == weak_input["file_name"])
    boxes = np.array([to_xyxy(a["bbox"], a.get("bbox_mode", 0)) for a in record["annotations"]], np.float64)
    h, w = weak_input["image"].shape[1:]
    boxes *= [w / record["width"], h / record["height"]] * 2
    if flip:
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    return boxes, np.array([a["category_id"] for a in record["annotations"]])


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_target_annotations_ride_apart_from_the_views_in_the_views_frame(names, tmp_path, flip):
    batch = _batch(names, tmp_path, **{"INPUT.RANDOM_FLIP": flip})
    assert len(batch["target"]) == 2
    for item in batch["target"]:
        boxes, classes = _expected_truth(names, item["weak"], flip)
        assert len(boxes) > 0
        np.testing.assert_allclose(item["ground_truth"]["boxes"], boxes, atol=1e-3)
        assert item["ground_truth"]["classes"].tolist() == classes.tolist()
        assert item["weak"]["target"]["boxes"].shape == (0, 4) and item["strong"]["boxes"].shape == (0, 4)
    off = _batch(names, tmp_path, **{"DA.PSEUDO_LABEL_METRICS": "off"})
    assert all("ground_truth" not in item for item in off["target"])


def _student_target_inputs(recipe, batch, monkeypatch):
    """The model inputs that reach the student's forward on the target views in one step."""
    seen = []
    monkeypatch.setattr(recipe, "detector_losses", lambda inputs: seen.append(inputs) or {"loss_x": torch.zeros(())})
    recipe.losses(batch, 1)
    assert len(seen) == 2  # the source forward, then the target views
    return seen[1]


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_upper_bound_feeds_the_student_exactly_the_target_labels(names, tmp_path, monkeypatch, flip):
    batch = _batch(names, tmp_path, **{"DA.TARGET_LABELS": "ground_truth", "DA.PSEUDO_LABEL_METRICS": "off",
                                       "INPUT.RANDOM_FLIP": flip})
    teacher = FixedTeacher([[1, 1, 30, 30]], [0.99], [2])  # a confident pseudo-label that must not be used
    recipe = _recipe(teacher, target_labels="ground_truth")
    inputs = _student_target_inputs(recipe, batch, monkeypatch)
    for item, inp in zip(batch["target"], inputs):
        boxes, classes = _expected_truth(names, item["weak"], flip)
        np.testing.assert_allclose(inp["target"]["boxes"].numpy(), boxes, atol=1e-3)
        assert inp["target"]["labels"].tolist() == (classes + 1).tolist()
        assert inp["target"]["weights"].tolist() == [1.0] * len(boxes)
        assert inp["target"]["box_weights"].tolist() == [0.0] * len(boxes)  # the box-weight policy is unchanged
        assert torch.equal(inp["image"], torch.from_numpy(item["strong"]["image"]).permute(2, 0, 1))
    # the teacher was still measured (its one box per image), against the same annotations
    assert recipe.period_metrics()["pseudo_labels_per_image"] == 1.0

    pseudo = _student_target_inputs(_recipe(teacher), batch, monkeypatch)  # the default: the teacher's labels
    for inp in pseudo:
        assert inp["target"]["boxes"].tolist() == [[1.0, 1.0, 30.0, 30.0]] and inp["target"]["labels"].tolist() == [2]


def test_upper_bound_labels_are_mixed_like_pseudo_labels(names, tmp_path, monkeypatch):
    batch = _batch(names, tmp_path, **{"DA.TARGET_LABELS": "ground_truth"})
    inputs = _student_target_inputs(_recipe(FixedTeacher([], [], []), target_labels="ground_truth", mix=True),
                                    batch, monkeypatch)
    for j, inp in enumerate(inputs):  # target x target: own labels at lambda, the partner's at 1 - lambda
        own, other = batch["target"][j]["ground_truth"], batch["target"][1 - j]["ground_truth"]
        lam = float(inp["target"]["lam"])
        assert 0 < lam < 1
        np.testing.assert_allclose(inp["target"]["weights"].numpy(),
                                   [lam] * len(own["classes"]) + [1 - lam] * len(other["classes"]), rtol=1e-6)
        assert inp["target"]["labels"].tolist() == [c + 1 for c in [*own["classes"], *other["classes"]]]


def test_target_annotations_are_read_only_when_asked_and_present(names, tmp_path):
    annotated = DatasetCatalog.get(names["clipart_train"])
    bare = [dict(d, annotations=[]) for d in annotated]

    def cfg(**extra):
        return tiny_cfg(names, tmp_path, **{"DA.ENABLED": True, "DATASETS.TRAIN_UNLABELED": (names["clipart_train"],),
                                            **extra})

    assert target_ground_truth(cfg(), annotated) and not target_ground_truth(cfg(), bare)
    assert not target_ground_truth(cfg(**{"DA.PSEUDO_LABEL_METRICS": "off"}), annotated)
    upper = cfg(**{"DA.TARGET_LABELS": "ground_truth", "DA.PSEUDO_LABEL_METRICS": "off"})
    assert target_ground_truth(upper, annotated)
    with pytest.raises(ValueError, match=r"DA.TARGET_LABELS = 'ground_truth' but DATASETS.TRAIN_UNLABELED \['tiny"):
        target_ground_truth(upper, bare)


def test_recipe_measures_the_teacher_and_warns_when_it_passes_nothing(names, tmp_path, monkeypatch, caplog):
    batch = _batch(names, tmp_path)
    truth = batch["target"][1]["ground_truth"]
    box, cls = truth["boxes"][0].tolist(), int(truth["classes"][0])
    teacher = FixedTeacher(([box], [0.9], [(cls + 1) % 6 + 1]),  # image 0: another image's box and class -> FP
                           ([box, box], [0.9, 0.5], [cls + 1, cls + 1]))  # image 1: a TP kept, a duplicate below 0.8
    recipe = _recipe(teacher, warn_after=2)
    recipe.pseudo_label(batch["target"], 5)
    recipe.pseudo_label(batch["target"], 6)
    out = recipe.period_metrics()
    n_gt = sum(len(t["ground_truth"]["classes"]) for t in batch["target"])
    assert out["pseudo_labels_per_image"] == 1.0 and out["pseudo_score_median"] == pytest.approx(0.9)
    assert (out["pseudo_tp"], out["pseudo_fp"], out["pseudo_fn"]) == (2.0, 2.0, 2.0 * n_gt - 2)
    assert out["pseudo_precision"] == 0.5 and out["pseudo_recall"] == pytest.approx(1 / n_gt)
    recipe.threshold = recipe.no_label_watch.threshold = 0.95  # now nothing passes
    with caplog.at_level(logging.WARNING, logger="lossmix.engine.pseudo_labels"):
        for it in range(7, 11):
            recipe.pseudo_label(batch["target"], it)
    assert [r.getMessage()[:13] for r in caplog.records] == ["iteration 8: "]
    assert recipe.period_metrics()["pseudo_images_without_labels"] == 1.0


# ------------------------------------------------------------------------------------- through the trainer
@register_recipe("test_period_counter")
class PeriodCounterRecipe(Recipe):
    """A one-weight recipe whose period metric counts the steps since the last logged row."""

    def __init__(self):
        self.model = nn.Linear(1, 1, bias=False)
        self.steps = 0

    @classmethod
    def from_config(cls, cfg, *, device):
        return cls()

    @property
    def checkpoint_modules(self):
        return {"model": self.model}

    @property
    def trainable(self):
        return self.model

    @staticmethod
    def build_loader(cfg, *, start_iter):
        return itertools.repeat(None)

    def losses(self, batch, iteration):
        self.steps += 1
        return {"loss_w": (self.model.weight ** 2).sum()}

    def period_metrics(self):
        steps, self.steps = self.steps, 0
        return {"steps_in_period": float(steps)}


def test_each_logged_row_carries_the_metrics_pooled_since_the_last_row(tmp_path):
    cfg = build_config("", ["RECIPE", "test_period_counter", "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu",
                            "SOLVER.MAX_ITER", "7", "LOG_PERIOD", "3", "SOLVER.CHECKPOINT_PERIOD", "0",
                            "MODEL.BACKBONE.NORM", "BN", "MODEL.BACKBONE.TRAINABLE_LAYERS", "5"])
    run(cfg)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["iteration"], r["steps_in_period"]) for r in rows if "steps_in_period" in r] == [(3, 3.0), (6, 3.0),
                                                                                                 (7, 1.0)]
