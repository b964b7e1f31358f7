import numpy as np
import pytest
import torch

from lossmix.data.catalog import DatasetCatalog
from lossmix.data.loader import MixCollate, TrainDataset, TrainPositions
from lossmix.data.mapper import LossMixDatasetMapper, to_model_input
from lossmix.data.mixer import Mixer

from .helpers import make_tiny_dataset


@pytest.fixture(scope="module")
def dicts(tmp_path_factory):
    names = make_tiny_dataset(tmp_path_factory.mktemp("tinymap"), num_train=6, num_test=2)
    return DatasetCatalog.get(names["source_train"])


def _mapper(**kw):
    """``(dict, partner dict, rng) -> model input``: both loaded on one generator and mixed by a Mixer."""
    mapper = LossMixDatasetMapper(min_sizes=(80, 96), max_size=128, flip_prob=0.5)
    mixer = Mixer(**kw)

    def run(d, partner_d, rng):
        sample = mapper.load(d, rng)
        partner = mapper.load(partner_d, rng) if partner_d is not None and mixer.mixes else None
        return to_model_input(mixer.mix(sample, partner, rng))

    return run


def _equal(a, b):
    assert torch.equal(a["image"], b["image"])
    for k in a["target"]:
        assert torch.equal(a["target"][k], b["target"][k]), k


def test_model_input_layout(dicts):
    d = dicts[0]
    out = _mapper()(d, None, np.random.default_rng(0))
    assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3
    assert min(out["image"].shape[1:]) in (80, 96)
    t = out["target"]
    n = len([a for a in d["annotations"] if not a.get("difficult")])
    assert t["boxes"].shape == (n, 4) and t["labels"].dtype == torch.int64
    expected = torch.tensor([a["category_id"] + 1 for a in d["annotations"] if not a.get("difficult")])
    assert torch.equal(t["labels"], expected)  # 0 is background
    assert torch.all(t["weights"] == 1) and float(t["lam"]) == 1.0 and not t["from_partner"].any()
    h, w = out["image"].shape[1:]
    assert torch.all(t["boxes"][:, 2] <= w) and torch.all(t["boxes"][:, 3] <= h)


@pytest.mark.parametrize("method", ["mixup", "cutmix", "saliencymix"])
def test_deterministic_for_a_generator(dicts, method):
    m = _mapper(mode="lossmix", method=method)
    a = m(dicts[0], dicts[1], np.random.default_rng(7))
    b = m(dicts[0], dicts[1], np.random.default_rng(7))
    _equal(a, b)
    c = m(dicts[0], dicts[1], np.random.default_rng(8))
    assert not torch.equal(a["target"]["weights"], c["target"]["weights"]) or not torch.equal(a["image"], c["image"])


def test_lossmix_mixup_weights_follow_lambda(dicts):
    m = _mapper(mode="lossmix", method="mixup")
    out = m(dicts[0], dicts[1], np.random.default_rng(3))
    t = out["target"]
    lam = float(t["lam"])
    assert 0 < lam < 1
    part = t["from_partner"]
    assert part.any() and (~part).any()
    assert torch.allclose(t["weights"][~part], torch.tensor(lam))
    assert torch.allclose(t["weights"][part], torch.tensor(1 - lam))


def test_uniform_and_noise_modes(dicts):
    uni = _mapper(mode="uniform", method="mixup")(dicts[0], dicts[1], np.random.default_rng(3))
    lm = _mapper(mode="lossmix", method="mixup")(dicts[0], dicts[1], np.random.default_rng(3))
    assert torch.equal(uni["image"], lm["image"]) and torch.equal(uni["target"]["boxes"], lm["target"]["boxes"])
    assert torch.all(uni["target"]["weights"] == 1)
    noise = _mapper(mode="noise", noise_range=(0.05, 0.05))(dicts[0], dicts[1], np.random.default_rng(3))
    plain = _mapper(mode="none")(dicts[0], None, np.random.default_rng(3))
    assert not noise["target"]["from_partner"].any()
    assert noise["target"]["boxes"].shape == plain["target"]["boxes"].shape
    assert float(noise["target"]["lam"]) == pytest.approx(0.95)


def test_prob_zero_equals_no_mixing(dicts):
    rng = lambda: np.random.default_rng(11)  # noqa: E731
    m = _mapper(mode="lossmix", prob=0.0)
    plain = _mapper(mode="none")
    _equal(m(dicts[2], dicts[3], rng()), plain(dicts[2], None, rng()))


