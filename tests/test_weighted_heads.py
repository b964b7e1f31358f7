"""The weighted RPN / ROI heads against torchvision's own losses."""
import copy

import pytest
import torch
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
from torchvision.models.detection.image_list import ImageList

from lossmix.modeling.build import make_detector, make_weighted
from lossmix.modeling.losses import weighted_classification_loss, weighted_objectness_loss

LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


@pytest.fixture(scope="module")
def stock():
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=4, min_size=160, max_size=200)
    model.train()
    return model


def _batch():
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 150, 190, generator=g), torch.rand(3, 160, 170, generator=g)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12, 80, 90], [60, 40, 150, 140], [5, 100, 60, 148]]), "labels": torch.tensor([1, 2, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return images, targets


def _losses(model, images, targets, seed=123):
    torch.manual_seed(seed)
    return model(images, copy.deepcopy(targets))


def test_all_ones_weights_equal_torchvision(stock):
    ours = make_weighted(copy.deepcopy(stock))
    images, targets = _batch()
    expected = _losses(stock, images, targets)
    for t in targets:
        t["weights"] = torch.ones(len(t["boxes"]))
    got = _losses(ours, images, targets)
    for k in LOSS_KEYS:
        assert expected[k].item() > 0 or k == "loss_rpn_box_reg"
        assert got[k].item() == pytest.approx(expected[k].item(), abs=1e-6, rel=1e-6), k
    # absent weights mean 1
    got = _losses(ours, images, [{k: v for k, v in t.items() if k != "weights"} for t in targets])
    for k in LOSS_KEYS:
        assert got[k].item() == pytest.approx(expected[k].item(), abs=1e-6, rel=1e-6), k


def test_weights_scale_losses(stock):
    """Halving every weight (background too) halves every loss exactly."""
    ours = make_weighted(copy.deepcopy(stock), bg_weight=0.5)
    images, targets = _batch()
    expected = _losses(stock, images, targets)
    for t in targets:
        t["weights"] = torch.full((len(t["boxes"]),), 0.5)
    got = _losses(ours, images, targets)
    for k in LOSS_KEYS:
        assert got[k].item() == pytest.approx(0.5 * expected[k].item(), abs=1e-6, rel=1e-5), k


def test_zero_weight_box_contributes_nothing(stock):
    """With weight 0, a box's class label cannot change any loss, and its box-weight 0 removes its regression."""
    ours = make_weighted(copy.deepcopy(stock))
    images, targets = _batch()
    targets[0]["weights"] = torch.tensor([1.0, 0.0, 1.0])
    base = _losses(ours, images, targets)
    relabelled = copy.deepcopy(targets)
    relabelled[0]["labels"] = torch.tensor([1, 3, 3])
    other = _losses(ours, images, relabelled)
    for k in LOSS_KEYS:
        assert other[k].item() == pytest.approx(base[k].item(), abs=1e-7), k
    with_weight = copy.deepcopy(targets)
    with_weight[0]["weights"] = torch.tensor([1.0, 1.0, 1.0])
    assert _losses(ours, images, with_weight)["loss_classifier"].item() != pytest.approx(base["loss_classifier"].item())


def test_zero_weight_sample_has_zero_gradient():
    logits = torch.randn(5, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 1])
    weights = torch.tensor([1.0, 0.0, 1.0, 0.5, 1.0])
    weighted_classification_loss(logits, labels, weights).backward()
    assert torch.all(logits.grad[1] == 0)
    assert torch.all(logits.grad[[0, 2, 3, 4]].abs().sum(dim=1) > 0)
    obj = torch.randn(4, requires_grad=True)
    weighted_objectness_loss(obj, torch.tensor([1.0, 0, 1, 0]), torch.tensor([0.0, 1, 1, 1])).backward()
    assert obj.grad[0] == 0 and torch.all(obj.grad[1:] != 0)


def test_box_weight_zero_skips_box_loss(stock, monkeypatch):
    """Pseudo-labels with box weight 0: box losses are exactly 0 and smooth-L1 is never evaluated."""
    ours = make_weighted(copy.deepcopy(stock))
    images, targets = _batch()
    targets[0]["box_weights"] = torch.zeros(3)
    calls = []
    import lossmix.modeling.losses as losses

    real = losses.F.smooth_l1_loss
    monkeypatch.setattr(losses.F, "smooth_l1_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = _losses(ours, images, targets)
    assert got["loss_box_reg"].item() == 0 and got["loss_rpn_box_reg"].item() == 0
    assert calls == []
    assert got["loss_classifier"].item() > 0


def _deterministic(model):
    """Every anchor / proposal sampled, no 'between thresholds' zone: losses become deterministic."""
    for head in (model.rpn, model.roi_heads):
        head.fg_bg_sampler.batch_size_per_image = 10**7
        head.fg_bg_sampler.positive_fraction = 1.0
    m = model.rpn.proposal_matcher
    m.low_threshold = m.high_threshold = 0.5
    return model


def test_interpolate_equals_lambda_mix_of_losses(stock):
    stock = _deterministic(copy.deepcopy(stock))
    ours = _deterministic(make_weighted(copy.deepcopy(stock), formulation="interpolate"))
    images, targets = _batch()
    boxes_a = torch.tensor([[10.0, 12, 80, 90], [60, 40, 150, 140]])
    boxes_b = torch.tensor([[5.0, 100, 60, 148]])
    lam = 0.3
    t_a = {"boxes": boxes_a, "labels": torch.tensor([1, 2])}
    t_b = {"boxes": boxes_b, "labels": torch.tensor([3])}
    mixed = {
        "boxes": torch.cat([boxes_a, boxes_b]),
        "labels": torch.tensor([1, 2, 3]),
        "lam": torch.tensor(lam),
        "from_partner": torch.tensor([False, False, True]),
    }
    with torch.no_grad():
        image_list, _ = stock.transform(images[:1], [copy.deepcopy(mixed)])
        scale = image_list.tensors.shape[-1] / images[0].shape[-1]
        features = stock.backbone(image_list.tensors)
    scaled = lambda t: {**t, "boxes": t["boxes"] * scale}  # noqa: E731  (transform resized the image)
    t_a, t_b, mixed = scaled(t_a), scaled(t_b), scaled(mixed)

    # RPN: the same anchors and objectness; labelled against A, against B, and interpolated
    _, rpn_a = stock.rpn(image_list, features, [t_a])
    _, rpn_b = stock.rpn(image_list, features, [t_b])
    _, rpn_mix = ours.rpn(image_list, features, [mixed])
    for k in ("loss_objectness", "loss_rpn_box_reg"):
        expected = lam * rpn_a[k] + (1 - lam) * rpn_b[k]
        assert rpn_mix[k].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6), k

    # ROI heads: the same proposal set (ours appends A and B's boxes; give stock the other set)
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(40, 2, generator=g) * 120
    props = torch.cat([xy, xy + 10 + torch.rand(40, 2, generator=g) * 60], dim=1)
    shapes = image_list.image_sizes
    _, roi_a = stock.roi_heads(features, [torch.cat([props, t_b["boxes"]])], shapes, [t_a])
    _, roi_b = stock.roi_heads(features, [torch.cat([props, t_a["boxes"]])], shapes, [t_b])
    _, roi_mix = ours.roi_heads(features, [props], shapes, [mixed])
    for k in ("loss_classifier", "loss_box_reg"):
        expected = lam * roi_a[k] + (1 - lam) * roi_b[k]
        assert roi_mix[k].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6), k


