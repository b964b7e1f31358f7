"""Readers of untrusted dataset files: VOC XML, image files, COCO json. Every file is written in tmp_path."""
import json
import os
import time

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lossmix.data.catalog import DatasetCatalog, MetadataCatalog
from lossmix.data.coco import load_coco_json, register_coco
from lossmix.data.errors import BadSampleError
from lossmix.data.image_io import image_size, read_image
from lossmix.data.voc import VOC_CLASSES, load_voc_instances, parse_voc_xml, register_voc
from lossmix.structures import BoxMode

CLASSES = ("cat", "dog", "person")


def obj_xml(name, box, difficult=None, truncated=None):
    tags = f"<name>{name}</name>"
    if truncated is not None:
        tags += f"<truncated>{truncated}</truncated>"
    if difficult is not None:
        tags += f"<difficult>{difficult}</difficult>"
    xmin, ymin, xmax, ymax = box
    return (f"<object>{tags}<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def voc_xml(objects=(), width=100, height=80, filename="img.jpg"):
    name = f"<filename>{filename}</filename>" if filename else ""
    return (f"<annotation><folder>x</folder>{name}<size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{''.join(objects)}</annotation>")


def write_xml(root, image_id, text):
    path = root / "Annotations" / f"{image_id}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def parse_error(path, classes=CLASSES) -> BadSampleError:
    with pytest.raises(BadSampleError) as info:
        parse_voc_xml(path, classes)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    return info.value


# ---------------------------------------------------------------- VOC XML


def test_voc_classes_standard_order():
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[11] == "dog" and VOC_CLASSES[14] == "person"
    assert VOC_CLASSES[-1] == "tvmonitor"


def test_parse_normal_file(tmp_path):
    path = write_xml(tmp_path, "000005", voc_xml(
        [obj_xml("dog", (11, 21, 50, 60), difficult=0, truncated=1),
         obj_xml("person", (1, 1, 100, 80), difficult=1, truncated=0)],
        filename="000005.jpg"))
    record = parse_voc_xml(path, CLASSES)
    assert record["file_name"] == str(tmp_path / "JPEGImages" / "000005.jpg")
    assert record["image_id"] == "000005"
    assert (record["height"], record["width"]) == (80, 100)
    first, second = record["annotations"]
    assert first == {"bbox": [10.0, 20.0, 50.0, 60.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1,
                     "difficult": 0, "truncated": 1}
    # The full-image 1-based box maps exactly onto [0, W] x [0, H]: no clipping.
    assert second == {"bbox": [0.0, 0.0, 100.0, 80.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2,
                      "difficult": 1, "truncated": 0}


def test_parse_float_coords_and_one_pixel_box(tmp_path):
    path = write_xml(tmp_path, "a", voc_xml([obj_xml("cat", (10.5, 7, 10.5 + 3, 7))]))
    (ann,) = parse_voc_xml(path, CLASSES)["annotations"]
    assert ann["bbox"] == [9.5, 6.0, 13.5, 7.0]  # a one-pixel-high box (ymin == ymax) is valid


def test_missing_difficult_means_zero_and_filename_defaults_to_id(tmp_path):
    path = write_xml(tmp_path, "img7", voc_xml([obj_xml("cat", (5, 5, 9, 9))], filename=None))
    record = parse_voc_xml(path, CLASSES)
    (ann,) = record["annotations"]
    assert ann["difficult"] == 0
    assert "truncated" not in ann and "clipped" not in ann
    assert record["file_name"] == str(tmp_path / "JPEGImages" / "img7.jpg")


def test_unknown_class_names_class_and_file(tmp_path):
    path = write_xml(tmp_path, "u", voc_xml([obj_xml("cat", (1, 1, 5, 5)), obj_xml("zebra", (1, 1, 5, 5))]))
    err = parse_error(path)
    assert err.kind == "unknown_class"
    assert "'zebra'" in err.problem and "cat, dog, person" in err.problem


def test_case_variant_is_unknown_class_but_whitespace_is_stripped(tmp_path):
    err = parse_error(write_xml(tmp_path, "c", voc_xml([obj_xml("Dog", (1, 1, 5, 5))])))
    assert err.kind == "unknown_class" and "'Dog'" in err.problem
    record = parse_voc_xml(write_xml(tmp_path, "s", voc_xml([obj_xml("\n  dog \t", (1, 1, 5, 5))])), CLASSES)
    assert record["annotations"][0]["category_id"] == 1


@pytest.mark.parametrize("box", [(101, 10, 150, 20), (10, 81, 20, 90), (-30, -30, 0, 10), (5, -20, 20, 0)])
def test_box_entirely_outside_image(tmp_path, box):
    err = parse_error(write_xml(tmp_path, "o", voc_xml([obj_xml("dog", box)])))
    assert err.kind == "box_outside_image"
    assert "100x80" in err.problem


def test_box_partly_outside_is_clipped(tmp_path):
    path = write_xml(tmp_path, "p", voc_xml([obj_xml("dog", (0, -5, 120, 50)), obj_xml("cat", (90, 70, 100, 95)),
                                             obj_xml("cat", (2, 2, 4, 4))]))
    a, b, c = parse_voc_xml(path, CLASSES)["annotations"]
    assert a["bbox"] == [0.0, 0.0, 100.0, 50.0] and a["clipped"] is True
    assert b["bbox"] == [89.0, 69.0, 100.0, 80.0] and b["clipped"] is True
    assert c["bbox"] == [1.0, 1.0, 4.0, 4.0] and "clipped" not in c


def test_malformed_xml(tmp_path):
    path = write_xml(tmp_path, "m", "<annotation><size><width>10</width></size>")
    err = parse_error(path)
    assert err.kind == "malformed_xml" and "malformed XML" in err.problem
    assert parse_error(write_xml(tmp_path, "e", "")).kind == "malformed_xml"
    assert parse_error(write_xml(tmp_path, "r", "<foo><size/></foo>")).kind == "malformed_xml"


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE annotation [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>&lol9;</filename><size><width>10</width><height>10</height></size></annotation>
"""


def test_billion_laughs_rejected_without_expansion(tmp_path):
    path = write_xml(tmp_path, "bomb", BILLION_LAUGHS)
    start = time.perf_counter()
    err = parse_error(path)
    assert time.perf_counter() - start < 1.0  # expanding it would take gigabytes and far longer
    assert err.kind == "hostile_xml"
    assert "DTD" in err.problem and "lollol" not in str(err)


def test_external_entity_rejected(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    xml = (f'<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file://{secret}">]>'
           "<annotation><filename>&xxe;</filename><size><width>9</width><height>9</height></size></annotation>")
    err = parse_error(write_xml(tmp_path, "xxe", xml))
    assert err.kind == "hostile_xml" and "TOP-SECRET" not in str(err)


@pytest.mark.parametrize("box", [(10, 10, 8, 20), (10, 10, 20, 8), (11, 5, 10, 9)])
def test_degenerate_box(tmp_path, box):
    err = parse_error(write_xml(tmp_path, "d", voc_xml([obj_xml("cat", box)])))
    assert err.kind == "degenerate_box" and "object #0 (cat)" in err.problem


@pytest.mark.parametrize("text, fragment", [
    ("<annotation><filename>a.jpg</filename></annotation>", "no <size>"),
    ("<annotation><size><width>10</width></size></annotation>", "missing <height>"),
    (voc_xml(["<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>"]),
     "missing <name>"),
    (voc_xml(["<object><name>cat</name></object>"]), "missing <bndbox>"),
    (voc_xml([obj_xml("cat", (1, 1, "ten", 5))]), "<xmax> is not a finite number: 'ten'"),
    (voc_xml([obj_xml("cat", (1, 1, "nan", 5))]), "<xmax> is not a finite number: 'nan'"),
    (voc_xml([obj_xml("cat", (1, 1, 4, 5), difficult="yes")]), "<difficult> must be 0 or 1"),
])
def test_missing_field(tmp_path, text, fragment):
    err = parse_error(write_xml(tmp_path, "f", text))
    assert err.kind == "missing_field"
    assert fragment in err.problem


@pytest.mark.parametrize("width, height", [(0, 10), (10, -3), (10.5, 10)])
def test_invalid_size(tmp_path, width, height):
    err = parse_error(write_xml(tmp_path, "s", voc_xml(width=width, height=height)))
    assert err.kind == "invalid_size"


@pytest.mark.parametrize("filename", ["../../etc/passwd", "/etc/passwd", "sub/a.jpg", ".."])
def test_filename_that_leaves_jpegimages_is_refused(tmp_path, filename):
    err = parse_error(write_xml(tmp_path, "n", voc_xml(filename=filename)))
    assert err.kind == "invalid_filename"


def make_split(root, split, ids):
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(ids) + "\n")


def test_load_voc_instances_error_and_skip(tmp_path, caplog):
    write_xml(tmp_path, "good", voc_xml([obj_xml("dog", (1, 1, 10, 10))]))
    write_xml(tmp_path, "empty", voc_xml([]))
    write_xml(tmp_path, "bad", voc_xml([obj_xml("zebra", (1, 1, 10, 10))]))
    make_split(tmp_path, "train", ["good", "bad", "", "empty", "missing"])

    with pytest.raises(BadSampleError) as info:
        load_voc_instances(tmp_path, "train", CLASSES)
    assert info.value.kind == "unknown_class" and info.value.path.endswith("bad.xml")

    problems = []
    dicts = load_voc_instances(tmp_path, "train", CLASSES, on_bad="skip", problems=problems)
    assert [d["image_id"] for d in dicts] == ["good", "empty"]
    assert dicts[1]["annotations"] == []  # a negative image is kept
    assert [(p["kind"], os.path.basename(p["file"])) for p in problems] == [
        ("unknown_class", "bad.xml"), ("missing_file", "missing.xml")]
    assert "zebra" in problems[0]["problem"]
    assert "bad.xml" in caplog.text and "skipped 2 bad file(s)" in caplog.text

    with pytest.raises(ValueError, match="on_bad"):
        load_voc_instances(tmp_path, "train", CLASSES, on_bad="ignore")


def test_missing_split_file_points_to_readme(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_voc_instances(tmp_path, "trainval", CLASSES)
    message = str(info.value)
    assert str(tmp_path / "ImageSets" / "Main" / "trainval.txt") in message and "datasets/README.md" in message


def test_malformed_split_file(tmp_path):
    make_split(tmp_path, "train", ["000001 1"])
    with pytest.raises(BadSampleError) as info:
        load_voc_instances(tmp_path, "train", CLASSES, on_bad="skip")
    assert info.value.kind == "malformed_split" and "line 1" in info.value.problem


def test_register_voc_is_lazy_and_sets_metadata(tmp_path):
    name = "test_voc_register_lazy"
    register_voc(name, tmp_path, "val", CLASSES, year=2007, eval_classes=["dog"], use_07_metric=True)
    try:
        # Files written after registration are read at get() time.
        write_xml(tmp_path, "x", voc_xml([obj_xml("dog", (1, 1, 10, 10))]))
        make_split(tmp_path, "val", ["x"])
        (record,) = DatasetCatalog.get(name)
        assert record["annotations"][0]["category_id"] == 1
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(CLASSES) and meta.dirname == str(tmp_path) and meta.split == "val"
        assert (meta.year, meta.evaluator_type, meta.eval_classes, meta.use_07_metric) == (2007, "voc", ["dog"], True)
    finally:
        DatasetCatalog.remove(name)
    with pytest.raises(ValueError, match="zebra"):
        register_voc("test_voc_bad_eval", tmp_path, "val", CLASSES, eval_classes=["zebra"])
    assert "test_voc_bad_eval" not in DatasetCatalog


# Random boxes near the image: each either survives (possibly clipped) or raises with the first bad box's kind.
def _boxes(size):
    width, height = size
    corner_size = st.tuples(st.integers(-width // 4 - 2, width + 1), st.integers(-height // 4 - 2, height + 1),
                            st.integers(-1, width), st.integers(-1, height))
    box = corner_size.map(lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))  # VOC xmin, ymin, xmax, ymax
    return st.tuples(st.just(size), st.lists(box, max_size=4))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.tuples(st.integers(1, 120), st.integers(1, 120)).flatmap(_boxes))
def test_property_boxes_inside_image(tmp_path_factory, case):
    (width, height), boxes = case
    root = tmp_path_factory.mktemp("prop")
    path = write_xml(root, "p", voc_xml([obj_xml("cat", b) for b in boxes], width=width, height=height))
    expected_kind = None
    for xmin, ymin, xmax, ymax in boxes:
        x1, y1 = xmin - 1, ymin - 1
        if xmax <= x1 or ymax <= y1:
            expected_kind = "degenerate_box"
        elif xmax <= 0 or ymax <= 0 or x1 >= width or y1 >= height:
            expected_kind = "box_outside_image"
        if expected_kind:
            break
    if expected_kind:
        with pytest.raises(BadSampleError) as info:
            parse_voc_xml(path, CLASSES)
        assert info.value.kind == expected_kind
        return
    annotations = parse_voc_xml(path, CLASSES)["annotations"]
    assert len(annotations) == len(boxes)
    for ann, (xmin, ymin, xmax, ymax) in zip(annotations, boxes):
        x1, y1, x2, y2 = ann["bbox"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        outside = xmin - 1 < 0 or ymin - 1 < 0 or xmax > width or ymax > height
        assert ann.get("clipped", False) == outside
        if not outside:
            assert ann["bbox"] == [xmin - 1, ymin - 1, xmax, ymax]


# ---------------------------------------------------------------- image files


def read_error(path) -> BadSampleError:
    with pytest.raises(BadSampleError) as info:
        read_image(path)
    assert info.value.path == str(path)
    return info.value


def test_rgb_order(tmp_path):
    bgr = np.zeros((6, 8, 3), np.uint8)
    bgr[..., 2] = 255  # pure red written in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    cv2.imwrite(str(tmp_path / "red.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    conversions = []
    image = read_image(tmp_path / "red.png", conversions)
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8
    assert (image == [255, 0, 0]).all() and conversions == []
    jpeg = read_image(tmp_path / "red.jpg").astype(int)
    assert (jpeg[..., 0] >= 250).all() and (jpeg[..., 1:] <= 5).all()


def test_non_ascii_path(tmp_path):
    path = tmp_path / "imágenes 图像.png"
    cv2.imwrite(str(tmp_path / "plain.png"), np.full((3, 4, 3), (1, 2, 3), np.uint8))
    path.write_bytes((tmp_path / "plain.png").read_bytes())
    assert read_image(path)[0, 0].tolist() == [3, 2, 1]
    assert image_size(path) == (3, 4)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert read_error(path).kind == "empty_file"


def test_missing_file(tmp_path):
    assert read_error(tmp_path / "nope.jpg").kind == "missing_file"


def test_truncated_jpeg(tmp_path):
    ok, encoded = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encoded.tobytes()
    (tmp_path / "whole.jpg").write_bytes(data + b"\0" * 100)  # zero padding after EOI is fine
    assert read_image(tmp_path / "whole.jpg").shape == (64, 64, 3)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    err = read_error(tmp_path / "cut.jpg")
    assert err.kind == "corrupt_image" and "truncated JPEG" in err.problem


def test_truncated_png(tmp_path):
    ok, encoded = cv2.imencode(".png", np.zeros((10, 10, 3), np.uint8))
    (tmp_path / "cut.png").write_bytes(encoded.tobytes()[:-12])
    err = read_error(tmp_path / "cut.png")
    assert err.kind == "corrupt_image" and "truncated PNG" in err.problem


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    assert read_error(path).kind == "corrupt_image"


def test_grayscale_png(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    conversions = []
    image = read_image(tmp_path / "g.png", conversions)
    assert conversions == ["grayscale->rgb"]
    assert image.shape == (3, 4, 3)
    assert (image == gray[:, :, None]).all()


def test_rgba_png(tmp_path):
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[...] = (10, 20, 30, 0)  # fully transparent: alpha is dropped, colour kept
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    conversions = []
    image = read_image(tmp_path / "a.png", conversions)
    assert conversions == ["rgba->rgb"]
    assert image.shape == (2, 3, 3) and (image == [30, 20, 10]).all()


def test_16bit_png(tmp_path):
    values = np.array([[0, 257, 65535], [128 * 257, 256, 1000]], np.uint16)
    bgr16 = np.stack([values // 2, np.zeros_like(values), values], axis=-1)  # blue, green, red
    cv2.imwrite(str(tmp_path / "d.png"), bgr16)
    conversions = []
    image = read_image(tmp_path / "d.png", conversions)
    assert conversions == ["uint16->uint8"] and image.dtype == np.uint8
    assert image[..., 0].tolist() == [[0, 1, 255], [128, 1, 4]]  # red: round(v / 257)
    assert image[..., 1].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert image[..., 2].tolist() == [[0, 0, 127], [64, 0, 2]]  # blue: round((v // 2) / 257)
    cv2.imwrite(str(tmp_path / "g16.png"), values)
    conversions = []
    assert read_image(tmp_path / "g16.png", conversions)[1, 0].tolist() == [128, 128, 128]
    assert conversions == ["uint16->uint8", "grayscale->rgb"]


def test_image_size_from_headers(tmp_path):
    image = np.zeros((37, 53, 3), np.uint8)
    for ext in ("jpg", "png"):
        cv2.imwrite(str(tmp_path / f"i.{ext}"), image)
        assert image_size(tmp_path / f"i.{ext}") == (37, 53)
    cv2.imwrite(str(tmp_path / "i.bmp"), image)  # no header parser: decoded instead
    assert image_size(tmp_path / "i.bmp") == (37, 53)


# ---------------------------------------------------------------- COCO json


def coco_file(tmp_path, **overrides):
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 50, "width": 60},
                   {"id": 9, "file_name": "b.jpg", "height": 40, "width": 40}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 5, 20, 15], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [50, 40, 20, 20], "iscrowd": 1},
        ],
    }
    data.update(overrides)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_load_coco_json(tmp_path):
    dicts, names = load_coco_json(coco_file(tmp_path), tmp_path / "images")
    assert names == ["person", "dog"]  # sorted by category id
    a, b = dicts
    assert (a["file_name"], a["image_id"], a["height"], a["width"]) == (str(tmp_path / "images" / "a.jpg"), 7, 50, 60)
    first, crowd = a["annotations"]
    assert first == {"bbox": [10.0, 5.0, 30.0, 20.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1,
                     "difficult": 0, "iscrowd": 0}
    assert crowd["category_id"] == 0 and crowd["difficult"] == 1
    assert crowd["bbox"] == [50.0, 40.0, 60.0, 50.0] and crowd["clipped"] is True
    assert b["annotations"] == []  # images without annotations are kept

    dicts, names = load_coco_json(coco_file(tmp_path), tmp_path, class_names=["dog", "person"])
    assert names == ["dog", "person"] and [x["category_id"] for x in dicts[0]["annotations"]] == [0, 1]


@pytest.mark.parametrize("ann, kind", [
    ({"id": 3, "image_id": 9, "category_id": 5, "bbox": [1, 1, 2, 2]}, "unknown_class"),
    ({"id": 3, "image_id": 9, "category_id": 1, "bbox": [1, 1, 0, 2]}, "degenerate_box"),
    ({"id": 3, "image_id": 9, "category_id": 1, "bbox": [45, 1, 3, 2]}, "box_outside_image"),
    ({"id": 3, "image_id": 9, "category_id": 1, "bbox": [1, 1, 2]}, "missing_field"),
])
def test_coco_bad_annotation(tmp_path, ann, kind):
    path = coco_file(tmp_path, annotations=[ann])
    with pytest.raises(BadSampleError) as info:
        load_coco_json(path, tmp_path)
    assert info.value.kind == kind and info.value.path == str(path) and "annotation 3" in info.value.problem
    problems = []
    dicts, _ = load_coco_json(path, tmp_path, on_bad="skip", problems=problems)
    assert [d["image_id"] for d in dicts] == [7] and [p["kind"] for p in problems] == [kind]


def test_coco_class_outside_given_list_and_malformed(tmp_path):
    with pytest.raises(BadSampleError, match="'dog' is not in the class list") as info:
        load_coco_json(coco_file(tmp_path), tmp_path, class_names=["person"])
    assert info.value.kind == "unknown_class"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BadSampleError) as info:
        load_coco_json(bad, tmp_path)
    assert info.value.kind == "malformed_json" and info.value.path == str(bad)
    with pytest.raises(BadSampleError) as info:
        load_coco_json(coco_file(tmp_path, annotations=[{"id": 4, "image_id": 99, "category_id": 1,
                                                         "bbox": [1, 1, 2, 2]}]), tmp_path)
    assert info.value.kind == "unknown_image"


def test_register_coco(tmp_path):
    name = "test_coco_register"
    register_coco(name, coco_file(tmp_path), tmp_path)
    try:
        assert MetadataCatalog.get(name).evaluator_type == "coco"
        assert len(DatasetCatalog.get(name)) == 2
        assert MetadataCatalog.get(name).thing_classes == ["person", "dog"]
    finally:
        DatasetCatalog.remove(name)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "cp037"])
def test_dtd_hidden_by_a_non_ascii_encoding_is_still_refused(tmp_path, encoding):
    """The C-parser fast path only takes files that plainly have no DTD in ASCII; a DTD spelled in
    UTF-16 or EBCDIC (which expat reads via Python's codecs) goes to defusedxml and is refused."""
    declared = BILLION_LAUGHS.replace('<?xml version="1.0"?>', f'<?xml version="1.0" encoding="{encoding}"?>')
    path = tmp_path / f"hidden_{encoding}.xml"
    data = declared.encode(encoding)
    if encoding == "utf-16-le":
        data = b"\xff\xfe" + data
    path.write_bytes(data)
    assert b"<!DOCTYPE" not in data
    err = parse_error(str(path))
    assert err.kind in ("hostile_xml", "malformed_xml") and "lollol" not in str(err)


def _jpeg(tmp_path, name, tail=b""):
    ok, encoded = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    (tmp_path / name).write_bytes(encoded.tobytes() + tail)
    return tmp_path / name, encoded.tobytes()


def test_jpeg_with_a_trailer_is_read_and_truncation_still_refused(tmp_path):
    path, data = _jpeg(tmp_path, "motion.jpg", b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    assert read_image(path).shape == (32, 48, 3)
    for cut in (len(data) - 2, len(data) * 2 // 3):
        (tmp_path / "cut.jpg").write_bytes(data[:cut] + b"\x00" * 50)
        with pytest.raises(BadSampleError, match="truncated JPEG"):
            read_image(tmp_path / "cut.jpg")


def test_image_path_from_the_id_and_odd_truncated_flags(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    _jpeg(tmp_path / "JPEGImages", "000001.jpg")
    xml = tmp_path / "Annotations" / "000001.xml"
    xml.write_text("<annotation><filename>IMG_1234.JPG</filename><size><width>48</width><height>32</height></size>"
                   "<object><name>cat</name><truncated>2</truncated><bndbox><xmin>1</xmin><ymin>1</ymin>"
                   "<xmax>10</xmax><ymax>10</ymax></bndbox></object></annotation>")
    record = parse_voc_xml(xml, ["cat"])
    assert record["file_name"] == str(tmp_path / "JPEGImages" / "000001.jpg")  # not the stale IMG_1234.JPG
    assert record["annotations"][0]["bbox"] == [0.0, 0.0, 10.0, 10.0] and "truncated" not in record["annotations"][0]
    os.remove(tmp_path / "JPEGImages" / "000001.jpg")
    _jpeg(tmp_path / "JPEGImages", "IMG_1234.JPG")
    assert parse_voc_xml(xml, ["cat"])["file_name"] == str(tmp_path / "JPEGImages" / "IMG_1234.JPG")
