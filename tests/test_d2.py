"""lossmix.d2 (the detectron2 plug-in) against detectron2's own heads, mapper and trainer.

Skipped, with the reason, where detectron2 is not installed (it is not on PyPI; see the README
section "Using lossmix from detectron2").
"""
import copy
import importlib.util
import inspect
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (optional plug-in; see README "
                                         "'Using lossmix from detectron2')")

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, transforms as T  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.roi_heads import StandardROIHeads  # noqa: E402
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers  # noqa: E402
from detectron2.modeling.proposal_generator import RPN  # noqa: E402
from detectron2.structures import Boxes, ImageList, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import lossmix.d2 as lmd2  # noqa: E402
from lossmix.config import get_cfg as lossmix_get_cfg  # noqa: E402
from lossmix.d2.config import D2_OVERRIDES, validate_lossmix_config  # noqa: E402
from lossmix.d2.datasets import register_voc_folder  # noqa: E402
from lossmix.d2.mapper import numpy_global_seed  # noqa: E402
from lossmix.data.mixer import Mixer  # noqa: E402
from lossmix.data.mixing import mix_pair  # noqa: E402
from lossmix.data.synthetic import SYNTHETIC_CLASSES, generate  # noqa: E402

from .helpers import REPO  # noqa: E402

RPN_KEYS = ("loss_rpn_cls", "loss_rpn_loc")
ROI_KEYS = ("loss_cls", "loss_box_reg")
TOOL = os.path.join(REPO, "tools", "d2_train_net.py")
SYNTHETIC_CONFIG = os.path.join(REPO, "configs", "d2", "synthetic_lossmix.yaml")
TINY = ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64", "INPUT.MIN_SIZE_TRAIN", "(80, 96)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.BASE_LR", "0.01", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "()"]  # configs/d2/synthetic_lossmix.yaml, tiny


# ------------------------------------------------------------------------------------------- models
def _model_cfg(kind: str = "fpn", lossmix: bool = False, **lossmix_keys):
    """A small detectron2 Faster R-CNN: R18-FPN (StandardROIHeads) or R18-C4 (Res5ROIHeads), CPU."""
    cfg = get_cfg()
    lmd2.add_lossmix_config(cfg)
    m = cfg.MODEL
    m.DEVICE = "cpu"
    m.RESNETS.DEPTH, m.RESNETS.RES2_OUT_CHANNELS = 18, 64
    m.ROI_HEADS.NUM_CLASSES = 3
    m.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    m.RPN.BATCH_SIZE_PER_IMAGE = 64
    m.RPN.PRE_NMS_TOPK_TRAIN, m.RPN.POST_NMS_TOPK_TRAIN = 200, 100
    if kind == "fpn":
        m.BACKBONE.NAME = "build_resnet_fpn_backbone"
        m.RESNETS.OUT_FEATURES = m.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
        m.FPN.OUT_CHANNELS = 32
        m.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
        m.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        m.ROI_HEADS.NAME = "LossMixStandardROIHeads" if lossmix else "StandardROIHeads"
        m.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        m.ROI_BOX_HEAD.NAME, m.ROI_BOX_HEAD.NUM_FC, m.ROI_BOX_HEAD.FC_DIM = "FastRCNNConvFCHead", 2, 64
        m.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    else:  # C4: res4 features, the res5 stage as the box head
        m.BACKBONE.NAME = "build_resnet_backbone"
        m.RESNETS.OUT_FEATURES = ["res4"]
        m.RESNETS.WIDTH_PER_GROUP = 16
        m.ANCHOR_GENERATOR.SIZES = [[32, 64, 128]]
        m.RPN.IN_FEATURES = ["res4"]
        m.ROI_HEADS.NAME = "LossMixRes5ROIHeads" if lossmix else "Res5ROIHeads"
        m.ROI_HEADS.IN_FEATURES = ["res4"]
        m.ROI_BOX_HEAD.POOLER_RESOLUTION = 8
    m.PROPOSAL_GENERATOR.NAME = "LossMixRPN" if lossmix else "RPN"
    for k, v in lossmix_keys.items():
        cfg.LOSSMIX[k] = v
    return cfg


