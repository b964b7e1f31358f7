"""LossMix RetinaNet and FCOS against torchvision's own RetinaNet / FCOS (losses, gradients, detections)."""
import copy

import pytest
import torch
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.retinanet import RetinaNet

from lossmix.modeling.build import _anchor_generator, build_fpn_backbone, detector_transform
from lossmix.modeling.fcos import LossMixFCOS
from lossmix.modeling.retinanet import LossMixRetinaNet

NUM_CLASSES = 3
DETECTORS = {
    # name: (torchvision class, ours, anchor sizes per level (strides 16, 32, 64), aspect ratios, loss keys)
    "retinanet": (RetinaNet, LossMixRetinaNet, ((16,), (32,), (64,)), ((0.5, 1.0, 2.0),),
                  ("classification", "bbox_regression")),
    "fcos": (FCOS, LossMixFCOS, ((16,), (32,), (64,)), ((1.0,),), ("classification", "bbox_regression", "bbox_ctrness")),
}


def _models(name, **settings):
    """``(torchvision's model, ours)`` with the same parameters and the same (pre-resized) transform."""
    stock_cls, ours_cls, sizes, ratios, _ = DETECTORS[name]
    torch.manual_seed(0)
    body, levels = build_fpn_backbone(backbone="R18-FPN", norm="GN", trainable_layers=5, returned_layers=(3, 4),
                                      fpn_channels=32)
    stock = stock_cls(copy.deepcopy(body), NUM_CLASSES, anchor_generator=_anchor_generator(sizes, ratios, levels))
    ours = ours_cls(body, NUM_CLASSES, anchor_generator=_anchor_generator(sizes, ratios, levels), **settings)
    with torch.no_grad():  # classes apart from the start, so that a label matters to the loss
        stock.head.classification_head.cls_logits.bias.view(-1, NUM_CLASSES).add_(torch.tensor([0.0, 1.0, 2.0]))
    ours.load_state_dict(stock.state_dict())
    for model in (stock, ours):
        model.transform = detector_transform((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        model.train()
    return stock, ours


def _batch():
    """Three images: boxes of all sizes (a 3-px one), boxes on every border, overlapping boxes; one image without boxes."""
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 112, 144, generator=g), torch.rand(3, 128, 96, generator=g), torch.rand(3, 96, 128, generator=g)]
    targets = [
        {"boxes": torch.tensor([[0.0, 0, 60, 50], [70, 20, 144, 112], [30, 40, 33, 43], [10, 60, 100, 110]]),
         "labels": torch.tensor([1, 2, 3, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[40.0, 30, 128, 96], [50, 35, 110, 90], [0, 70, 20, 96]]),
         "labels": torch.tensor([3, 3, 1])},
    ]
    return images, targets


def _zero_based(targets):
    return [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets]


def _losses_and_grads(model, images, targets, keys):
    """Losses (torchvision's names) and every parameter's gradient of their sum."""
    model.zero_grad()
    losses = model(images, copy.deepcopy(targets))
    losses = {k[len("loss_"):] if k.startswith("loss_") else k: v for k, v in losses.items()}
    assert sorted(losses) == sorted(keys)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize("name", DETECTORS)
