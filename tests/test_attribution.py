"""Attribution analysis: maps of toy scores whose support is known, shares by hand, the detection score
held on a fixed box (equal to the detector's own score on the source proposal), no side effects, the CLI."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossmix.analysis.attribution import (
    METHODS, DetectionScore, attribution_map, box_shares, detect_with_proposals, explain, region_masks,
    resolve_layer, summarize_shares,
)
from lossmix.modeling.build import build_detector

from .helpers import make_tiny_dataset, tiny_cfg

REPO = Path(__file__).resolve().parents[1]
FAST = dict(ig_steps=2, smoothgrad_samples=2, internal_batch_size=2)


class BoxScore(nn.Module):
    """sigmoid(weighted sum of relu(1x1 conv(x)) over the pixels of ``box``): depends on nothing else."""

    def __init__(self, size, box, sign=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.rand(4, 3, 1, 1, generator=g) + 0.1)
            self.conv.bias.fill_(0.05)
        self.relu = nn.ReLU()
        self.register_buffer("weights", sign * (torch.rand(1, 4, *size, generator=g) + 0.5)
                             * region_masks(size, box, 0.0)["inside"].float())

    def forward(self, x):
        return torch.sigmoid((self.relu(self.conv(x)) * self.weights).sum((1, 2, 3)) / 100)


def test_maps_of_a_box_only_score_lie_in_the_box():
    size, box = (24, 32), [5.0, 3.0, 17.0, 11.0]  # not square and not symmetric: a transposed map fails
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(1))
    score = BoxScore(size, box)
    masks = region_masks(size, box, 0.5)
    for method in ("smoothgrad", "ig", "guided"):
        heat = attribution_map(score, image, method, **FAST)
        assert heat.shape == size and bool((heat >= 0).all()), method
        assert float(heat[masks["inside"]].min()) > 0, method  # every pixel of the box matters
        shares = box_shares(heat, box)
        assert shares["inside"] > 0.999, (method, shares)
        assert sum(shares.values()) == pytest.approx(1.0)


def test_guided_backprop_overrides_module_relus():
    """A score that only falls as the ReLU outputs grow: guided backprop passes no negative gradient."""
    size, box = (16, 20), [2.0, 2.0, 10.0, 12.0]
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(2))
    score = BoxScore(size, box, sign=-1.0)
    assert float(attribution_map(score, image, "ig", **FAST).sum()) > 0
    heat = attribution_map(score, image, "guided")
    assert float(heat.sum()) == 0.0
    assert all(math.isnan(v) for v in box_shares(heat, box).values())  # zero mass: no shares


class RedRegionScore(nn.Module):
    """Pads to a multiple of 16, then a stride-2 conv (channel 0 = red, 1 = green) and a ReLU; the score
    is sigmoid(mean red activation over layer cells ``rows x cols``)."""

    def __init__(self, rows, cols):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 2, stride=2, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 0.25
            self.conv.weight[1, 1] = 0.25
        self.relu = nn.ReLU()
        self.rows, self.cols = rows, cols

    @staticmethod
    def padded_size(h, w):
        return -(-h // 16) * 16, -(-w // 16) * 16

    def forward(self, x):
        ph, pw = self.padded_size(*x.shape[-2:])
        a = self.relu(self.conv(F.pad(x, (0, pw - x.shape[-1], 0, ph - x.shape[-2]))))
        return torch.sigmoid(a[:, 0, self.rows[0]:self.rows[1], self.cols[0]:self.cols[1]].mean((1, 2)))


def test_gradcam_follows_the_scored_layer_region_through_padding():
    h, w = 28, 50  # padded to 32 x 64: the layer (16 x 32) covers more than the image
    score = RedRegionScore(rows=(9, 14), cols=(15, 22))
    box = [30.0, 18.0, 44.0, 28.0]  # those layer cells in input pixels
    image = torch.zeros(3, h, w)
    image[0, 20:26, 32:42] = 1.0  # red object inside the box (whole layer cells, away from its edges)
    image[1, 2:10, 4:14] = 1.0  # green distractor outside: its channel does not feed the score
    heat = attribution_map(score, image, "gradcam", layer=score.conv, padded_size=score.padded_size(h, w))
    assert heat.shape == (h, w)
    assert box_shares(heat, box)["inside"] > 0.99
    assert float(heat[20:26, 32:42].min()) > 0
    # upsampling the layer to the unpadded size instead misplaces the map
    misplaced = attribution_map(score, image, "gradcam", layer=score.conv)
    assert box_shares(misplaced, box)["inside"] < 0.9


def test_shares_by_hand():
    heat = torch.tensor([[1.0, 0, 0, 0, 0, 2],
                         [0, 3, 4, 0, 0, 0],
                         [0, 5, 6, 0, 0, 0],
                         [0, 0, 0, 7, 0, 0]])
    # box rows/cols 1-2; grown by half its size per side: rows/cols 0-3
    def shares(inside, ring, outside):
        return pytest.approx({"inside": inside / 28, "ring": ring / 28, "outside": outside / 28})

    assert box_shares(heat, [1, 1, 3, 3], ring=0.5) == shares(18, 8, 2)
    assert box_shares(heat, [1, 1, 3, 3], ring=0.0) == shares(18, 0, 10)
    # fractional box: pixel centres 0.5 and 1.5 are in [0.5, 2.5), 2.5 is not; grown box [-0.5, 3.5)
    assert box_shares(heat, [0.5, 0.5, 2.5, 2.5]) == shares(4, 15, 9)
    assert all(math.isnan(v) for v in box_shares(torch.zeros(4, 6), [1, 1, 3, 3]).values())
    with pytest.raises(ValueError):
        box_shares(-heat, [1, 1, 3, 3])


def test_summary_skips_maps_without_mass():
    records = [{"inside": 0.5, "ring": 0.3, "outside": 0.2}, {"inside": 0.7, "ring": 0.2, "outside": 0.1},
               {"inside": math.nan, "ring": math.nan, "outside": math.nan}]
    summary = summarize_shares(records)
    assert summary["inside"] == pytest.approx({"mean": 0.6, "std": np.std([0.5, 0.7], ddof=1), "n": 2})
    assert summary["outside"]["mean"] == pytest.approx(0.15)
    assert math.isnan(summarize_shares(records[:1])["ring"]["std"])
    assert summarize_shares([])["inside"]["n"] == 0


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    model = build_detector(tiny_cfg({"source_train": "unused", "source_test": "unused"}, "")).eval()
    image = torch.rand(3, 48, 60, generator=torch.Generator().manual_seed(3))  # pads to 64 x 64
    return model, image, detect_with_proposals(model, image)


def _manual_score(model, image, box, label):
    """torchvision's own transform and heads, on one box."""
    images, _ = model.transform([image])
    features = model.backbone(images.tensors)
    pooled = model.roi_heads.box_roi_pool(features, [box[None]], images.image_sizes)
    logits, _ = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    return logits.softmax(-1)[0, label]