def test_loader_stream_depends_only_on_seed_and_position(dicts):
    m = LossMixDatasetMapper(min_sizes=(80, 96), max_size=128, flip_prob=0.5)
    collate = MixCollate(Mixer(mode="lossmix", method="cutmix", min_visible=0.1, seed=5))

    def batches(start_iter, n, seed=5):
        ds = TrainDataset(dicts, m, seed=seed)
        positions = iter(TrainPositions(2, start_iter, rank=0, world_size=1))
        return [collate([ds[next(positions)] for _ in range(2)]) for _ in range(n)]

    full = batches(0, 4)
    resumed = batches(2, 2)
    for a, b in zip(full[2:], resumed):
        for x, y in zip(a, b):
            _equal(x, y)
    assert not torch.equal(batches(0, 1, seed=6)[0][0]["image"], full[0][0]["image"])
    # two ranks see disjoint positions of the same global stream
    r0 = list(zip(range(4), TrainPositions(2, 0, rank=0, world_size=2)))
    r1 = list(zip(range(4), TrainPositions(2, 0, rank=1, world_size=2)))
    assert [p for _, p in r0] == [0, 1, 4, 5] and [p for _, p in r1] == [2, 3, 6, 7]


def test_mixed_sample_with_no_boxes(dicts):
    empty = {**dicts[0], "annotations": []}
    out = _mapper(mode="lossmix", method="mixup")(empty, {**dicts[1], "annotations": []}, np.random.default_rng(0))
    assert out["target"]["boxes"].shape == (0, 4)
    back = to_model_input({"image": np.zeros((4, 4, 3), np.uint8), "boxes": np.zeros((0, 4)), "classes": np.zeros(0)})
    assert back["target"]["labels"].shape == (0,)


def test_visualiser_shows_exactly_what_the_loader_yields(dicts):
    """iter_mixed_samples uses the loader's own Mixer (partner rule and generators): same model inputs."""
    from torch.utils.data import DataLoader

    from lossmix.analysis.visualize import iter_mixed_samples

    mixer = Mixer(mode="lossmix", method="cutmix", min_visible=0.1, seed=3)
    m = LossMixDatasetMapper(min_sizes=(80, 96), max_size=128)
    loader = DataLoader(TrainDataset(dicts, m, seed=3), batch_size=2, sampler=TrainPositions(2, 0, rank=0, world_size=1),
                        collate_fn=MixCollate(mixer))
    batches = iter(loader)
    records = iter_mixed_samples(loader)
    for _ in range(2):
        for expected in next(batches):
            record = next(records)
            _equal(record["model_input"], expected)
            assert record["partner"] is not None and 0 < record["mixed"]["lam"] <= 1


def test_strong_augment_prob_changes_only_pixels_and_only_when_drawn(dicts):
    """INPUT.STRONG_AUGMENT_PROB: at 0 loading is exactly the weak mapper's (no extra random draw); at 1 every
    image gets the strong photometric augmentation on the same geometry, boxes untouched; ``weak_only`` drops it."""
    weak = LossMixDatasetMapper(min_sizes=(80, 96), max_size=128, flip_prob=0.5)
    never = LossMixDatasetMapper(min_sizes=(80, 96), max_size=128, flip_prob=0.5, strong_prob=0.0)
    always = LossMixDatasetMapper(min_sizes=(80, 96), max_size=128, flip_prob=0.5, strong_prob=1.0)
    for d in dicts[:3]:
        rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
        a, b = weak.load(d, rng_a), never.load(d, rng_b)
        assert np.array_equal(a["image"], b["image"]) and rng_a.random() == rng_b.random()  # same draws after
        c = always.load(d, np.random.default_rng(5))
        assert c["geometry"] == a["geometry"] and c["image"].shape == a["image"].shape
        np.testing.assert_array_equal(c["boxes"], a["boxes"])
        assert not np.array_equal(c["image"], a["image"])
        again = always.weak_only().load(d, np.random.default_rng(5))
        assert np.array_equal(again["image"], a["image"]) and always.strong_prob == 1.0
    # the draw at 0 < p < 1 is per image: some of many images are augmented, some not
    half = LossMixDatasetMapper(min_sizes=(80,), max_size=128, flip_prob=0.0, strong_prob=0.5)
    plain = LossMixDatasetMapper(min_sizes=(80,), max_size=128, flip_prob=0.0)
    changed = [not np.array_equal(half.load(dicts[0], np.random.default_rng(s))["image"],
                                  plain.load(dicts[0], np.random.default_rng(s))["image"]) for s in range(20)]
    assert 3 <= sum(changed) <= 17
