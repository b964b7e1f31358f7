"""MODEL.WEIGHTS loading (lossmix.modeling.build.load_weights): files of another backbone are refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from lossmix.engine.checkpoint import UnreadableFileError
from lossmix.modeling.build import load_weights, make_detector


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
    assert any("synthetic_at_lossmix" in c for c in configs)
    for k, config in enumerate(configs):
        weights = build_config(f"{REPO}/{config}").MODEL.WEIGHTS
        if weights:
            assert config_writing(weights) in configs[:k], config  # its source model is trained before it