@torch.no_grad()
def test_score_on_the_source_proposal_is_the_reported_score(detector):
    model, image, det = detector
    assert len(det["scores"]) >= 3 and det["proposals"].shape == det["boxes"].shape
    for k in range(3):
        score = DetectionScore(model, det["proposals"][k], det["labels"][k])(image[None])
        assert float(score) == pytest.approx(float(det["scores"][k]), abs=1e-5)
    assert not model.training


@torch.no_grad()
def test_score_is_computed_from_exactly_the_given_box(detector):
    model, image, det = detector
    box, label = det["boxes"][0], int(det["labels"][0])
    other = torch.rand(3, 48, 60, generator=torch.Generator().manual_seed(4))
    scores = DetectionScore(model, box, label)(torch.stack([image, other]))
    assert scores.shape == (2,)
    assert float(scores[0]) == pytest.approx(float(_manual_score(model, image, box, label)), abs=1e-5)
    assert float(scores[1]) == pytest.approx(float(_manual_score(model, other, box, label)), abs=1e-5)
    shifted = box + torch.tensor([12.0, 8.0, 12.0, 8.0])
    shifted_score = float(DetectionScore(model, shifted, label)(image[None]))
    assert shifted_score == pytest.approx(float(_manual_score(model, image, shifted, label)), abs=1e-5)
    assert shifted_score != pytest.approx(float(scores[0]), abs=1e-4)