def test_all_ones_weights_equal_torchvision_losses_and_gradients(name):
    stock, ours = _models(name)
    keys = DETECTORS[name][4]
    images, targets = _batch()
    expected, expected_grads = _losses_and_grads(stock, images, _zero_based(targets), keys)
    for k in keys:
        assert expected[k].item() > 0, k  # every loss is exercised
    weighted = [{**t, "weights": torch.ones(len(t["boxes"]))} for t in targets]
    for inputs in (weighted, targets):  # explicit weights 1, and absent weights (= 1)
        got, grads = _losses_and_grads(ours, images, inputs, keys)
        for k in keys:
            assert got[k].item() == pytest.approx(expected[k].item(), rel=1e-6, abs=1e-7), k
        assert grads.keys() == expected_grads.keys() and len(grads) > 10
        for n, grad in grads.items():
            torch.testing.assert_close(grad, expected_grads[n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("name", DETECTORS)
def test_weight_c_everywhere_scales_every_loss_by_c(name):
    c = 0.3
    stock, ours = _models(name, bg_weight=c)
    keys = DETECTORS[name][4]
    images, targets = _batch()
    expected, _ = _losses_and_grads(stock, images, _zero_based(targets), keys)
    got, _ = _losses_and_grads(ours, images, [{**t, "weights": torch.full((len(t["boxes"]),), c)} for t in targets], keys)
    for k in keys:
        assert got[k].item() == pytest.approx(c * expected[k].item(), rel=1e-5, abs=1e-7), k


@pytest.mark.parametrize("name", DETECTORS)
def test_weight_zero_instance_label_changes_nothing(name):
    _, ours = _models(name)
    keys = DETECTORS[name][4]
    images, targets = _batch()
    targets[0]["weights"] = torch.tensor([1.0, 0.0, 1.0, 1.0])
    base, base_grads = _losses_and_grads(ours, images, targets, keys)
    relabelled = copy.deepcopy(targets)
    relabelled[0]["labels"] = torch.tensor([1, 3, 3, 2])
    other, other_grads = _losses_and_grads(ours, images, relabelled, keys)
    for k in keys:
        assert other[k].item() == base[k].item(), k
    for n in base_grads:
        assert torch.equal(other_grads[n], base_grads[n]), n
    # and with weight 1 the same relabelling does change the classification loss
    for t in (targets, relabelled):
        t[0]["weights"] = torch.ones(4)
    assert _losses_and_grads(ours, images, targets, keys)[0]["classification"].item() != pytest.approx(
        _losses_and_grads(ours, images, relabelled, keys)[0]["classification"].item(), rel=1e-6)


@pytest.mark.parametrize("name", DETECTORS)
def test_box_weights_zero_leave_classification_alone(name):
    """Pseudo-labels with box weight 0: box losses (and FCOS's centre-ness) are 0, classification is unchanged."""
    stock, ours = _models(name)
    keys = DETECTORS[name][4]
    images, targets = _batch()
    expected, _ = _losses_and_grads(stock, images, _zero_based(targets), keys)
    got, _ = _losses_and_grads(ours, images, [{**t, "box_weights": torch.zeros(len(t["boxes"]))} for t in targets], keys)
    assert got["classification"].item() == pytest.approx(expected["classification"].item(), rel=1e-6)
    for k in keys[1:]:
        assert got[k].item() == 0, k


@pytest.mark.parametrize("name", DETECTORS)
def test_interpolate_equals_lambda_mix_of_torchvision_losses(name):
    stock, ours = _models(name, formulation="interpolate")
    keys = DETECTORS[name][4]
    images, targets = _batch()
    boxes, labels = targets[0]["boxes"], targets[0]["labels"]
    partner = torch.tensor([False, True, False, True])
    lam = 0.3
    mixed = {"boxes": boxes, "labels": labels, "lam": torch.tensor(lam), "from_partner": partner}
    loss_a, _ = _losses_and_grads(stock, images[:1], [{"boxes": boxes[~partner], "labels": labels[~partner] - 1}], keys)
    loss_b, _ = _losses_and_grads(stock, images[:1], [{"boxes": boxes[partner], "labels": labels[partner] - 1}], keys)
    got, _ = _losses_and_grads(ours, images[:1], [mixed], keys)
    for k in keys:
        expected = lam * loss_a[k] + (1 - lam) * loss_b[k]
        assert got[k].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7), k
        assert got[k].item() != pytest.approx(loss_a[k].item(), rel=1e-3), k  # both terms matter


@pytest.mark.parametrize("name", DETECTORS)
def test_detections_are_torchvision_s_with_one_based_labels(name):
    stock, ours = _models(name)
    images, _ = _batch()
    with torch.no_grad():
        expected = stock.eval()(images)
        got = ours.eval()([(im * 255).round().to(torch.uint8) for im in images])  # the loader's uint8 images
        again = ours(images)
    for e, g in zip(expected, again):
        assert len(e["boxes"]) > 0
        assert torch.equal(g["boxes"], e["boxes"]) and torch.equal(g["scores"], e["scores"])
        assert torch.equal(g["labels"], e["labels"] + 1)
    assert [len(g["boxes"]) for g in got] and all(g["labels"].min() >= 1 for g in got if len(g["labels"]))


def test_one_stage_loss_functions_on_hand_computed_cases():
    import math

    from lossmix.modeling.losses import weighted_centerness_loss, weighted_giou_loss, weighted_sigmoid_focal_loss

    # focal at logit 0 (p = 1/2): positive alpha (1/4) * (1/2)^2 * ln 2, negative (3/4) * (1/2)^2 * ln 2
    logits = torch.zeros(2, 2, requires_grad=True)
    loss = weighted_sigmoid_focal_loss(logits, torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([2.0, 0.0]), 1)
    assert loss.item() == pytest.approx(2 * (1 / 16 + 3 / 16) * math.log(2))
    loss.backward()
    assert torch.all(logits.grad[1] == 0) and torch.all(logits.grad[0] != 0)  # a weight-0 row has no gradient
    # GIoU of two unit boxes one unit apart: IoU 0, enclosing 3, union 2 -> 1 - (0 - 1/3) = 4/3
    pred = torch.tensor([[0.0, 0, 1, 1], [0, 0, 2, 2]])
    gt = torch.tensor([[2.0, 0, 3, 1], [0, 0, 2, 2]])
    assert weighted_giou_loss(pred, gt, torch.tensor([0.5, 1.0]), 2).item() == pytest.approx(0.5 * 4 / 3 / 2)
    # centre-ness BCE at logit 0 against 0.5: ln 2 per location
    assert weighted_centerness_loss(torch.zeros(3), torch.full((3,), 0.5), torch.tensor([2.0, 1.0, 0.0]), 0).item() \
        == pytest.approx(3 * math.log(2))  # normaliser 0 counts as 1


def test_adaptive_teacher_trains_a_retinanet(tmp_path):
    """The student-teacher recipe needs nothing Faster-R-CNN-specific: pseudo-labels come from the teacher's
    detections (1-based labels) and weigh the student's focal loss."""
    from lossmix.engine.run import run
    from tests.helpers import make_tiny_dataset, tiny_cfg

    names = make_tiny_dataset(tmp_path / "data", num_train=4, num_test=1, domains=("source", "clipart"))
    cfg = tiny_cfg(names, tmp_path / "run", **{
        "MODEL.META_ARCHITECTURE": "RetinaNet", "DA.ENABLED": True, "DATASETS.TRAIN_UNLABELED": (names["clipart_train"],),
        "DATASETS.TEST": (names["clipart_test"],), "DA.BURN_IN_ITERS": 1, "DA.PSEUDO_THRESHOLD": 0.0,
        "MODEL.RETINANET.SCORE_THRESH_TEST": 0.0, "MODEL.RETINANET.DETECTIONS_PER_IMAGE": 5, "LOSSMIX.MODE": "lossmix",
        "DA.MIX_PAIRS": ("source_source", "source_target", "target_target"), "SOLVER.MAX_ITER": 3,
        "SOLVER.CHECKPOINT_PERIOD": 100})
    result = run(cfg)
    rows = [__import__("json").loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    adapted = [r for r in rows if "loss_classification_pseudo" in r]
    assert adapted and all(r["pseudo_labels_per_image"] == 5 for r in adapted)
    assert all(r["loss_bbox_regression_pseudo"] == 0 for r in adapted)  # pseudo box weight 0 by default
    assert set(result["results"][names["clipart_test"]]) == {"teacher", "student"}


def test_attribution_refuses_one_stage_run_folders(tmp_path):
    import importlib.util

    from tests.helpers import REPO, tiny_cfg

    spec = importlib.util.spec_from_file_location("attribution_tool", f"{REPO}/tools/attribution.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = tiny_cfg({"source_train": "unused", "source_test": "unused"}, "", **{"MODEL.META_ARCHITECTURE": "FCOS"})
    (tmp_path / "config.yaml").write_text(cfg.dump())
    (tmp_path / "model_final.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="holds a FCOS: attribution explains a Faster R-CNN ROI-head score"):
        tool.load_run(str(tmp_path), torch.device("cpu"))


def test_retinanet_head_norm_from_config():
    """``MODEL.RETINANET.NORM ""`` builds torchvision's RetinaNet parameter for parameter (same random stream);
    "GN" puts GroupNorm(32) after each of the head's eight tower convs (torchvision's v2 head); anything else is a
    one-line error naming the key."""
    import torch.nn as nn
    from torchvision.models.detection.retinanet import RetinaNetHead

    from lossmix.config import get_cfg
    from lossmix.modeling.build import backbone_kwargs, build_detector

    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.BACKBONE.NAME", "R18-FPN",
                         "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_HEADS.NUM_CLASSES", "4"])
    torch.manual_seed(0)
    ours = build_detector(cfg)
    torch.manual_seed(0)
    body, levels = build_fpn_backbone(**backbone_kwargs(cfg))
    m = cfg.MODEL.ANCHOR_GENERATOR
    stock = RetinaNet(body, 4, anchor_generator=_anchor_generator(m.SIZES, m.ASPECT_RATIOS, levels))
    expected = stock.state_dict()
    assert ours.state_dict().keys() == expected.keys()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, expected[key]), key

    cfg.MODEL.RETINANET.NORM = "GN"
    gn = build_detector(cfg)
    norms = [mod for mod in gn.head.modules() if isinstance(mod, nn.GroupNorm)]
    assert len(norms) == 8 and all(n.num_groups == 32 and n.num_channels == 64 for n in norms)
    anchors_per_location = gn.anchor_generator.num_anchors_per_location()[0]
    v2 = RetinaNetHead(64, anchors_per_location, 4, norm_layer=lambda c: nn.GroupNorm(32, c))
    assert gn.head.state_dict().keys() == v2.state_dict().keys()
    assert not any(n.startswith("head.") for n in expected if "norm" in n)  # the stock head has none

    cfg.MODEL.RETINANET.NORM = "BN"
    with pytest.raises(KeyError, match="MODEL.RETINANET.NORM = 'BN' is not registered; allowed: '', GN"):
        build_detector(cfg)
