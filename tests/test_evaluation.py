"""Evaluation: VOC AP (both metrics, devkit matching rules) and COCO box AP on hand-computed cases,
plus a cross-check of the vectorised VOC evaluator against a slow loop written here."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from lossmix.data.catalog import DatasetCatalog
from lossmix.data.errors import BadSampleError
from lossmix.data.synthetic import SYNTHETIC_CLASSES
from lossmix.evaluation import COCOEvaluator, VOCDetectionEvaluator, evaluate_class, format_table, voc_ap
from lossmix.utils import comm

from .helpers import jsonl_rows, make_tiny_dataset, tiny_cfg


def _record(image_id, boxes=(), labels=(), difficult=None, size=100):
    difficult = difficult or [0] * len(boxes)
    return {
        "file_name": f"{image_id}.jpg", "height": size, "width": size, "image_id": image_id,
        "annotations": [
            {"bbox": list(b), "bbox_mode": 0, "category_id": c, "difficult": d}
            for b, c, d in zip(boxes, labels, difficult)
        ],
    }


def _output(boxes, scores, labels):
    return {"instances": {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }}


# ---------------------------------------------------------------- voc_ap


def test_voc_ap_hand_worked_curve():
    # npos = 4, ranked detections TP FP TP FP TP:
    #   recall    .25  .25  .5   .5   .75
    #   precision 1    1/2  2/3  1/2  3/5
    recall = np.array([0.25, 0.25, 0.5, 0.5, 0.75])
    precision = np.array([1.0, 0.5, 2 / 3, 0.5, 0.6])
    # Area: envelope 1 on (0, .25], 2/3 on (.25, .5], .6 on (.5, .75], 0 on (.75, 1]
    #   = .25 * 1 + .25 * 2/3 + .25 * .6 = 17/30
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(17 / 30, abs=1e-12)
    # 11-point: t in {0, .1, .2} -> 1; t in {.3, .4, .5} -> 2/3; t in {.6, .7} -> .6; t in {.8, .9, 1} -> 0
    #   = (3 + 2 + 1.2) / 11 = 6.2 / 11
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(6.2 / 11, abs=1e-12)


def test_voc_ap_07_recall_levels_detectron2_default_and_exact_option():
    # Issue 11 item 11. Recall exactly 3/10 at precision 1:
    #   exact levels k/10: t = 0, .1, .2, .3 reached -> 4/11
    #   default np.arange(0, 1.1, .1) (detectron2, py-faster-rcnn): its third level is 0.30000000000000004 > 0.3,
    #   so only t = 0, .1, .2 are reached -> 3/11
    recall, precision = np.array([3 / 10]), np.array([1.0])
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(3 / 11, abs=1e-12)
    assert voc_ap(recall, precision, use_07_metric=True, exact_recall_levels=True) == pytest.approx(4 / 11, abs=1e-12)
    # recall 0.6 (6 of 10 found, all first): exact 7/11, arange 6/11; away from those levels both agree
    recall = np.arange(1, 7) / 10
    precision = np.ones(6)
    assert voc_ap(recall, precision, True) == pytest.approx(6 / 11, abs=1e-12)
    assert voc_ap(recall, precision, True, exact_recall_levels=True) == pytest.approx(7 / 11, abs=1e-12)
    for exact in (False, True):
        assert voc_ap(np.array([0.55]), np.array([1.0]), True, exact_recall_levels=exact) == pytest.approx(6 / 11)


def test_voc_ap_empty_and_perfect():
    for metric in (False, True):
        assert voc_ap(np.zeros(0), np.zeros(0), metric) == 0.0
        assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), metric) == pytest.approx(1.0)


# ---------------------------------------------------------------- evaluate_class


def test_evaluate_class_devkit_rules():
    ground_truth = {
        "a": (np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], float), np.array([False, True, False])),
    }
    detections = [
        ("a", 0.5, [40, 0, 60, 10]),  # IoU exactly 0.5 with gt 3: not > 0.5 -> FP, gt 3 stays a miss
        ("a", 0.9, [0, 0, 10, 10]),  # gt 1 -> TP
        ("b", 0.6, [0, 0, 10, 10]),  # image without gt -> FP
        ("a", 0.8, [0, 0, 10, 9]),  # IoU .9 with gt 1, already detected -> FP (duplicate)
        ("a", 0.7, [20, 0, 30, 10]),  # difficult gt 2 -> ignored
    ]
    result = evaluate_class(detections, ground_truth)
    # ranked: TP, FP, ignored, FP, FP; npos = 2 (difficult not counted)
    assert result["npos"] == 2
    np.testing.assert_allclose(result["recall"], [0.5, 0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(result["precision"], [1, 1 / 2, 1 / 2, 1 / 3, 1 / 4])
    assert result["ap"] == pytest.approx(0.5)  # area: .5 * 1
    ap07 = evaluate_class(detections, ground_truth, use_07_metric=True)["ap"]
    assert ap07 == pytest.approx(6 / 11)  # t = 0 .. .5 reach precision 1


def test_evaluate_class_target_is_the_max_iou_gt():
    # gts A and B overlap (IoU .82); detections equal to A pick A as target even once A is taken.
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10]], float)
    dets = [("a", 0.9, [0, 0, 10, 10]), ("a", 0.8, [0, 0, 10, 10])]
    result = evaluate_class(dets, {"a": (boxes, np.array([False, False]))})
    np.testing.assert_allclose(result["precision"], [1, 0.5])  # second is a duplicate, not a match to B
    np.testing.assert_allclose(result["recall"], [0.5, 0.5])
    # A difficult: both detections are ignored, though they overlap B above the threshold; B is a miss.
    result = evaluate_class(dets, {"a": (boxes, np.array([True, False]))})
    assert result["npos"] == 1 and result["ap"] == 0.0
    np.testing.assert_allclose(result["recall"], [0, 0])


def test_evaluate_class_no_positives_is_nan():
    result = evaluate_class([("a", 0.9, [0, 0, 1, 1])], {"a": (np.zeros((1, 4)) + [0, 0, 5, 5], np.array([True]))})
    assert result["npos"] == 0 and math.isnan(result["ap"])


def test_evaluate_class_equal_scores_keep_input_order():
    gt = {"a": (np.array([[0, 0, 10, 10]], float), np.array([False]))}
    first_hit = evaluate_class([("a", 0.5, [0, 0, 10, 10]), ("a", 0.5, [50, 50, 60, 60])], gt)
    first_miss = evaluate_class([("a", 0.5, [50, 50, 60, 60]), ("a", 0.5, [0, 0, 10, 10])], gt)
    assert first_hit["ap"] == pytest.approx(1.0)
    assert first_miss["ap"] == pytest.approx(0.5)


# ---------------------------------------------------------------- VOCDetectionEvaluator

CLASSES = ["cat", "dog", "car"]


def test_evaluator_class_subset_and_unprocessed_image():
    dataset = [
        _record("i0", [[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], [0, 1, 2]),
        _record("i1", [[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1]),  # never processed: both gts are misses
    ]
    evaluator = VOCDetectionEvaluator(dataset, CLASSES, class_subset=["dog", "cat"])
    evaluator.process(
        [{"image_id": "i0"}],
        # cat found; dog: a FP ranked above the TP; car detections are ignored (not evaluated)
        [_output([[0, 0, 10, 10], [70, 70, 80, 80], [20, 20, 40, 40], [50, 50, 60, 60]],
                 [0.9, 0.8, 0.7, 0.6], [0, 1, 1, 2])],
    )
    result = evaluator.evaluate()
    # cat: npos 2, one TP first -> area .5;  dog: npos 2, FP then TP -> recall .5 at precision .5 -> .25
    assert list(result["per_class"]) == ["dog", "cat"]
    assert result["per_class"]["cat"] == pytest.approx(50.0)
    assert result["per_class"]["dog"] == pytest.approx(25.0)
    assert result["AP50"] == pytest.approx(37.5)
    assert result["metric"] == "area" and result["num_images"] == 2
    table = format_table(result)
    assert "dog" in table and "car" not in table and "mAP" in table and "37.50" in table


def test_evaluator_nan_class_left_out_of_mean():
    dataset = [_record("i0", [[0, 0, 10, 10], [30, 30, 50, 50]], [0, 2], difficult=[0, 1])]
    evaluator = VOCDetectionEvaluator(dataset, CLASSES, use_07_metric=True)
    evaluator.process([{"image_id": "i0"}], [_output([[0, 0, 10, 10], [60, 60, 70, 70]], [0.9, 0.8], [0, 1])])
    result = evaluator.evaluate()
    assert result["per_class"]["cat"] == pytest.approx(100.0)
    assert math.isnan(result["per_class"]["dog"])  # no gt at all
    assert math.isnan(result["per_class"]["car"])  # difficult gt only
    assert result["AP50"] == pytest.approx(100.0)
    assert result["metric"] == "voc07_11point"
    assert "n/a" in format_table(result)


def test_evaluator_rejects_bad_predictions():
    evaluator = VOCDetectionEvaluator([_record("i0", [[0, 0, 10, 10]], [0])], CLASSES)
    with pytest.raises(ValueError, match="'nope'"):
        evaluator.process([{"image_id": "nope"}], [_output([], [], [])])
    with pytest.raises(ValueError, match="labels"):
        evaluator.process([{"image_id": "i0"}], [_output([[0, 0, 1, 1]], [0.5], [3])])
    evaluator.process([{"image_id": "i0"}], [_output([], [], [])])
    with pytest.raises(ValueError, match="twice"):
        evaluator.process([{"image_id": "i0"}], [_output([], [], [])])
    evaluator.reset()
    evaluator.process([{"image_id": "i0"}], [_output([[0, 0, 10, 10]], [0.5], [0])])
    assert evaluator.evaluate()["per_class"]["cat"] == pytest.approx(100.0)


def test_evaluator_gathers_ranks(monkeypatch):
    dataset = [_record("i0", [[0, 0, 10, 10]], [0]), _record("i1", [[0, 0, 10, 10]], [0])]
    other_rank = VOCDetectionEvaluator(dataset, CLASSES)
    other_rank.process([{"image_id": "i1"}], [_output([[0, 0, 10, 10]], [0.9], [0])])
    evaluator = VOCDetectionEvaluator(dataset, CLASSES)
    evaluator.process([{"image_id": "i0"}], [_output([[0, 0, 10, 10]], [0.8], [0])])
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "all_gather", lambda obj: [obj, other_rank._predictions._per_image])
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    assert evaluator.evaluate()["per_class"]["cat"] == pytest.approx(100.0)  # would be 50 with one rank
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert evaluator.evaluate() == {}


# ---------------------------------------------------------------- cross-check with a slow loop


def _reference_ap(dets, gts, use_07_metric, thresh=0.5, exact=False):
    """Devkit rules as a plain loop; AP in exact fractions from its own formulation:
    area = sum over TPs of (1 / npos) * best precision at or after that TP; 11-point from the definition, at the
    levels k / 10 (``exact``) or, as detectron2 does, float recalls against np.arange(0, 1.1, 0.1)."""
    levels = [Fraction(k, 10) for k in range(11)] if exact else list(np.arange(0, 1.1, 0.1))
    npos = sum(not d for boxes in gts.values() for _, d in boxes)
    taken = set()
    tp = fp = 0
    points = []  # (recall, precision, is_tp) per ranked detection, ignored ones included; exact Fractions
    for image_id, _, box in sorted(dets, key=lambda d: -d[1]):
        best, best_j = -math.inf, None
        for j, (g, _) in enumerate(gts.get(image_id, [])):
            iw = min(box[2], g[2]) - max(box[0], g[0])
            ih = min(box[3], g[3]) - max(box[1], g[1])
            if iw > 0 and ih > 0:
                inter = iw * ih
                iou = inter / ((box[2] - box[0]) * (box[3] - box[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter)
            else:
                iou = 0.0
            if iou > best:
                best, best_j = iou, j
        is_tp = False
        if best > thresh:
            if gts[image_id][best_j][1]:
                pass
            elif (image_id, best_j) not in taken:
                taken.add((image_id, best_j))
                tp += 1
                is_tp = True
            else:
                fp += 1
        else:
            fp += 1
        points.append((Fraction(tp, npos), Fraction(tp, tp + fp) if tp + fp else Fraction(0), is_tp))
    if use_07_metric:
        ap = Fraction(0)
        for level in levels:
            reached = [p for r, p, _ in points if (r if exact else r.numerator / r.denominator) >= level]
            ap += (max(reached) if reached else 0) / Fraction(11)
    else:
        ap = sum(Fraction(1, npos) * max(p for _, p, _ in points[i:]) for i, (_, _, t) in enumerate(points) if t)
    return float(ap)


def _random_problem(rng, num_images=30):
    dataset, outputs, per_class_dets, per_class_gts = [], [], {}, {}
    for i in range(num_images):
        image_id = f"img{i}"
        boxes, labels, difficult = [], [], []
        for c in range(len(CLASSES)):
            for _ in range(rng.integers(0, 4)):
                x, y = rng.uniform(0, 80, size=2)
                w, h = rng.uniform(5, 30, size=2)
                boxes.append([x, y, x + w, y + h])
                labels.append(c)
                difficult.append(int(rng.random() < 0.2))
                per_class_gts.setdefault(c, {}).setdefault(image_id, []).append((boxes[-1], difficult[-1]))
        dataset.append(_record(image_id, boxes, labels, difficult))
        det_boxes, det_scores, det_labels = [], [], []
        for box, label in zip(boxes, labels):  # jittered copies: matches, near misses and duplicates
            for _ in range(rng.integers(0, 3)):
                det_boxes.append(list(np.asarray(box) + rng.normal(0, 3, size=4)))
                det_labels.append(label if rng.random() < 0.9 else int(rng.integers(len(CLASSES))))
        for _ in range(rng.integers(0, 4)):  # background
            x, y = rng.uniform(0, 80, size=2)
            det_boxes.append([x, y, x + rng.uniform(5, 30), y + rng.uniform(5, 30)])
            det_labels.append(int(rng.integers(len(CLASSES))))
        det_scores = list(np.round(rng.random(len(det_boxes)), 1))  # coarse scores: many ties
        # float32 round trip, as the evaluator sees the tensors
        det_boxes = [list(np.float32(b).astype(float)) for b in det_boxes]
        det_scores = [float(np.float32(s)) for s in det_scores]
        outputs.append(_output(det_boxes, det_scores, det_labels))
        for box, score, label in zip(det_boxes, det_scores, det_labels):
            per_class_dets.setdefault(label, []).append((image_id, score, box))
    return dataset, outputs, per_class_dets, per_class_gts


@pytest.mark.parametrize("use_07_metric, exact", [(False, False), (True, False), (True, True)])
def test_matches_slow_reference_on_random_data(use_07_metric, exact):
    rng = np.random.default_rng(0)
    for _ in range(3):
        dataset, outputs, per_class_dets, per_class_gts = _random_problem(rng)
        evaluator = VOCDetectionEvaluator(dataset, CLASSES, use_07_metric=use_07_metric, exact_recall_levels=exact)
        for record, output in zip(dataset, outputs):
            evaluator.process([record], [output])
        result = evaluator.evaluate()
        for c, name in enumerate(CLASSES):
            dets, gts = per_class_dets.get(c, []), per_class_gts.get(c, {})
            expected = _reference_ap(dets, gts, use_07_metric, exact=exact)
            assert result["per_class"][name] == pytest.approx(100 * expected, abs=1e-9), name
            arrays = {k: (np.array([b for b, _ in v]), np.array([d for _, d in v], bool)) for k, v in gts.items()}
            assert evaluate_class(dets, arrays, use_07_metric=use_07_metric,
                                  exact_recall_levels=exact)["ap"] == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- COCOEvaluator


def test_coco_perfect_predictions():
    dataset = [_record("i0", [[0, 0, 50, 50], [60, 10, 90, 30]], [0, 1]), _record("i1", [[5, 5, 20, 25]], [2])]
    evaluator = COCOEvaluator(dataset, CLASSES)
    evaluator.process(dataset, [_output([[0, 0, 50, 50], [60, 10, 90, 30]], [0.9, 0.8], [0, 1]),
                                _output([[5, 5, 20, 25]], [0.7], [2])])
    result = evaluator.evaluate()
    assert set(result) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert result["AP50"] == pytest.approx(100.0) and result["AP"] == pytest.approx(100.0)


def test_coco_one_of_two_found(capsys):
    # Two 100x100 gts (area 1e4 > 96^2: "large"), one exact detection. Recall .5 with precision 1:
    # 51 of COCO's 101 recall points (0, .01, ..., .5) have precision 1 -> AP = 51/101 at every IoU.
    dataset = [_record("i0", [[0, 0, 100, 100], [100, 100, 200, 200]], [0, 0], size=200)]
    evaluator = COCOEvaluator(dataset, CLASSES)
    evaluator.process(dataset, [_output([[0, 0, 100, 100]], [0.9], [0])])
    result = evaluator.evaluate()
    for key in ("AP", "AP50", "AP75", "APl"):
        assert result[key] == pytest.approx(100 * 51 / 101), key
    assert math.isnan(result["APs"]) and math.isnan(result["APm"])  # no gt of those sizes
    assert capsys.readouterr().out == ""  # pycocotools kept quiet


def test_coco_difficult_is_neither_tp_nor_fp():
    dataset = [_record("i0", [[0, 0, 40, 40], [50, 50, 90, 90]], [0, 0], difficult=[0, 1])]
    evaluator = COCOEvaluator(dataset, CLASSES)
    # The detection on the difficult box ranks first; counted as a FP it would halve the precision.
    evaluator.process(dataset, [_output([[50, 50, 90, 90], [0, 0, 40, 40]], [0.95, 0.9], [0, 0])])
    assert evaluator.evaluate()["AP50"] == pytest.approx(100.0)


def test_coco_no_predictions():
    dataset = [_record("i0", [[0, 0, 40, 40]], [0])]
    evaluator = COCOEvaluator(dataset, CLASSES)
    assert all(v == 0.0 for v in evaluator.evaluate().values())
    evaluator.process(dataset, [_output([], [], [])])
    assert evaluator.evaluate()["AP"] == 0.0
    with pytest.raises(ValueError, match="'x'"):
        evaluator.process([{"image_id": "x"}], [_output([], [], [])])


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("evaluation") / "data", num_train=4, num_test=2)


def test_test_time_bad_image_policy(names, tmp_path):
    from lossmix.data.catalog import MetadataCatalog
    from lossmix.engine.inference import evaluate_dataset
    from lossmix.modeling.build import build_detector

    meta = MetadataCatalog.get(names["source_test"])
    dicts = DatasetCatalog.get(names["source_test"])
    jpg = dicts[0]["file_name"]
    backup = open(jpg, "rb").read()
    try:
        open(jpg, "wb").write(backup[: len(backup) // 2])
        cfg = tiny_cfg(names, tmp_path)
        model = build_detector(cfg)
        with pytest.raises(BadSampleError, match=r"truncated JPEG.*\(TEST.ON_BAD_SAMPLE skip leaves bad files out"):
            evaluate_dataset(cfg, model, names["source_test"], torch.device("cpu"))
        cfg = tiny_cfg(names, tmp_path, **{"TEST.ON_BAD_SAMPLE": "skip"})
        result = evaluate_dataset(cfg, model, names["source_test"], torch.device("cpu"))
        assert result["num_images"] == len(dicts)  # still scored: the bad image's boxes count as misses
        assert [(r["file"], r["stage"]) for r in jsonl_rows(tmp_path / "bad_samples.jsonl")] == [(jpg, "test")]
    finally:
        open(jpg, "wb").write(backup)
    assert meta.thing_classes == list(SYNTHETIC_CLASSES)


def test_recall_levels_key_reaches_the_evaluator(names, tmp_path):
    from lossmix.engine.inference import build_evaluator

    assert not build_evaluator(tiny_cfg(names, tmp_path), names["source_test"])._exact_recall_levels
    cfg = tiny_cfg(names, tmp_path, **{"TEST.VOC07_RECALL_LEVELS": "exact"})
    assert build_evaluator(cfg, names["source_test"])._exact_recall_levels