_STOCK = {}


def _pair(kind="fpn", **lossmix_keys):
    """(stock model, LossMix model with the same parameters)."""
    if kind not in _STOCK:
        torch.manual_seed(0)
        _STOCK[kind] = build_model(_model_cfg(kind)).train()
    stock = _STOCK[kind]
    ours = build_model(_model_cfg(kind, lossmix=True, **lossmix_keys)).train()
    ours.load_state_dict(stock.state_dict())
    return stock, ours


def _inputs(weights=None, classes=(0, 1, 2), box_weights=None):
    """Two images: three boxes, and none (an image without objects still trains the background)."""
    out = []
    specs = (((150, 190), [[10.0, 12, 80, 90], [60, 40, 150, 140], [5, 100, 60, 148]], list(classes)),
             ((160, 170), [], []))
    for i, ((h, w), boxes, cls) in enumerate(specs):
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.tensor(cls, dtype=torch.int64)
        if weights is not None:
            inst.gt_weights = torch.tensor(weights if i == 0 else [], dtype=torch.float32)
        if box_weights is not None:
            inst.gt_box_weights = torch.tensor(box_weights if i == 0 else [], dtype=torch.float32)
        g = torch.Generator().manual_seed(h * 1000 + w)
        out.append({"image": (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8), "instances": inst})
    return out


def _losses_and_grads(model, inputs, seed=123):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same subsample_labels draws for both models
    with EventStorage():
        losses = model(copy.deepcopy(inputs))
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.item() for k, v in losses.items()}, grads


