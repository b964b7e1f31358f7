"""The dataset catalog's ``name[:N]`` subsets (data-limited training and its train-split evaluation)."""
import pytest

from lossmix.data.catalog import DatasetCatalog, MetadataCatalog, split_subset


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
    from lossmix.utils.logger import user_errors

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
