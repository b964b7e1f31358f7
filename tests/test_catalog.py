"""The dataset catalog's ``name[:N]`` subsets (data-limited training and its train-split evaluation)."""
import json

import pytest

from lossmix.config.setup import ConfigError
from lossmix.data.catalog import DatasetCatalog, MetadataCatalog, split_subset
from lossmix.data.synthetic import SYNTHETIC_CLASSES, generate
from lossmix.engine.defaults import setup
from lossmix.engine.run import run as train

from .helpers import load_tool, make_tiny_dataset, tiny_cfg, tiny_opts


@pytest.fixture
def five():
    name = "test_catalog_five"
    DatasetCatalog.register(name, lambda: [{"image_id": str(i)} for i in range(5)])
    MetadataCatalog.get(name).set(thing_classes=["a", "b"])
    yield name
    DatasetCatalog.remove(name)


def test_subset_is_the_first_images_in_order_with_the_datasets_metadata(five):
    assert [d["image_id"] for d in DatasetCatalog.get(f"{five}[:3]")] == ["0", "1", "2"]
    assert len(DatasetCatalog.get(f"{five}[:5]")) == 5
    assert MetadataCatalog.get(f"{five}[:3]").thing_classes == ["a", "b"]
    assert split_subset(f"{five}[:3]") == (five, 3) and split_subset(five) == (five, None)


@pytest.mark.parametrize("count", [0, 6])
def test_subset_larger_than_the_dataset_or_empty_is_an_error(five, count):
    with pytest.raises(ValueError, match=rf"first {count} images of '{five}', which has 5"):
        DatasetCatalog.get(f"{five}[:{count}]")


def test_subset_of_an_unknown_dataset_names_it():
    with pytest.raises(KeyError, match=r"'nope\[:3\]' is not registered"):
        DatasetCatalog.get("nope[:3]")


def test_subset_larger_than_the_dataset_is_a_user_error(five):
    from lossmix.config.setup import ConfigError
    from lossmix.engine.defaults import user_errors

    with pytest.raises(ConfigError) as err:
        DatasetCatalog.get(f"{five}[:9]")
    assert isinstance(err.value, user_errors())  # one error line from the tools, not a traceback


def test_a_missing_custom_folder_is_not_told_to_set_lossmix_datasets(tmp_path):
    from lossmix.config.setup import build_config
    from lossmix.data.builtin import register_custom

    folder = tmp_path / "nowhere"
    register_custom(build_config("", ["DATASETS.CUSTOM_VOC", f"('gone_train:{folder}:train',)",
                                      "DATASETS.CUSTOM_CLASSES", "('cat',)"]))
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("gone_train")
    assert str(folder) in str(err.value) and "does not exist" in str(err.value)
    assert "LOSSMIX_DATASETS" not in str(err.value) and "DATASETS.CUSTOM_VOC entry" in str(err.value)
    DatasetCatalog.remove("gone_train")


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("catalog") / "data", num_train=4, num_test=2)


def test_num_classes_checked_against_the_dataset(names, tmp_path):
    from lossmix.data.catalog import check_num_classes

    for wrong in (3, 9):
        cfg = tiny_cfg(names, tmp_path, **{"MODEL.ROI_HEADS.NUM_CLASSES": wrong})
        message = (f"MODEL.ROI_HEADS.NUM_CLASSES = {wrong} but dataset '{names['source_train']}' has 6 classes "
                   f"\\({', '.join(SYNTHETIC_CLASSES)}\\); set MODEL.ROI_HEADS.NUM_CLASSES 6")
        with pytest.raises(ConfigError, match=message):
            train(cfg)
    check_num_classes(6, [names["source_train"], names["source_test"]])


def test_custom_voc_folder_from_the_config(tmp_path, capsys):
    generate(str(tmp_path / "mine"), seed=1, num_train=2, num_test=2, image_size=96, domains=("source",))
    folder = tmp_path / "mine" / "source"
    opts = ["DATASETS.CUSTOM_VOC", f"('pets_train:{folder}:train', 'pets_test:{folder}:test')",
            "DATASETS.CUSTOM_CLASSES", repr(tuple(SYNTHETIC_CLASSES)), "DATASETS.CUSTOM_METRIC", "voc07"]
    (tmp_path / "mine.yaml").write_text(
        "DATASETS:\n  CUSTOM_VOC: ['pets_train:%s:train', 'pets_test:%s:test']\n  CUSTOM_CLASSES: %s\n"
        "  TRAIN: ('pets_train',)\n  TEST: ('pets_test',)\n" % (folder, folder, json.dumps(list(SYNTHETIC_CLASSES))))
    assert load_tool("check_dataset").main(["--config-file", str(tmp_path / "mine.yaml"), "--no-images"]) == 0
    printed = capsys.readouterr().out
    assert "== pets_train" in printed and "== pets_test" in printed
    names = {"source_train": "pets_train", "source_test": "pets_test"}
    cfg = setup("", tiny_opts(names, tmp_path / "out", **{"SOLVER.MAX_ITER": 1}) + opts)
    result = train(cfg)
    assert result["results"]["pets_test"]["model"]["metric"] == "voc07_11point"
    assert len(DatasetCatalog.get("pets_train")) == 2
