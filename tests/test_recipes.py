"""The one training entry and its recipes: a new recipe is one registered class; the Adaptive-Teacher
recipe built from keyword arguments (no dataset on disk): loss weights, the discriminator-only path;
one dataset read per evaluation; the Mixer's OFF_LAST_ITERS schedule."""
import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from lossmix.config.setup import build_config
from lossmix.data.mapper import to_model_input
from lossmix.data.mixer import Mixer, partner_of
from lossmix.engine.ema import make_teacher
from lossmix.engine.recipes import RECIPES, Recipe, register_recipe
from lossmix.engine.recipes.adaptive_teacher import AdaptiveTeacherRecipe
from lossmix.engine.run import run
from lossmix.modeling.build import make_detector
from lossmix.modeling.discriminator import ImageDomainDiscriminator, domain_loss


@register_recipe("test_quadratic")
class QuadraticRecipe(Recipe):
    """The smallest recipe: one weight pulled towards ``target``; its loader yields nothing."""

    def __init__(self, *, target: float):
        self.model = nn.Linear(1, 1, bias=False)
        self.target = target

    @classmethod
    def from_config(cls, cfg, *, device):
        return cls(target=float(cfg.SEED) + 1.0)

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
        return {"loss_quadratic": ((self.model.weight - self.target) ** 2).sum()}


def test_a_new_recipe_is_one_registered_class(tmp_path):
    assert {"supervised", "adaptive_teacher", "test_quadratic"} <= set(RECIPES)
    cfg = build_config("", ["RECIPE", "test_quadratic", "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu",
                            "SOLVER.MAX_ITER", "6", "SOLVER.WARMUP_ITERS", "0", "SOLVER.BASE_LR", "0.2",
                            "SOLVER.WEIGHT_DECAY", "0.0", "SOLVER.MOMENTUM", "0.0", "LOG_PERIOD", "1",
                            "SOLVER.CHECKPOINT_PERIOD", "0", "MODEL.BACKBONE.NORM", "BN",  # no weights check trips
                            "MODEL.BACKBONE.TRAINABLE_LAYERS", "5"])
    result = run(cfg)
    assert result["summary"]["iterations"] == 6 and result["results"] == {}
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    losses = [r["loss_quadratic"] for r in rows if "loss_quadratic" in r]
    assert len(losses) == 6
    for a, b in zip(losses, losses[1:]):  # plain gradient descent on (w - 1)^2 with lr 0.2: the gap shrinks x0.6
        assert b == pytest.approx(a * 0.36, rel=1e-4)
    state = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert state["iteration"] == 6 and set(state["model"]) == {"weight"}


# ------------------------------------------------------------------------------ adaptive teacher, no files
def _tiny_student():
    return make_detector(backbone="R18-FPN", norm="GN", trainable_layers=5, returned_layers=(2, 3, 4), fpn_channels=32,
                         num_classes=3, anchor_sizes=((16,), (32,), (64,), (128,)), box_head_dim=64,
                         rpn={"batch_size_per_image": 32, "pre_nms_top_n_train": 100, "post_nms_top_n_train": 50,
                              "pre_nms_top_n_test": 50, "post_nms_top_n_test": 30},
                         roi_heads={"batch_size_per_image": 16, "score_thresh": 0.0, "detections_per_img": 5})


def _sample(seed, n_boxes):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 40, (n_boxes, 2)).astype(np.float32)
    return {"image": rng.integers(0, 255, (64, 80, 3), dtype=np.uint8),
            "boxes": np.concatenate([xy, xy + 20], 1), "classes": rng.integers(0, 3, n_boxes),
            "weights": np.ones(n_boxes, np.float32)}


def _batch():
    source = []
    for j in range(2):
        inp = to_model_input(_sample(j, 2))
        inp["domain"] = 0.0
        source.append(inp)
    target = [{"weak": to_model_input(_sample(10 + j, 0)), "strong": _sample(20 + j, 0), "position": j}
              for j in range(2)]
    return {"source": source, "target": target}


def _recipe(**weights):
    torch.manual_seed(0)
    student = _tiny_student()
    disc = ImageDomainDiscriminator(in_channels=32)
    return AdaptiveTeacherRecipe(student=student, teacher=make_teacher(student), discriminator=disc,
                                 device=torch.device("cpu"), mixer=Mixer(mode="lossmix"), mix_targets=True,
                                 burn_in=0, threshold=0.0, dis_feature="1", **weights)


def _losses(recipe, batch):
    torch.manual_seed(1)  # the same proposal / anchor sampling in every call
    return {k: float(v.detach()) for k, v in recipe.losses(batch, 0).items()}