def test_attribution_leaves_the_detector_unchanged(detector):
    model, image, det = detector
    explanation = explain(model, image, det["proposals"][0], det["labels"][0], **FAST)
    assert explanation.score == pytest.approx(float(det["scores"][0]), abs=1e-5)
    assert explanation.gradcam_layer.startswith("backbone.fpn.layer_blocks.")
    for method in METHODS:
        heat = explanation.maps[method]
        assert heat.shape == (48, 60) and bool(torch.isfinite(heat).all()) and bool((heat >= 0).all()), method
        assert float(heat.sum()) > 0, method
    after = detect_with_proposals(model, image)
    for key in ("boxes", "scores", "labels", "proposals"):
        assert torch.equal(after[key], det[key]), key
    for name, module in model.named_modules():
        assert not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks), name
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_named_gradcam_layer(detector):
    model, image, det = detector
    name, layer = resolve_layer(model, "backbone.body.layer4")
    assert layer is model.backbone.body.layer4
    heat = explain(model, image, det["boxes"][0], det["labels"][0], methods=["gradcam"],
                   gradcam_layer=name).maps["gradcam"]
    assert heat.shape == (48, 60)
    with pytest.raises(ValueError):
        resolve_layer(model, "backbone.nope")


def _load_tool():
    spec = importlib.util.spec_from_file_location("attribution_tool", REPO / "tools" / "attribution.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_grids_and_table(tmp_path):
    names = make_tiny_dataset(tmp_path / "data", num_train=1, num_test=2, image_size=64)
    cfg = tiny_cfg(names, "", **{"INPUT.MIN_SIZE_TEST": 64})
    runs = []
    for seed, run in enumerate(("run_a", "run_b")):  # different weights, so a mix-up between runs shows
        torch.manual_seed(seed)
        folder = tmp_path / run
        folder.mkdir()
        torch.save({"model": build_detector(cfg).state_dict()}, folder / "model_final.pth")
        (folder / "config.yaml").write_text(cfg.dump())  # as tools/train_net.py writes it
        runs.append(str(folder))
    tool = _load_tool()
    out = tmp_path / "out"
    args = ["--runs", *runs, "--dataset", names["source_test"], "--num-images", "2", "--methods", "gradcam",
            "--output", str(out), "--source", "gt"]
    assert tool.main(args) == 0
    assert (out / "attribution_gradcam.png").stat().st_size > 0
    table = (out / "attribution.md").read_text()
    rows = [line.split(" | ")[:2] for line in table.splitlines() if line.startswith("| run_")]
    assert rows == [["| run_a", "(area)"], ["| run_a", "gradcam"], ["| run_b", "(area)"], ["| run_b", "gradcam"]]
    assert " ± " in table
    records = json.loads((out / "attribution.json").read_text())
    from lossmix.data.catalog import DatasetCatalog

    first_two = [d["image_id"] for d in DatasetCatalog.get(names["source_test"]) if d["annotations"]][:2]
    assert len(set(first_two)) == 2  # the dataset's first two images with boxes, in order, for each run
    assert [(r["run"], r["image_id"]) for r in records] == [(run, i) for run in ("run_a", "run_b") for i in first_two]
    for a, b in zip(records[:2], records[2:]):  # ground truth: the same box for every run, each run its own score
        assert a["region_box"] == b["region_box"] and a["score"] != b["score"]
    assert tool.main(["--runs", *runs[::-1], *args[3:-4], "--output", str(tmp_path / "swapped"), *args[-2:]]) == 0
    swapped = json.loads((tmp_path / "swapped" / "attribution.json").read_text())
    assert sorted((r["run"], r["image_id"], r["score"], json.dumps(r["shares"])) for r in swapped) == \
        sorted((r["run"], r["image_id"], r["score"], json.dumps(r["shares"])) for r in records)  # follows the folder
    for r in records:
        assert sum(r["shares"]["gradcam"].values()) == pytest.approx(1.0)
        assert 0 < r["area_shares"]["inside"] < 1 and 0 <= r["class"] < 6
    detections = ["--runs", runs[0], "--dataset", names["source_test"], "--num-images", "1", "--methods", "guided",
                  "--output", str(tmp_path / "det"), "--source", "detections"]
    assert tool.main(detections) == 0
    assert (tmp_path / "det" / "attribution_guided.png").stat().st_size > 0
    (record,) = json.loads((tmp_path / "det" / "attribution.json").read_text())
    assert record["score"] == pytest.approx(record["reported_score"], abs=1e-5)  # pooled on the source proposal
    assert tool.main(args[:-2] + ["--methods", "nope"]) == 2


def test_seed_folders_are_named_with_their_method():
    # benchmark layouts (<protocol>/<entry>/seed<k>) would otherwise label every column "seed0"
    tool = _load_tool()
    assert tool.run_name("output/benchmark/supervised/lossmix/seed0/") == "lossmix/seed0"
    assert tool.run_name("output/quickstart/synthetic_lossmix") == "synthetic_lossmix"
