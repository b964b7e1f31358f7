"""The detector seam: the META_ARCHITECTURE registry, unloaded models, image conversion inside the model."""
import ast
import os

import pytest
import torch

from lossmix.config.setup import build_config
from lossmix.modeling.build import META_ARCHITECTURES, build_detector, detector_transform, register_meta_arch
from lossmix.modeling.faster_rcnn import LossMixFasterRCNN
from lossmix.modeling.fcos import LossMixFCOS
from lossmix.modeling.retinanet import LossMixRetinaNet
from tests.helpers import REPO, tiny_opts

ONE_STAGE = {"RetinaNet": ["MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32], [64], [128], [256]]"],
             "FCOS": ["MODEL.ANCHOR_GENERATOR.SIZES", "[[4], [8], [16], [32], [64]]",
                      "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[1.0]]"]}


def _cfg(*extra):
    return build_config("", tiny_opts({"source_train": "unused", "source_test": "unused"}, "") + list(extra))


@pytest.mark.parametrize("name, cls", [("FasterRCNN", LossMixFasterRCNN), ("RetinaNet", LossMixRetinaNet),
                                       ("FCOS", LossMixFCOS)])
def test_meta_architecture_builds_its_detector_and_it_trains(name, cls):
    cfg = _cfg("MODEL.META_ARCHITECTURE", name, *ONE_STAGE.get(name, []))
    torch.manual_seed(0)
    model = build_detector(cfg)
    assert type(model) is cls and META_ARCHITECTURES[name] is cls
    image = (torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    losses = model([image], [{"boxes": torch.tensor([[4.0, 6, 40, 50]]), "labels": torch.tensor([2])}])
    assert all(k.startswith("loss_") for k in losses) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_default_is_faster_rcnn_and_unknown_names_list_the_registered_ones():
    assert build_config("").MODEL.META_ARCHITECTURE == "FasterRCNN"
    with pytest.raises(KeyError, match=r"MODEL.META_ARCHITECTURE = 'YOLO' is not registered; allowed: FCOS, FasterRCNN, "
                                       r"RetinaNet"):
        build_detector(_cfg("MODEL.META_ARCHITECTURE", "YOLO"))
    with pytest.raises(KeyError, match="already registered"):
        register_meta_arch("RetinaNet")(LossMixRetinaNet)


def test_fcos_box_regression_bias_from_the_config():
    cfg = _cfg("MODEL.META_ARCHITECTURE", "FCOS", *ONE_STAGE["FCOS"], "MODEL.FCOS.BBOX_REG_BIAS", "1.0")
    assert torch.equal(build_detector(cfg).head.regression_head.bbox_reg.bias, torch.ones(4))
    default = build_detector(_cfg("MODEL.META_ARCHITECTURE", "FCOS", *ONE_STAGE["FCOS"]))
    assert torch.equal(default.head.regression_head.bbox_reg.bias, torch.zeros(4))  # torchvision's


def test_fcos_refuses_several_anchors_per_location():
    with pytest.raises(ValueError, match=r"FCOS needs one anchor per location: MODEL.ANCHOR_GENERATOR.SIZES"):
        build_detector(_cfg("MODEL.META_ARCHITECTURE", "FCOS"))  # the tiny config's 3 aspect ratios


def test_build_detector_never_loads_weights(tmp_path):
    """MODEL.WEIGHTS is the engine's business: build_detector ignores it (even a missing file)."""
    cfg = _cfg("MODEL.WEIGHTS", str(tmp_path / "absent.pth"))
    torch.manual_seed(0)
    built = build_detector(cfg).state_dict()
    torch.manual_seed(0)
    plain = build_detector(_cfg()).state_dict()
    assert all(torch.equal(built[k], plain[k]) for k in plain)


def test_load_detector_loads_model_weights(tmp_path):
    from lossmix.engine.checkpoint import load_detector

    torch.manual_seed(1)
    saved = build_detector(_cfg()).state_dict()
    torch.save({"model": saved}, tmp_path / "w.pth")
    torch.manual_seed(2)
    loaded = load_detector(_cfg("MODEL.WEIGHTS", str(tmp_path / "w.pth"))).state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_transform_converts_uint8_exactly_as_the_engine_did():
    """uint8 -> float / 255 inside the model, bit-identical to converting first."""
    transform = detector_transform((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    image = (torch.rand(3, 37, 45, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    from_uint8, _ = transform([image])
    from_float, _ = transform([image.float().div_(255.0)])
    assert torch.equal(from_uint8.tensors, from_float.tensors) and from_uint8.tensors.dtype == torch.float32


def test_modeling_imports_no_engine():
    folder = os.path.join(REPO, "lossmix", "modeling")
    for name in os.listdir(folder):
        if name.endswith(".py"):
            for node in ast.walk(ast.parse(open(os.path.join(folder, name)).read())):
                if isinstance(node, ast.ImportFrom):
                    assert "engine" not in (node.module or ""), f"{name} imports {node.module}"
