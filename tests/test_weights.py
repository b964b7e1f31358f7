"""MODEL.WEIGHTS loading (lossmix.modeling.build.load_weights): files of another backbone are refused."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchvision

from lossmix.config.setup import ConfigError, build_config
from lossmix.engine.checkpoint import UnreadableFileError, load_weights
from lossmix.engine.run import run as train
from lossmix.modeling.build import make_detector

from .helpers import REPO, make_tiny_dataset, tiny_cfg


def _detector(backbone):
    return make_detector(backbone=backbone, norm="FrozenBN", fpn_channels=16, num_classes=3)


def test_imagenet_weights_of_the_same_backbone_load(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    model = _detector("R18-FPN")
    result = load_weights(model, str(path))
    assert result["kind"] == "backbone" and result["missing"] == [] and result["skipped"] == []
    assert torch.equal(model.backbone.body.conv1.weight, torch.load(path)["conv1.weight"])


def test_weights_of_another_backbone_are_refused_in_one_line(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    model = _detector("R50-FPN")
    before = model.backbone.body.conv1.weight.clone()
    with pytest.raises(UnreadableFileError) as err:
        load_weights(model, str(path))
    message = str(err.value)
    body = [k for k in model.state_dict() if k.startswith("backbone.body.")]
    assert message.startswith(f"MODEL.WEIGHTS '{path}': only ") and f"of the backbone's {len(body)} tensors" in message
    assert "another backbone than MODEL.BACKBONE.NAME" in message and "\n" not in message
    assert torch.equal(model.backbone.body.conv1.weight, before)  # nothing was loaded


def test_random_bytes_are_not_called_a_pickled_model(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    with pytest.raises(UnreadableFileError) as err:
        load_weights(torch.nn.Linear(1, 1), str(path))
    assert "not a PyTorch file written by torch.save" in str(err.value) and "pickled model" not in str(err.value)


def test_missing_weights_of_a_shipped_config_name_the_command_that_makes_them(tmp_path, monkeypatch):
    from lossmix.config.setup import build_config

    monkeypatch.chdir(tmp_path)  # relative to the working directory, where no run wrote it
    cfg = build_config("quickstart/synthetic_at_lossmix.yaml")
    with pytest.raises(FileNotFoundError) as err:
        load_weights(torch.nn.Linear(1, 1), cfg.MODEL.WEIGHTS)
    assert str(err.value) == ("MODEL.WEIGHTS: no such file './output/quickstart/synthetic_lossmix/model_final.pth'; it "
                              "is written by python tools/train_net.py --config-file "
                              "configs/quickstart/synthetic_lossmix.yaml: run that first")
    with pytest.raises(FileNotFoundError, match="weights are never downloaded"):
        load_weights(torch.nn.Linear(1, 1), str(tmp_path / "elsewhere.pth"))


def test_readme_adaptation_quickstart_trains_each_weights_file_before_it_is_used():
    import re

    from lossmix.config.setup import build_config, config_writing

    from .helpers import REPO

    text = open(f"{REPO}/README.md", encoding="utf-8").read().split("## Domain adaptation", 1)[1].split("\n## ", 1)[0]
    configs = re.findall(r"train_net.py --config-file (configs/quickstart/\S+\.yaml)", text)
    assert any("synthetic_adapt_at_lossmix" in c for c in configs)
    for k, config in enumerate(configs):
        weights = build_config(f"{REPO}/{config}").MODEL.WEIGHTS
        if weights:
            assert config_writing(weights) in configs[:k], config  # its source model is trained before it


@pytest.mark.parametrize("config", ["faster_rcnn_r50_baseline.yaml", "faster_rcnn_r50_lossmix.yaml",
                                    "voc2clipart/faster_rcnn_r101_at_lossmix.yaml",
                                    "voc2watercolor/faster_rcnn_r50_at.yaml"])
def test_configs_that_need_pretrained_weights_say_so(config):
    from lossmix.engine.checkpoint import require_weights

    cfg = build_config(os.path.join(REPO, "configs", config))
    arch = "resnet101" if "r101" in config else "resnet50"
    with pytest.raises(ConfigError, match=rf"MODEL.WEIGHTS is empty.*torchvision.models.{arch}\(weights='IMAGENET1K_V1'\)"):
        require_weights(cfg)
    with pytest.raises(ConfigError, match="MODEL.WEIGHTS is empty"):
        train(cfg)  # before anything is built or written


def test_eval_only_without_weights_is_an_error(names, tmp_path):
    from lossmix.engine.checkpoint import require_weights

    cfg = tiny_cfg(names, tmp_path)
    require_weights(cfg)  # BN, every stage trained: from scratch is fine
    with pytest.raises(ConfigError, match="--eval-only needs MODEL.WEIGHTS"):
        require_weights(cfg, eval_only=True)
    require_weights(build_config(os.path.join(REPO, "configs", "quickstart", "synthetic_lossmix.yaml")))


def test_bad_weights_files_get_one_line_naming_the_file(tmp_path):
    text, listed, cut = tmp_path / "w.txt", tmp_path / "list.pth", tmp_path / "cut.pth"
    text.write_text("these are not weights\n")
    torch.save([1, 2, 3], listed)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, cut)
    cut.write_bytes(cut.read_bytes()[:2000])
    model = torch.nn.Linear(1, 1)
    for path, what in ((text, "not a PyTorch file"), (listed, "holds a list, expected a state dict"),
                       (cut, "truncated or corrupt PyTorch archive")):
        with pytest.raises(ValueError) as err:
            load_weights(model, str(path))
        assert str(err.value).startswith(f"MODEL.WEIGHTS '{path}': ") and what in str(err.value)
        assert "\n" not in str(err.value) and type(err.value).__name__ == "UnreadableFileError"


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("weights") / "data", num_train=4, num_test=2)