def test_unsup_and_dis_weights_scale_their_families_in_the_total():
    batch = _batch()
    base = _losses(_recipe(unsup_weight=1.0, dis_weight=0.1), batch)
    other = _losses(_recipe(unsup_weight=2.5, dis_weight=0.3), batch)
    assert base.keys() == other.keys()
    pseudo = [k for k in base if k.endswith("_pseudo")]
    dis = ["loss_dis_source", "loss_dis_target"]
    supervised = [k for k in base if k not in pseudo and k not in dis]
    assert len(pseudo) == 4 and len(supervised) == 4 and base["loss_classifier_pseudo"] > 0
    for k in supervised:
        assert other[k] == pytest.approx(base[k], rel=1e-6), k
    for k in pseudo:
        assert other[k] == pytest.approx(2.5 * base[k], rel=1e-5), k
    for k in dis:
        assert other[k] == pytest.approx(3.0 * base[k], rel=1e-5), k
    raw_pseudo, raw_dis = sum(base[k] for k in pseudo), sum(base[k] / 0.1 for k in dis)
    total = sum(other.values())
    assert total == pytest.approx(sum(base[k] for k in supervised) + 2.5 * raw_pseudo + 0.3 * raw_dis, rel=1e-5)


def test_discriminator_only_path_runs_the_backbone_alone():
    batch = _batch()
    recipe = _recipe(unsup_weight=0.0, dis_weight=0.5)
    calls = {"rpn": 0, "roi_heads": 0, "teacher": 0}
    recipe.student.rpn.register_forward_hook(lambda *a: calls.__setitem__("rpn", calls["rpn"] + 1))
    recipe.student.roi_heads.register_forward_hook(lambda *a: calls.__setitem__("roi_heads", calls["roi_heads"] + 1))
    recipe.teacher.register_forward_hook(lambda *a: calls.__setitem__("teacher", calls["teacher"] + 1))
    losses = recipe.losses(batch, 0)
    assert calls == {"rpn": 1, "roi_heads": 1, "teacher": 0}  # the source forward only; no pseudo-labels
    assert not any(k.endswith("_pseudo") for k in losses)
    images = torch.stack([torch.from_numpy(t["strong"]["image"]).permute(2, 0, 1).float() / 255 for t in batch["target"]])
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    features = recipe.student.backbone(nn.functional.pad((images - mean) / std, (0, 16)))["1"]  # 80 -> 96: multiple of 32
    expected = 0.5 * domain_loss(recipe.discriminator(features), torch.ones(2))
    torch.testing.assert_close(losses["loss_dis_target"], expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ one read per evaluation
def test_each_evaluation_reads_the_dataset_once(tmp_path, monkeypatch):
    from lossmix.data import voc
    from lossmix.engine.inference import evaluate

    from .helpers import make_tiny_dataset, tiny_cfg

    names = make_tiny_dataset(tmp_path / "data", num_train=2, num_test=2)
    reads = []
    real = voc.load_voc_instances
    monkeypatch.setattr(voc, "load_voc_instances", lambda *a, **k: reads.append(a) or real(*a, **k))
    cfg = tiny_cfg(names, tmp_path / "out")
    model = _tiny_student().eval()
    results = evaluate(cfg, {"teacher": model, "student": model, "none": None}, torch.device("cpu"))
    assert len(reads) == 1  # was 4: test loader and evaluator, for each of teacher and student
    assert set(results[names["source_test"]]) == {"teacher", "student", "none"}
    assert results[names["source_test"]]["student"]["num_images"] == 2 and results[names["source_test"]]["none"] is None


# ------------------------------------------------------------------------------ the Mixer
def _np_sample(value, position):
    return {"image": np.full((20, 30, 3), value, np.uint8), "boxes": np.array([[1, 1, 9, 9]], np.float32),
            "classes": np.array([value % 3]), "weights": np.ones(1, np.float32), "position": position}


def test_off_last_iters_stops_mixing_for_the_last_iterations():
    mixer = Mixer(mode="lossmix", off_last_iters=2, max_iter=5, global_batch=2, seed=3)
    for it in range(5):
        batch = [_np_sample(10 * (2 * it + j), 2 * it + j) for j in range(2)]
        for (partner, mixed), sample in zip(mixer.mix_batch(batch), batch):
            assert partner is not None
            if it < 3:
                assert 0 < mixed["lam"] < 1 and len(mixed["boxes"]) == 2, it
            else:  # iterations 3 and 4 of 5: unmixed, as in mode none
                assert mixed["lam"] == 1.0 and np.array_equal(mixed["image"], sample["image"]), it
                assert len(mixed["boxes"]) == 1 and mixed["weights"].tolist() == [1.0]
    cfg = build_config("", ["LOSSMIX.MODE", "lossmix", "LOSSMIX.OFF_LAST_ITERS", "3", "SOLVER.MAX_ITER", "10",
                            "SOLVER.IMS_PER_BATCH", "4"])
    from_cfg = Mixer.from_config(cfg)
    assert from_cfg.active(4 * 7 - 1) and not from_cfg.active(4 * 7)  # iteration 6 mixes, iteration 7 does not
    assert Mixer(mode="lossmix", global_batch=2).active(10 ** 6)  # 0: mix to the end


def test_one_partner_rule_and_position_generators():
    batch = [{"position": 7}, {"position": 8}, {"position": 9, "partner": {"position": -1}}]
    assert partner_of(batch, 0) is batch[1] and partner_of(batch, 1) is batch[2] and partner_of(batch, 2)["position"] == -1
    assert partner_of(batch[:1], 0) is None
    mixer = Mixer(seed=5)
    # the supervised loader's stream since its first version: default_rng([SEED, position, 1])
    assert mixer.rng(12).random() == np.random.default_rng([5, 12, 1]).random()
    assert mixer.rng(12, 2).random() != mixer.rng(12).random()