def _assert_grads_close(a, b, scale=1.0, tol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        ref = scale * a[name]
        err = (b[name] - ref).abs().max().item()
        assert err <= tol * max(ref.abs().max().item(), 1e-3), (name, err)


@pytest.mark.parametrize("kind", ["fpn", "c4"])
def test_all_ones_reproduce_detectron2_losses_and_gradients(kind):
    stock, ours = _pair(kind)
    assert type(ours.proposal_generator).__name__ == "LossMixRPN"
    assert type(ours.roi_heads.box_predictor).__name__ == "LossMixFastRCNNOutputLayers"
    expected, grads = _losses_and_grads(stock, _inputs())
    for inputs in (_inputs(weights=[1.0, 1.0, 1.0]), _inputs()):  # explicit ones, and absent weights
        got, got_grads = _losses_and_grads(ours, inputs)
        for k in RPN_KEYS + ROI_KEYS:
            assert expected[k] > 0, k
            assert got[k] == pytest.approx(expected[k], rel=1e-6, abs=1e-6), k
        _assert_grads_close(grads, got_grads)


@pytest.mark.parametrize("kind", ["fpn", "c4"])
def test_weights_scale_every_loss(kind):
    """Weight c on every instance and on the background scales every loss (and gradient) by c."""
    c = 0.3
    stock, ours = _pair(kind, BG_WEIGHT=c)
    expected, grads = _losses_and_grads(stock, _inputs())
    got, got_grads = _losses_and_grads(ours, _inputs(weights=[c, c, c]))
    for k in RPN_KEYS + ROI_KEYS:
        assert got[k] == pytest.approx(c * expected[k], rel=1e-5, abs=1e-7), k
    _assert_grads_close(grads, got_grads, scale=c, tol=1e-4)


def test_weight_zero_instance_label_changes_nothing():
    _, ours = _pair("fpn")
    base, base_grads = _losses_and_grads(ours, _inputs(weights=[1.0, 0.0, 1.0]))
    relabelled, rel_grads = _losses_and_grads(ours, _inputs(weights=[1.0, 0.0, 1.0], classes=(0, 2, 2)))
    for k in RPN_KEYS + ROI_KEYS:
        assert relabelled[k] == pytest.approx(base[k], abs=1e-7), k
    _assert_grads_close(base_grads, rel_grads, tol=1e-6)
    # with weight 1 the same relabelling does change the classification loss
    one = _losses_and_grads(ours, _inputs(weights=[1.0, 1.0, 1.0], classes=(0, 2, 2)))[0]
    assert one["loss_cls"] != pytest.approx(base["loss_cls"], abs=1e-6)


def test_box_weights_zero_remove_box_losses_only():
    stock, ours = _pair("fpn")
    expected, _ = _losses_and_grads(stock, _inputs())
    got, _ = _losses_and_grads(ours, _inputs(box_weights=[0.0, 0.0, 0.0]))
    assert got["loss_rpn_loc"] == 0 and got["loss_box_reg"] == 0
    assert got["loss_cls"] == pytest.approx(expected["loss_cls"], rel=1e-6)
    assert got["loss_rpn_cls"] == pytest.approx(expected["loss_rpn_cls"], rel=1e-6)


@pytest.mark.parametrize("loss_type", ["giou", "ciou"])
def test_iou_box_losses_all_ones(loss_type):
    stock, ours = _pair("fpn")
    for m in (stock, ours):
        m.proposal_generator.box_reg_loss_type = loss_type
        m.roi_heads.box_predictor.box_reg_loss_type = loss_type
    try:
        expected, _ = _losses_and_grads(stock, _inputs())
        got, _ = _losses_and_grads(ours, _inputs(weights=[1.0, 1.0, 1.0]))
        halved, _ = _losses_and_grads(ours, _inputs(weights=[0.5, 0.5, 0.5]))
    finally:
        stock.proposal_generator.box_reg_loss_type = stock.roi_heads.box_predictor.box_reg_loss_type = "smooth_l1"
    for k in ("loss_rpn_loc", "loss_box_reg"):
        assert expected[k] > 0
        assert got[k] == pytest.approx(expected[k], rel=1e-5), k
        assert halved[k] == pytest.approx(0.5 * expected[k], rel=1e-5), k


# ------------------------------------------------------------------------------------------- interpolate
def _deterministic(model):
    """Every anchor / proposal sampled and no 'ignore' zone: the sampled sets stop depending on the boxes."""
    rpn, roi = model.proposal_generator, model.roi_heads
    rpn.batch_size_per_image, rpn.positive_fraction = 10**5, 1.0
    rpn.anchor_matcher.thresholds, rpn.anchor_matcher.labels = [-float("inf"), 0.5, float("inf")], [0, 1]
    roi.batch_size_per_image, roi.positive_fraction = 10**5, 1.0
    return model


def test_interpolate_equals_lambda_mix_of_losses():
    stock, ours = _pair("fpn", FORMULATION="interpolate")
    stock, ours = _deterministic(copy.deepcopy(stock)), _deterministic(ours)
    lam = 0.3
    h, w = 150, 190
    boxes_a = torch.tensor([[10.0, 12, 80, 90], [60, 40, 150, 140]])
    boxes_b = torch.tensor([[5.0, 100, 60, 148]])

    def inst(boxes, classes, partner=None):
        i = Instances((h, w))
        i.gt_boxes, i.gt_classes = Boxes(boxes), torch.tensor(classes)
        if partner is not None:
            i.gt_from_partner = torch.tensor(partner)
            i.gt_lam = torch.full((len(classes),), lam)
        return i

    t_a, t_b = inst(boxes_a, [0, 1]), inst(boxes_b, [2])
    mixed = inst(torch.cat([boxes_a, boxes_b]), [0, 1, 2], partner=[False, False, True])
    image = (torch.rand(3, h, w, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    with torch.no_grad(), EventStorage():
        images = stock.preprocess_image([{"image": image}])
        features = stock.backbone(images.tensor)
        # RPN: the same anchors and predictions, labelled against A, against B, and interpolated
        _, rpn_a = stock.proposal_generator(images, features, [t_a])
        _, rpn_b = stock.proposal_generator(images, features, [t_b])
        _, rpn_mix = ours.proposal_generator(images, features, [mixed])
        for k in RPN_KEYS:
            expected = lam * rpn_a[k] + (1 - lam) * rpn_b[k]
            assert rpn_mix[k].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-9), k

        # ROI heads: the same proposal set (ours appends A's and B's boxes: give stock the other set)
        g = torch.Generator().manual_seed(5)
        xy = torch.rand(40, 2, generator=g) * 120
        props = torch.cat([xy, xy + 10 + torch.rand(40, 2, generator=g) * 60], dim=1)

        def proposals(extra):
            p = Instances((h, w))
            p.proposal_boxes = Boxes(torch.cat([props, extra]))
            p.objectness_logits = torch.zeros(len(p.proposal_boxes))
            return [p]

        _, roi_a = stock.roi_heads(images, features, proposals(boxes_b), [t_a])
        _, roi_b = stock.roi_heads(images, features, proposals(boxes_a), [t_b])
        _, roi_mix = ours.roi_heads(images, features, proposals(torch.zeros(0, 4)), [mixed])
        for k in ROI_KEYS:
            expected = lam * roi_a[k] + (1 - lam) * roi_b[k]
            assert roi_mix[k].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-8), k


# ------------------------------------------------------------------------------------------- mixins
class _PseudoLabLikeROIHeads(StandardROIHeads):
    """Shaped like Adaptive Teacher's StandardROIHeadsPseudoLab: extra arguments on its methods."""

    def forward(self, images, features, proposals, targets=None, branch=""):  # training path only
        proposals = self.label_and_sample_proposals(proposals, targets, branch=branch)
        return proposals, self._forward_box(features, proposals)

    def label_and_sample_proposals(self, proposals, targets, branch=""):
        self.seen_branch = branch
        return super().label_and_sample_proposals(proposals, targets)


class _CustomLossPredictor(FastRCNNOutputLayers):
    def losses(self, predictions, proposals):  # e.g. a focal loss
        return super().losses(predictions, proposals)


def test_mixins_combine_with_user_subclasses_in_one_line():
    class Combined(lmd2.LossMixROIHeadsMixin, _PseudoLabLikeROIHeads):
        pass

    class CombinedRPN(lmd2.LossMixRPNMixin, RPN):
        pass

    stock, _ = _pair("fpn")
    cfg = _model_cfg("fpn")
    cfg.LOSSMIX.BG_WEIGHT = 0.5
    shapes = stock.backbone.output_shape()
    heads, rpn = Combined(cfg, shapes).train(), CombinedRPN(cfg, shapes).train()
    assert heads.lossmix_bg_weight == rpn.lossmix_bg_weight == 0.5
    heads.load_state_dict(stock.roi_heads.state_dict())
    rpn.load_state_dict(stock.proposal_generator.state_dict())
    inputs = _inputs(weights=[0.5, 0.5, 0.5])
    with torch.no_grad(), EventStorage():
        images = stock.preprocess_image(inputs)
        features = stock.backbone(images.tensor)
        targets = [x["instances"] for x in inputs]
        torch.manual_seed(1)
        props, rpn_losses = rpn(images, features, targets)
        torch.manual_seed(1)
        _, rpn_stock = stock.proposal_generator(images, features, targets)
        torch.manual_seed(2)
        _, roi_losses = heads(images, features, props, targets, branch="supervised")
        torch.manual_seed(2)
        _, roi_stock = stock.roi_heads(images, features, props, targets)
    assert heads.seen_branch == "supervised"
    for got, exp in ((rpn_losses, rpn_stock), (roi_losses, roi_stock)):
        for k in exp:
            assert got[k].item() == pytest.approx(0.5 * exp[k].item(), rel=1e-5), k
    # explicit (non-cfg) construction takes the LossMix settings as keyword arguments
    args = StandardROIHeads.from_config(cfg, shapes)
    explicit = lmd2.LossMixStandardROIHeads(**args, lossmix_bg_weight=0.25, lossmix_formulation="interpolate")
    assert (explicit.lossmix_bg_weight, explicit.lossmix_formulation) == (0.25, "interpolate")


def test_predictor_with_its_own_losses_is_refused():
    stock, _ = _pair("fpn")
    pred = copy.deepcopy(stock.roi_heads.box_predictor)
    pred.__class__ = _CustomLossPredictor
    with pytest.raises(TypeError, match="own losses"):
        lmd2.as_lossmix_predictor(pred)

    class InferenceOnly(FastRCNNOutputLayers):  # keeps detectron2's losses: weighted subclass made on the fly
        pass

    pred.__class__ = InferenceOnly
    weighted = lmd2.as_lossmix_predictor(pred)
    assert isinstance(weighted, InferenceOnly) and isinstance(weighted, lmd2.LossMixOutputLayersMixin)


def test_heads_need_the_lossmix_config():
    cfg = get_cfg()
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "LossMixRPN"
    cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(KeyError, match="add_lossmix_config"):
        build_model(cfg)


# ------------------------------------------------------------------------------------------- config
def test_config_keys_match_lossmix_and_are_read():
    """detectron2's LOSSMIX / DA nodes are the core's (built from its definition; see also test_d2_import.py)."""
    cfg = get_cfg()
    lmd2.add_lossmix_config(cfg)
    lmd2.add_da_config(cfg)
    core = lossmix_get_cfg()
    for node in ("LOSSMIX", "DA"):
        ours, theirs = dict(cfg[node]), dict(core[node])
        assert ours.keys() == theirs.keys(), node
        for k in ours:
            assert ours[k] == theirs[k] or k in D2_OVERRIDES.get(node, {}), (node, k)
    # every LOSSMIX key is read where detectron2 builds the mapper's mixer or the heads
    readers = inspect.getsource(Mixer.from_config) + inspect.getsource(lmd2.LossMixRPNMixin._lossmix_args)
    for k in cfg.LOSSMIX:
        assert f".{k}" in readers, f"LOSSMIX.{k} is never read"
    validate_lossmix_config(cfg)
    for key, bad in (("MODE", "mixed"), ("METHOD", "mosaic"), ("FORMULATION", "x"), ("PROB", 1.5), ("ALPHA", 0.0),
                     ("NOISE_RANGE", (0.2, 0.1)), ("SALIENCY", "itti"), ("PASTE", "tile"), ("OFF_LAST_ITERS", -1)):
        broken = cfg.clone()
        broken.LOSSMIX[key] = bad
        with pytest.raises(ValueError, match=f"LOSSMIX.{key}"):
            validate_lossmix_config(broken)


def test_every_d2_config_loads_and_builds():
    folder = os.path.join(REPO, "configs", "d2")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".yaml"))
    assert {"Base-RCNN-FPN.yaml", "synthetic_lossmix.yaml", "voc_faster_rcnn_R_50_FPN_lossmix.yaml"} <= set(names)
    for name in names:
        cfg = get_cfg()
        lmd2.add_lossmix_config(cfg)
        lmd2.add_da_config(cfg)
        cfg.merge_from_file(os.path.join(folder, name))
        validate_lossmix_config(cfg)
        assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "LossMixRPN", name
        assert cfg.MODEL.ROI_HEADS.NAME == "LossMixStandardROIHeads", name
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    cfg.merge_from_file(SYNTHETIC_CONFIG)
    model = build_model(cfg)  # the synthetic benchmark's model builds as configured
    assert type(model.roi_heads).__name__ == "LossMixStandardROIHeads"


