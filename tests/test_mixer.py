"""lossmix.data.mixer: the one mixing path of every loader, frozen.

The digests were taken from the loaders before the mapper's own mixing path was removed and the
policy split into plan / apply (shared with the detectron2 plug-in): the same config, seed and data
must keep giving the same batches, bit for bit.
"""
import hashlib

import numpy as np
import pytest
import torch

from lossmix.data.adaptation import build_da_loader
from lossmix.data.loader import build_train_loader
from lossmix.data.mixer import NO_MIX, Mixer, global_position, partner_index, sample_rng
from lossmix.engine.pseudo_labels import build_pseudo_inputs

from .helpers import make_tiny_dataset, tiny_cfg


def _update(h, x):
    if isinstance(x, torch.Tensor):
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
        h.update(str(x.dtype).encode())
    elif isinstance(x, np.ndarray):
        h.update(np.ascontiguousarray(x).tobytes())
    elif isinstance(x, dict):
        for k in sorted(x):
            h.update(k.encode())
            _update(h, x[k])
    elif isinstance(x, (list, tuple)):
        for v in x:
            _update(h, v)
    elif isinstance(x, str):
        h.update(x.rsplit("/", 1)[-1].encode())  # file names without the temporary folder
    else:
        h.update(repr(x).encode())


FROZEN = {"sup_mixup_b2": "625e3d18500f41de", "sup_cutmix_b1_off": "0f162d5fa21285c8",
          "sup_noise_b2": "e6f5b9b58e7af6a3", "da_all_b2": "6233bf74567d0ca3", "da_st_b1": "2d1b2cec0cd2ef92"}


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("mixer") / "d", num_train=6, num_test=2,
                             domains=("source", "clipart"))


@pytest.mark.parametrize("label,batch,extra", [
    ("sup_mixup_b2", 2, {}),
    ("sup_cutmix_b1_off", 1, {"LOSSMIX.METHOD": "cutmix", "LOSSMIX.OFF_LAST_ITERS": 2}),  # loaded partner; off at the end
    ("sup_noise_b2", 2, {"LOSSMIX.MODE": "noise"})])
def test_supervised_batches_are_frozen(names, tmp_path, label, batch, extra):
    opts = {"LOSSMIX.MODE": "lossmix", "SOLVER.IMS_PER_BATCH": batch, "SEED": 4, "SOLVER.MAX_ITER": 4, **extra}
    it = iter(build_train_loader(tiny_cfg(names, tmp_path, **opts)))
    h = hashlib.sha256()
    for _ in range(4):
        _update(h, next(it))
    assert h.hexdigest()[:16] == FROZEN[label]


@pytest.mark.parametrize("label,batch,extra", [
    ("da_all_b2", 2, {}), ("da_st_b1", 1, {"DA.MIX_PAIRS": ("source_target",), "LOSSMIX.METHOD": "cutmix"})])
def test_adaptation_batches_and_pseudo_inputs_are_frozen(names, tmp_path, label, batch, extra):
    opts = {"LOSSMIX.MODE": "lossmix", "SOLVER.IMS_PER_BATCH": batch, "SEED": 2, "DA.ENABLED": True,
            "DATASETS.TRAIN_UNLABELED": (names["clipart_train"],), "DA.BURN_IN_ITERS": 1,
            "DA.MIX_PAIRS": ("source_source", "source_target", "target_target"), **extra}
    cfg = tiny_cfg(names, tmp_path, **opts)
    it, mixer, h = iter(build_da_loader(cfg)), Mixer.from_config(cfg), hashlib.sha256()
    for _ in range(3):
        b = next(it)
        _update(h, b["source"])
        _update(h, [{k: t[k] for k in ("weak", "strong", "position")} for t in b["target"]])
        views = [t["strong"] for t in b["target"]]
        pseudo = [{"boxes": np.array([[2.0, 3, 40, 50], [10, 10, 60, 70]], np.float32), "classes": np.array([0, 2]),
                   "scores": np.array([0.9, 0.85], np.float32)} for _ in views]
        _update(h, build_pseudo_inputs(views, pseudo, positions=[t["position"] for t in b["target"]], mixer=mixer,
                                       mix=True, weight_by_score=True, box_weight=0.5))
    assert h.hexdigest()[:16] == FROZEN[label]


def test_plan_then_apply_is_mix():
    rng = np.random.default_rng(0)
    a = {"image": rng.integers(0, 255, (20, 30, 3), dtype=np.uint8), "boxes": np.array([[1.0, 2, 10, 12]], np.float32),
         "classes": np.array([1])}
    b = {"image": rng.integers(0, 255, (24, 16, 3), dtype=np.uint8), "boxes": np.array([[3.0, 3, 9, 20]], np.float32),
         "classes": np.array([0])}
    mixer = Mixer(mode="lossmix", method="cutmix", prob=0.7, seed=9)
    mixed = 0
    for p in range(6):
        whole = mixer.mix(a, b, mixer.rng(p), position=p)
        r = mixer.rng(p)
        plan = mixer.plan(r, p)
        split = mixer.apply(a, b, plan, r)
        np.testing.assert_array_equal(whole["image"], split["image"])
        np.testing.assert_array_equal(whole["weights"], split["weights"])
        mixed += plan.mixes
        assert whole["lam"] == split["lam"] and (split["lam"] < 1) == plan.mixes  # cutmix: lam = the kept area
    assert 0 < mixed < 6  # prob 0.7: both branches seen
    # off for the last iteration: no draw, no mixing
    off = Mixer(mode="lossmix", off_last_iters=1, max_iter=3, global_batch=2, seed=0)
    assert off.plan(off.rng(4), 4) is NO_MIX and off.plan(off.rng(3), 3).mixes
    # no partner: nothing drawn
    r = np.random.default_rng(1)
    assert off.plan(r, 0, has_partner=False) is NO_MIX and r.random() == np.random.default_rng(1).random()


def test_streams_and_positions():
    assert [global_position(q, rank=1, local_batch=2, world_size=3) for q in range(5)] == [2, 3, 8, 9, 14]
    assert sample_rng(3, 7).random() == np.random.default_rng([3, 7]).random()
    assert Mixer(seed=3).rng(7).random() == np.random.default_rng([3, 7, 1]).random()
    assert partner_index(np.random.default_rng(0), 5) == int(np.random.default_rng(0).integers(5))
    with pytest.raises(ValueError, match="empty"):
        partner_index(np.random.default_rng(0), 0)
    assert Mixer.choose_pair(np.random.default_rng(0), ("source_source", "source_target"),
                             target_available=False) == "source_source"
    assert Mixer.choose_pair(np.random.default_rng(0), ("source_target",), target_available=False) is None
