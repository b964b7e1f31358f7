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