# ------------------------------------------------------------------------------------------- mapper
def _write_images(tmp_path):
    """Two PNG images (lossless, so PIL and cv2 read the same pixels) and their dataset dicts."""
    rng = np.random.default_rng(0)
    dicts = []
    for i, ((h, w), boxes, classes) in enumerate((((60, 80), [[5.0, 6, 40, 50], [30, 10, 78, 58]], [0, 2]),
                                                  ((70, 64), [[10.0, 20, 50, 68]], [1]))):
        rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        path = str(tmp_path / f"img{i}.png")
        cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        anns = [{"bbox": b, "bbox_mode": 0, "category_id": c} for b, c in zip(boxes, classes)]
        dicts.append({"file_name": path, "image_id": i, "height": h, "width": w, "annotations": anns,
                      "rgb": rgb, "boxes": np.array(boxes, np.float32), "classes": np.array(classes)})
    return dicts


def _mapper(fmt="BGR", augmentations=(), **kw):
    return lmd2.LossMixDatasetMapper(is_train=True, augmentations=list(augmentations), image_format=fmt,
                                     mixer=Mixer(**kw))


@pytest.mark.parametrize("mode,method,extra", [
    ("lossmix", "mixup", {}), ("lossmix", "cutmix", {"paste": "keep_aspect"}), ("lossmix", "saliencymix", {}),
    ("lossmix", "saliencymix", {"saliency": "spectral_residual"}), ("uniform", "cutmix", {}), ("noise", "mixup", {})])
