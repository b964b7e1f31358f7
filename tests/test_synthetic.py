"""The embedded synthetic benchmark: determinism, VOC validity, domain statistics, stamps."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from defusedxml import ElementTree

from lossmix.data import synthetic
from lossmix.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_DOMAINS, generate, render_sample

TINY = {"num_train": 4, "num_test": 2}


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, seed=0, **TINY)
    return root


def test_same_seed_is_byte_identical_and_other_seed_differs(tiny, tmp_path):
    generate(tmp_path / "again", seed=0, workers=2, **TINY)  # threads must not change the bytes
    generate(tmp_path / "other", seed=1, **TINY)
    first, again, other = _files(tiny), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert len(first) == 3 * (2 * (4 + 2) + 2 + 1)  # xml + jpg per image, 2 image sets, 1 stamp
    assert first == again
    jpgs = [name for name in first if name.endswith(".jpg")]
    assert all(first[name] != other[name] for name in jpgs)


def test_images_do_not_depend_on_how_many_are_generated(tiny, tmp_path):
    generate(tmp_path, seed=0, num_train=2, num_test=1, domains=["clipart"])
    small = _files(tmp_path / "clipart")
    full = _files(tiny / "clipart")
    shared = [name for name in small if name.startswith(("JPEGImages", "Annotations"))]
    assert len(shared) == 2 * 3
    assert all(small[name] == full[name] for name in shared)


@pytest.mark.parametrize("domain", SYNTHETIC_DOMAINS)
def test_annotations_are_valid_voc(tiny, domain):
    directory = tiny / domain
    ids = sorted(p.stem for p in (directory / "Annotations").glob("*.xml"))
    assert ids == sorted(p.stem for p in (directory / "JPEGImages").glob("*.jpg"))
    num_objects = 0
    for image_id in ids:
        root = ElementTree.parse(directory / "Annotations" / f"{image_id}.xml").getroot()
        assert root.tag == "annotation"
        assert root.findtext("folder") == domain
        assert root.findtext("filename") == f"{image_id}.jpg"
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
        assert int(root.findtext("size/depth")) == 3
        image = cv2.imread(str(directory / "JPEGImages" / f"{image_id}.jpg"), cv2.IMREAD_COLOR)
        assert image.shape == (height, width, 3)
        objects = root.findall("object")
        assert 1 <= len(objects) <= synthetic.OBJECTS_PER_IMAGE[1]
        for obj in objects:
            assert obj.findtext("name") in SYNTHETIC_CLASSES
            assert obj.findtext("pose") == "Unspecified"
            assert obj.findtext("truncated") in ("0", "1")
            assert obj.findtext("difficult") in ("0", "1")
            xmin, ymin, xmax, ymax = (int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            # 1-based inclusive pixel indices inside the image, non-degenerate
            assert 1 <= xmin < xmax <= width
            assert 1 <= ymin < ymax <= height
            num_objects += 1
    assert num_objects >= 2 * len(ids) * 0.5


@pytest.mark.parametrize("domain", SYNTHETIC_DOMAINS)
def test_image_sets_list_exactly_the_generated_ids(tiny, domain):
    main = tiny / domain / "ImageSets" / "Main"
    assert sorted(p.name for p in main.iterdir()) == ["test.txt", "train.txt"]
    train = (main / "train.txt").read_text().split()
    test = (main / "test.txt").read_text().split()
    assert len(train) == TINY["num_train"] and len(test) == TINY["num_test"]
    assert not set(train) & set(test)
    on_disk = {p.stem for p in (tiny / domain / "Annotations").glob("*.xml")}
    assert set(train) | set(test) == on_disk
    assert all(i.startswith(f"{domain}_") for i in on_disk)  # unique across domains


def test_files_on_disk_match_render_sample_in_rgb_order(tiny):
    image_id = "source_train_00001"
    rgb, annotations = render_sample("source", seed=0, split="train", index=1)
    bgr = cv2.imread(str(tiny / "source" / "JPEGImages" / f"{image_id}.jpg"), cv2.IMREAD_COLOR)
    on_disk = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
    assert np.abs(on_disk - rgb).mean() < 3.0  # JPEG loss only; swapped channels would be far off
    root = ElementTree.parse(tiny / "source" / "Annotations" / f"{image_id}.xml").getroot()
    boxes = [[int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")] for o in root.findall("object")]
    # XML is 1-based inclusive; in memory XYXY_ABS with exclusive ends: x1 = xmin - 1, x2 = xmax
    assert boxes == [[a["bbox"][0] + 1, a["bbox"][1] + 1, a["bbox"][2], a["bbox"][3]] for a in annotations]


def test_boxes_cover_the_visible_object_pixels():
    image, annotations = render_sample("clipart", seed=3, index=0, image_size=(128, 160))
    assert image.shape == (128, 160, 3) and image.dtype == np.uint8
    for ann in annotations:
        x1, y1, x2, y2 = ann["bbox"]
        assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 128
        assert 0 < ann["visible_fraction"] <= 1
        assert ann["difficult"] == int(ann["visible_fraction"] < synthetic.DIFFICULT_BELOW_VISIBLE)


def _object_centre_hues(domain: str, num_images: int, **kwargs):
    """(class name, hue in degrees, saturation) at the centre of each unoccluded, large-enough object."""
    for index in range(num_images):
        image, annotations = render_sample(domain, seed=0, split="test", index=index, **kwargs)
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL).astype(np.float64)
        for ann in annotations:
            name = SYNTHETIC_CLASSES[ann["category_id"]]
            x1, y1, x2, y2 = ann["bbox"]
            if name == "ring" or ann["visible_fraction"] < 1 or x2 - x1 < 24:  # a ring's centre is background
                continue
            cx, cy, r = int((x1 + x2) / 2), int((y1 + y2) / 2), max(1, int(0.08 * (x2 - x1)))
            patch = hsv[cy - r:cy + r + 1, cx - r:cx + r + 1].reshape(-1, 3)
            hue = np.degrees(np.angle(np.exp(1j * patch[:, 0] / 256 * 2 * np.pi).mean())) % 360
            yield name, hue, np.median(patch[:, 1]) / 255


@pytest.mark.parametrize("class_hue_prob", [0.9, 0.4])
def test_colour_cue_probability_is_measured_on_the_pixels(class_hue_prob):
    # An object shows its class's hue (within 30 degrees) with probability p, plus (1 - p) / 6 by
    # chance when its hue is drawn uniformly: the knob must be what the generated pixels show.
    near = [abs((hue - synthetic.SOURCE_CLASS_HUE_DEG[name] + 180) % 360 - 180) <= 30
            for name, hue, _ in _object_centre_hues("source", 60, class_hue_prob=class_hue_prob)]
    assert len(near) >= 60
    expected = class_hue_prob + (1 - class_hue_prob) / 6
    assert abs(np.mean(near) - expected) < 0.1, (np.mean(near), expected)


def test_colour_cue_knob_changes_only_the_source_and_is_stamped(tmp_path):
    a, _ = render_sample("clipart", seed=0, index=2, class_hue_prob=0.2)
    b, _ = render_sample("clipart", seed=0, index=2)
    assert np.array_equal(a, b)
    generate(tmp_path, seed=0, domains=["source", "clipart"], class_hue_prob=0.3, **TINY)
    assert synthetic.read_stamp(tmp_path / "source")["class_hue_prob"] == 0.3
    assert "class_hue_prob" not in synthetic.read_stamp(tmp_path / "clipart")
    summary = generate(tmp_path, seed=0, domains=["source", "clipart"], class_hue_prob=0.5, **TINY)
    assert summary["domains"]["source"]["status"] == "regenerated"
    assert summary["domains"]["clipart"]["status"] == "skipped"
    with pytest.raises(ValueError, match="class_hue_prob"):
        generate(tmp_path, domains=["source"], class_hue_prob=1.5, **TINY)


def _class_hue_concentration(domain: str, num_images: int, **kwargs) -> tuple:
    """Mean over classes of the resultant length of object hues (1: one hue per class, ~0: any hue),
    and the median object saturation, measured from pixels at the centres of unoccluded objects."""
    hues = {name: [] for name in SYNTHETIC_CLASSES if name != "ring"}
    saturations = []
    for name, hue, saturation in _object_centre_hues(domain, num_images, **kwargs):
        hues[name].append(np.radians(hue))
        saturations.append(saturation)
    assert min(len(h) for h in hues.values()) >= 5, "too few objects to measure"
    concentration = np.mean([abs(np.exp(1j * np.array(h)).mean()) for h in hues.values()])
    return concentration, float(np.median(saturations))


def test_colour_identifies_the_class_in_the_source_only():
    source, source_sat = _class_hue_concentration("source", 30, class_hue_prob=0.9)
    calibrated, _ = _class_hue_concentration("source", 30)  # SOURCE_CLASS_HUE_PROB: a partial cue
    clipart, clipart_sat = _class_hue_concentration("clipart", 30)
    watercolor, watercolor_sat = _class_hue_concentration("watercolor", 30)
    assert source > 0.7
    assert 0.45 < calibrated < 0.65  # about half the objects show their class's hue, the rest any hue
    assert clipart < 0.5 and watercolor < 0.5  # a uniform hue scores ~0.3 with this many objects
    assert clipart_sat > 0.8  # flat saturated palette
    assert watercolor_sat < 0.5 and watercolor_sat + 0.15 < source_sat  # washed-out pigments


def test_matching_stamp_is_skipped(tmp_path):
    first = generate(tmp_path, seed=0, domains=["watercolor"], **TINY)
    assert first["domains"]["watercolor"]["status"] == "generated"
    stamp = json.loads((tmp_path / "watercolor" / synthetic.STAMP_NAME).read_text())
    assert stamp["seed"] == 0 and stamp["num_train"] == 4 and stamp["classes"] == list(SYNTHETIC_CLASSES)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "watercolor").rglob("*")}
    second = generate(tmp_path, seed=0, domains=["watercolor", "clipart"], **TINY)
    assert second["domains"]["watercolor"]["status"] == "skipped"
    assert second["domains"]["clipart"]["status"] == "generated"
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "watercolor").rglob("*")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clipart", "watercolor"]  # no partial folders


def test_folder_with_other_parameters_is_regenerated(tmp_path):
    generate(tmp_path, seed=0, domains=["source"], **TINY)
    summary = generate(tmp_path, seed=0, num_train=3, num_test=2, domains=["source"])
    assert summary["domains"]["source"]["status"] == "regenerated"
    assert len(list((tmp_path / "source" / "Annotations").iterdir())) == 5  # old files gone
    assert synthetic.read_stamp(tmp_path / "source")["num_train"] == 3


def test_folder_without_stamp_is_not_clobbered_unless_overwrite(tmp_path):
    (tmp_path / "clipart").mkdir()
    (tmp_path / "clipart" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(tmp_path, domains=["clipart", "source"], **TINY)
    assert (tmp_path / "clipart" / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clipart"]  # checked before writing anything
    summary = generate(tmp_path, domains=["clipart"], overwrite=True, **TINY)
    assert summary["domains"]["clipart"]["status"] == "generated"
    assert not (tmp_path / "clipart" / "mine.txt").exists()


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"num_train": -2}, {"image_size": 32},
                                    {"image_size": (64, 64, 3)}, {"domains": ["photo"]}, {"workers": 0}])
def test_bad_arguments_raise(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate(tmp_path, **{**TINY, **kwargs})