def test_image_without_boxes_trains(stock):
    ours = make_weighted(copy.deepcopy(stock))
    images, targets = _batch()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "weights": torch.zeros(0)}] * 2
    losses = _losses(ours, images, empty)
    assert losses["loss_box_reg"].item() == 0 and losses["loss_rpn_box_reg"].item() == 0
    assert losses["loss_objectness"].item() > 0 and losses["loss_classifier"].item() > 0
    sum(losses.values()).backward()


def test_torchvision_rpn_call_flow_the_override_relies_on():
    """WeightedRPN relies on torchvision 0.29 handing assign_targets_to_anchors' first output, untouched and
    positionally, to compute_loss (setup.py pins the minor version); a change there must fail here."""
    import ast
    import inspect
    import textwrap

    import torchvision
    from torchvision.models.detection.rpn import RegionProposalNetwork

    from lossmix.modeling.rpn import AnchorAssignment, WeightedRPN

    assert torchvision.__version__.split("+")[0].rsplit(".", 1)[0] == "0.29"
    params = list(inspect.signature(RegionProposalNetwork.compute_loss).parameters)
    assert params == ["self", "objectness", "pred_bbox_deltas", "labels", "regression_targets"]
    assert list(inspect.signature(WeightedRPN.compute_loss).parameters)[3] == "assignments"
    assert list(inspect.signature(RegionProposalNetwork.assign_targets_to_anchors).parameters) == [
        "self", "anchors", "targets"]
    tree = ast.parse(textwrap.dedent(inspect.getsource(RegionProposalNetwork.forward)))
    assigned = calls = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                getattr(node.value.func, "attr", "") == "assign_targets_to_anchors":
            assigned = node.targets[0].elts[0].id  # the first output's name
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "compute_loss":
            calls = node
    assert assigned == "labels" and calls is not None and not calls.keywords
    assert [getattr(a, "id", None) for a in calls.args][2] == assigned  # passed on untouched, third positional
    # and at run time the override receives its AnchorAssignments there
    seen = []
    real = WeightedRPN.compute_loss

    def spy(self, objectness, deltas, assignments, regression_targets):
        seen.append(assignments)
        return real(self, objectness, deltas, assignments, regression_targets)

    model = make_detector(backbone="R18-FPN", norm="BN", trainable_layers=5, returned_layers=(3, 4), fpn_channels=16,
                          num_classes=2, anchor_sizes=((32,), (64,)), box_head_dim=32).train()
    model.rpn.compute_loss = spy.__get__(model.rpn)
    model([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[4.0, 4, 40, 40]]), "labels": torch.tensor([1])}])
    assert len(seen) == 1 and all(isinstance(a, AnchorAssignment) for a in seen[0])