@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_mapper_mix_matches_lossmix_mixing(tmp_path, mode, method, extra, fmt):
    a, b = _write_images(tmp_path)
    mapper = _mapper(fmt, mode=mode, method=method, min_visible=0.1, **extra)
    plan = mapper.mixer.plan(np.random.default_rng(7))
    assert plan.mode == mode
    out = mapper.to_input(mapper.mixer.apply(mapper.load_sample(a), mapper.load_sample(b), plan,
                                             np.random.default_rng(8)))

    expected = mix_pair({"image": a["rgb"], "boxes": a["boxes"], "classes": a["classes"]},
                        {"image": b["rgb"], "boxes": b["boxes"], "classes": b["classes"]},
                        mode=mode, method=method, lam=plan.lam, rng=np.random.default_rng(8), min_visible=0.1,
                        noise_weight=plan.noise_weight, **extra)
    image = out["image"].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(image[..., ::-1] if fmt == "BGR" else image, expected["image"])
    inst = out["instances"]
    assert inst.image_size == expected["image"].shape[:2]
    np.testing.assert_allclose(inst.gt_boxes.tensor.numpy(), expected["boxes"], atol=1e-5)
    np.testing.assert_array_equal(inst.gt_classes.numpy(), expected["classes"])
    np.testing.assert_allclose(inst.gt_weights.numpy(), expected["weights"], atol=1e-7)
    np.testing.assert_array_equal(inst.gt_from_partner.numpy(), expected["from_partner"])
    assert np.allclose(inst.gt_lam.numpy(), expected["lam"]) and out["lossmix_lam"] == pytest.approx(expected["lam"])
    assert out["file_name"] == a["file_name"] and out["height"] == a["height"]


def test_mapper_honours_augmentations_and_leaves_numpy_global_rng_alone(tmp_path):
    a, _ = _write_images(tmp_path)
    augs = [T.ResizeShortestEdge((30, 40, 50), max_size=100, sample_style="choice"), T.RandomFlip(0.5)]
    mapper = _mapper("BGR", augs, mode="lossmix")
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    outs = [mapper.load(a, np.random.default_rng(s)) for s in (1, 1, 2, 3, 4, 5)]
    assert np.array_equal(np.random.get_state()[1], state)
    assert torch.equal(outs[0]["image"], outs[1]["image"])  # same stream, same augmentation
    assert len({tuple(o["image"].shape) for o in outs}) > 1  # resized as detectron2's augmentation drew
    # what detectron2's own DatasetMapper gives with the same draws
    from detectron2.data import DatasetMapper

    stock = DatasetMapper(is_train=True, augmentations=augs, image_format="BGR")
    with numpy_global_seed(np.random.default_rng(2)):  # what load() does around detectron2's mapper
        ref = stock(a)
    assert torch.equal(ref["image"], outs[2]["image"])
    assert torch.allclose(ref["instances"].gt_boxes.tensor, outs[2]["instances"].gt_boxes.tensor)
    # called on a single dict (no partner) it adds the weight fields and mixes nothing
    single = mapper(a)
    assert torch.equal(single["instances"].gt_weights, torch.ones(2)) and single["lossmix_lam"] == 1.0


def test_mapper_from_config_and_refusals():
    cfg = _model_cfg("fpn")
    cfg.LOSSMIX.MODE, cfg.LOSSMIX.METHOD, cfg.LOSSMIX.PROB = "lossmix", "cutmix", 0.5
    cfg.LOSSMIX.SALIENCY, cfg.LOSSMIX.PASTE = "spectral_residual", "keep_aspect"
    mapper = lmd2.LossMixDatasetMapper(cfg, is_train=True)
    m = mapper.mixer
    assert (m.mode, m.method, m.prob, mapper.image_format) == ("lossmix", "cutmix", 0.5, "BGR")
    assert (m.saliency, m.paste) == ("spectral_residual", "keep_aspect")
    assert m.seed >= 0  # detectron2's SEED -1: one drawn at start
    assert not lmd2.LossMixDatasetMapper(cfg, is_train=False).mixes
    cfg.INPUT.FORMAT = "L"
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        lmd2.LossMixDatasetMapper(cfg, is_train=True)
    cfg.INPUT.FORMAT, cfg.MODEL.MASK_ON = "BGR", True
    with pytest.raises(NotImplementedError, match="boxes only"):
        lmd2.LossMixDatasetMapper(cfg, is_train=True)


# ------------------------------------------------------------------------------------------- loader
_REGISTERED = {}


def _synthetic(tmp_path_factory, num_train=8):
    """A tiny synthetic VOC set registered in detectron2's catalog (once per session)."""
    if "root" not in _REGISTERED:
        root = tmp_path_factory.mktemp("d2data")
        generate(str(root / "synthetic"), seed=0, num_train=num_train, num_test=4, image_size=96, domains=("source",))
        for split in ("train", "test"):
            name = f"d2test_synthetic_{split}"
            if name not in DatasetCatalog.list():
                register_voc_folder(name, str(root / "synthetic" / "source"), split, SYNTHETIC_CLASSES)
        _REGISTERED["root"] = root
    return _REGISTERED["root"]


def _loader_cfg(**extra):
    cfg = _model_cfg("fpn", lossmix=True)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("d2test_synthetic_train",), ("d2test_synthetic_test",)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(SYNTHETIC_CLASSES)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (80, 96), 128
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 128
    cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = 2, 0
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    cfg.LOSSMIX.MODE, cfg.SEED = "lossmix", 3
    for k, v in extra.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return cfg


def _summary(batches):
    return [[(x["file_name"], x["lossmix_position"], round(x["lossmix_lam"], 6), tuple(x["image"].shape),
              x["instances"].gt_weights.tolist()) for x in batch] for batch in batches]


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_loader_pairs_mixes_and_is_reproducible(tmp_path_factory):
    _synthetic(tmp_path_factory)
    cfg = _loader_cfg()
    first = _summary(_take(lmd2.build_lossmix_train_loader(cfg), 4))
    assert first == _summary(_take(lmd2.build_lossmix_train_loader(cfg), 4))
    assert [p for batch in first for (_, p, *_rest) in batch] == list(range(8))
    lams = [lam for batch in first for (_, _, lam, _, _) in batch]
    assert any(0 < lam < 1 for lam in lams)
    # partner weights: A's instances weigh lam, B's 1 - lam
    for batch in _take(lmd2.build_lossmix_train_loader(cfg), 2):
        for x in batch:
            inst, lam = x["instances"], x["lossmix_lam"]
            expected = torch.where(inst.gt_from_partner, torch.tensor(1 - lam), torch.tensor(lam))
            assert torch.allclose(inst.gt_weights, expected)
    # the stream depends on (seed, rank, position) only: workers do not change it
    workers = _summary(_take(lmd2.build_lossmix_train_loader(_loader_cfg(**{"DATALOADER.NUM_WORKERS": 2})), 4))
    assert workers == first
    # resuming at iteration 2 continues the stream
    loader = lmd2.build_lossmix_train_loader(cfg)
    lmd2.set_loader_start_iter(loader, 2)
    assert _summary(_take(loader, 2)) == first[2:]
    # another seed, another stream
    assert _summary(_take(lmd2.build_lossmix_train_loader(_loader_cfg(SEED=4)), 4)) != first


def test_loader_uses_the_core_streams_and_partner_rule(tmp_path_factory):
    """A d2 sample is the core's: augmentation on sample_rng(seed, p), mixing on Mixer.rng(p), the loaded
    partner uniform over the pool from the sample's stream; only the structures differ."""
    from lossmix.data.mixer import partner_index, sample_rng

    _synthetic(tmp_path_factory)
    cfg = _loader_cfg()
    dicts = DatasetCatalog.get("d2test_synthetic_train")
    mapper = lmd2.LossMixDatasetMapper(cfg, is_train=True)
    ds = lmd2.LossMixTrainDataset(dicts, mapper, local_batch=2, rank=1, world_size=2)
    mixer = mapper.mixer
    for local in range(4):
        p = ds.position(local)
        assert p == (local // 2) * 4 + 2 + local % 2  # rank 1 of 2, two images each
        got = ds[(local, 3)]
        rng = sample_rng(mixer.seed, p)
        base = mapper.load_sample(dicts[3], rng)
        partner = mapper.load_sample(dicts[partner_index(rng, len(dicts))], rng)
        expected = mixer.mix(base, partner, mixer.rng(p), position=p)
        assert got["lossmix_position"] == p and got["lossmix_lam"] == pytest.approx(expected["lam"])
        np.testing.assert_array_equal(got["image"].permute(1, 2, 0).numpy()[..., ::-1], expected["image"])
        np.testing.assert_allclose(got["instances"].gt_weights.numpy(), expected["weights"])
    other_partners = lmd2.LossMixTrainDataset(dicts, mapper, local_batch=2, rank=0, partners=dicts[::-1])
    same = lmd2.LossMixTrainDataset(dicts, mapper, local_batch=2, rank=0)
    for local in range(6):  # the partner pool does not move the mixing draws
        assert other_partners[(local, 0)]["lossmix_lam"] == same[(local, 0)]["lossmix_lam"] or \
            mixer.method != "mixup"
    unmixed = lmd2.LossMixTrainDataset(dicts, lmd2.LossMixDatasetMapper(_loader_cfg(**{"LOSSMIX.MODE": "none"}),
                                                                        is_train=True), local_batch=2)[(0, 1)]
    assert unmixed["lossmix_lam"] == 1.0 and bool(unmixed["instances"].gt_weights.eq(1).all())


# ------------------------------------------------------------------------------------------- trainer
def _load_tool():
    spec = importlib.util.spec_from_file_location("d2_train_net", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trainer_reduces_the_loss(tmp_path_factory, tmp_path):
    """A few iterations of the tool's Trainer on configs/d2/synthetic_lossmix.yaml (made tiny) lower the loss."""
    _synthetic(tmp_path_factory)
    Trainer, _ = _load_tool()._trainers()
    cfg = get_cfg()
    lmd2.add_lossmix_config(cfg)
    cfg.merge_from_file(SYNTHETIC_CONFIG)
    cfg.merge_from_list(TINY + ["DATASETS.TRAIN", "('d2test_synthetic_train',)", "DATASETS.TEST", "()",
                                "SOLVER.MAX_ITER", "16", "SOLVER.CHECKPOINT_PERIOD", "100", "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 16 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses


def _run_tool(args, env_root, timeout=600):
    env = dict(os.environ, LOSSMIX_DATASETS=str(env_root), OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, TOOL, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_tool_trains_resumes_and_evaluates(tmp_path_factory, tmp_path):
    root = _synthetic(tmp_path_factory)
    tiny = TINY + ["SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "('synthetic_source_test',)",
                   "OUTPUT_DIR", str(tmp_path)]
    config = SYNTHETIC_CONFIG
    _run_tool(["--config-file", config, *tiny, "SOLVER.MAX_ITER", "3"], root)
    first = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert first["iteration"] == 2
    log = _run_tool(["--config-file", config, "--resume", *tiny, "SOLVER.MAX_ITER", "5"], root)
    assert "Starting training from iteration 3" in log
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 4
    assert any(not torch.equal(first["model"][k], final["model"][k]) for k in first["model"])
    log = _run_tool(["--config-file", config, "--eval-only", *tiny, "MODEL.WEIGHTS", str(tmp_path / "model_final.pth")],
                    root)
    assert "copypaste: AP,AP50,AP75" in log
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert rows and all(np.isfinite(r["total_loss"]) for r in rows if "total_loss" in r)
