"""Dataset checker: every bad-input kind is reported with its file and level; the CLI's exit status."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lossmix.data.catalog import DatasetCatalog
from lossmix.data.validate import Problem, check_dataset_dicts, check_voc_folder, format_report, summarize
from lossmix.data.voc import register_voc
from lossmix.structures import BoxMode

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "check_dataset.py"
CLASSES = ("cat", "dog")
W, H = 40, 30


def obj(name, box):
    x1, y1, x2, y2 = box
    return (f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
            f"<ymax>{y2}</ymax></bndbox></object>")


def xml(filename, objects, width=W, height=H):
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"</size>{''.join(objects)}</annotation>")


def jpeg_bytes(height=H, width=W):
    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), 120, np.uint8))
    return data.tobytes()


def png_bytes(array):
    ok, data = cv2.imencode(".png", array)
    return data.tobytes()


GOOD_BOX = [obj("dog", (2, 3, 20, 25))]
HOSTILE = ('<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
           "<annotation><filename>&b;</filename></annotation>")

# id -> (annotation text or None, image file name, image bytes or None)
BAD_FOLDER = {
    "good": (xml("good.jpg", GOOD_BOX), "good.jpg", jpeg_bytes()),
    "empty": (xml("empty.jpg", GOOD_BOX), "empty.jpg", b""),
    "trunc": (xml("trunc.jpg", GOOD_BOX), "trunc.jpg", jpeg_bytes()[:300]),
    "garbage": (xml("garbage.jpg", GOOD_BOX), "garbage.jpg", b"not an image at all" * 10),
    "sizemis": (xml("sizemis.jpg", GOOD_BOX), "sizemis.jpg", jpeg_bytes(20, 20)),
    "rotated": (xml("rotated.jpg", GOOD_BOX), "rotated.jpg", jpeg_bytes(W, H)),
    "malformed": ("<annotation><size>", "malformed.jpg", jpeg_bytes()),
    "hostile": (HOSTILE, "hostile.jpg", jpeg_bytes()),
    "nosize": ("<annotation><filename>nosize.jpg</filename></annotation>", "nosize.jpg", jpeg_bytes()),
    "badsize": (xml("badsize.jpg", GOOD_BOX, width=0), "badsize.jpg", jpeg_bytes()),
    "unknown": (xml("unknown.jpg", [obj("zebra", (2, 3, 20, 25)), obj("dog", (15, 3, 10, 25))]), "unknown.jpg",
                jpeg_bytes()),
    "outside": (xml("outside.jpg", [obj("cat", (45, 3, 60, 25))]), "outside.jpg", jpeg_bytes()),
    "clipped": (xml("clipped.jpg", [obj("cat", (30, 0, 50, 25))]), "clipped.jpg", jpeg_bytes()),
    "noobj": (xml("noobj.jpg", []), "noobj.jpg", jpeg_bytes()),
    "gray": (xml("gray.png", GOOD_BOX), "gray.png", png_bytes(np.full((H, W), 9, np.uint8))),
    "rgba": (xml("rgba.png", GOOD_BOX), "rgba.png", png_bytes(np.full((H, W, 4), 9, np.uint8))),
    "deep": (xml("deep.png", GOOD_BOX), "deep.png", png_bytes(np.full((H, W, 3), 999, np.uint16))),
    "nojpeg": (xml("nojpeg.jpg", GOOD_BOX), "nojpeg.jpg", None),
    "noxml": (None, "noxml.jpg", jpeg_bytes()),
}

# (file, kind, level) expected from BAD_FOLDER with the split listing every id.
EXPECTED = {
    ("empty.jpg", "empty_file", "error"),
    ("trunc.jpg", "corrupt_image", "error"),
    ("garbage.jpg", "corrupt_image", "error"),
    ("sizemis.jpg", "size_mismatch", "error"),
    ("rotated.jpg", "size_mismatch", "error"),
    ("malformed.xml", "malformed_xml", "error"),
    ("hostile.xml", "hostile_xml", "error"),
    ("nosize.xml", "missing_field", "error"),
    ("badsize.xml", "invalid_size", "error"),
    ("unknown.xml", "unknown_class", "error"),
    ("unknown.xml", "degenerate_box", "error"),  # every bad object of a file is reported
    ("outside.xml", "box_outside_image", "error"),
    ("clipped.xml", "box_clipped", "warning"),
    ("noobj.xml", "no_objects", "warning"),
    ("gray.png", "converted_grayscale", "info"),
    ("rgba.png", "converted_alpha", "info"),
    ("deep.png", "converted_16bit", "info"),
    ("nojpeg.jpg", "missing_file", "error"),
    ("noxml.xml", "missing_file", "error"),
}


def make_folder(root: Path, spec: dict, split="train") -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, (annotation, image_name, image) in spec.items():
        if annotation is not None:
            (root / "Annotations" / f"{image_id}.xml").write_text(annotation)
        if image is not None:
            (root / "JPEGImages" / image_name).write_bytes(image)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(spec) + "\n")
    return root


def found(problems):
    return {(os.path.basename(p.file), p.kind, p.level) for p in problems}


def test_check_voc_folder_reports_every_problem(tmp_path):
    root = make_folder(tmp_path / "voc", BAD_FOLDER)
    problems = check_voc_folder(root, "train", CLASSES)
    assert found(problems) == EXPECTED
    assert len(problems) == len(EXPECTED)
    by_file = {os.path.basename(p.file): p for p in problems}
    assert "(swapped: EXIF rotation" in by_file["rotated.jpg"].message
    assert "20x20 (WxH) on disk but annotated as 40x30" in by_file["sizemis.jpg"].message
    assert "clipped to [29, 0, 40, 25]" in by_file["clipped.xml"].message
    assert "listed in train.txt" in by_file["noxml.xml"].message


def test_check_voc_folder_without_split_checks_every_xml(tmp_path):
    root = make_folder(tmp_path / "voc", BAD_FOLDER)
    assert found(check_voc_folder(root, None, CLASSES)) == EXPECTED - {("noxml.xml", "missing_file", "error")}
    images_skipped = found(check_voc_folder(root, None, CLASSES, check_images=False))
    assert ("trunc.jpg", "corrupt_image", "error") not in images_skipped
    assert ("nojpeg.jpg", "missing_file", "error") in images_skipped


def test_check_voc_folder_missing_split_and_duplicates(tmp_path):
    root = make_folder(tmp_path / "voc", {"good": BAD_FOLDER["good"]})
    (problem,) = check_voc_folder(root, "val", CLASSES)
    assert (problem.kind, problem.level) == ("missing_file", "error") and problem.file.endswith("val.txt")
    (root / "ImageSets" / "Main" / "dup.txt").write_text("good\ngood\n")
    assert found(check_voc_folder(root, "dup", CLASSES)) == {("dup.txt", "duplicate_id", "warning")}
    assert found(check_voc_folder(tmp_path, None, CLASSES)) == {("Annotations", "missing_file", "error")}


def test_check_dataset_dicts(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    image = {"file_name": str(tmp_path / "a.jpg"), "height": H, "width": W}

    def ann(bbox, category=0, mode=BoxMode.XYXY_ABS, **extra):
        return {"bbox": bbox, "bbox_mode": mode, "category_id": category, **extra}

    dicts = [
        {**image, "annotations": [ann([0, 0, 10, 10]), ann([5, 5, 3, 4], mode=BoxMode.XYWH_ABS)]},
        {**image, "annotations": [ann([5, 5, 5, 9]), ann([50, 0, 60, 9]), ann([30, 0, 45, 9]),
                                  ann([1, 1, 5, 5], category=7), ann([0, 0, 40, 9], clipped=True)]},
        {**image, "annotations": []},
        {"file_name": "x.jpg", "annotations": []},
        {**image, "file_name": str(tmp_path / "missing.jpg"), "annotations": [ann([0, 0, 1, 1])]},
    ]
    problems = check_dataset_dicts(dicts, CLASSES)
    assert sorted((os.path.basename(p.file), p.kind, p.level) for p in problems) == sorted([
        ("a.jpg", "degenerate_box", "error"),
        ("a.jpg", "box_outside_image", "error"),
        ("a.jpg", "box_partly_outside", "warning"),
        ("a.jpg", "unknown_class", "error"),
        ("a.jpg", "box_clipped", "warning"),
        ("a.jpg", "no_objects", "warning"),
        ("x.jpg", "missing_field", "error"),
        ("missing.jpg", "missing_file", "error"),
    ])


def test_summary_table():
    problems = [Problem("a", "no_objects", "warning", "m"), Problem("b", "corrupt_image", "error", "m"),
                Problem("c", "corrupt_image", "error", "m"), Problem("d", "converted_alpha", "info", "m")]
    assert summarize(problems) == [("corrupt_image", "error", 2), ("no_objects", "warning", 1),
                                   ("converted_alpha", "info", 1)]
    report = format_report(problems)
    assert report.splitlines()[0] == "WARNING no_objects           a: m"
    assert report.splitlines()[-1] == "4 problem(s), 2 error(s)"
    with pytest.raises(ValueError):
        Problem("a", "k", "fatal", "m")


def run_tool(*args, cwd):
    # Run as a plain script from elsewhere: it must find the package without an install.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=60)


def test_cli_on_bad_folder_exits_1_and_lists_every_kind(tmp_path):
    root = make_folder(tmp_path / "voc", BAD_FOLDER)
    result = run_tool(root, "--split", "train", "--classes", " cat, dog", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    for file, kind, level in EXPECTED:
        assert any(line.startswith(level.upper()) and kind in line and file in line for line in lines), (file, kind)
    summary = lines[lines.index(next(line for line in lines if line.startswith("kind"))):]
    assert any(line.split() == ["corrupt_image", "error", "2"] for line in summary)
    assert any(line.split() == ["missing_file", "error", "2"] for line in summary)
    assert summary[-1] == f"{len(EXPECTED)} problem(s), {len(EXPECTED) - 5} error(s)"


def test_cli_on_clean_folder_exits_0(tmp_path):
    spec = {k: BAD_FOLDER[k] for k in ("good", "gray")}
    root = make_folder(tmp_path / "voc", spec)
    result = run_tool(root, "--classes", "dog,cat", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "converted_grayscale" in result.stdout and result.stdout.splitlines()[-1] == "1 problem(s), 0 error(s)"
    # The default class list is VOC's 20 classes, which include dog (checked in-process: faster).
    assert load_tool().main([str(root)]) == 0


def load_tool():
    spec = importlib.util.spec_from_file_location("check_dataset_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_on_registered_names(tmp_path, capsys, monkeypatch):
    tool = load_tool()
    monkeypatch.setattr(tool, "_register_builtin", lambda: None)  # keep the standard names out of this process
    root = make_folder(tmp_path / "voc", {k: BAD_FOLDER[k] for k in ("good", "outside", "noobj")})
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    in_memory = [{"file_name": str(tmp_path / "a.jpg"), "height": H, "width": W, "annotations": []}]
    register_voc("test_check_voc_name", root, "train", CLASSES)
    DatasetCatalog.register("test_check_dicts_name", lambda: in_memory)
    try:
        assert tool.main(["test_check_voc_name"]) == 1
        out = capsys.readouterr().out
        assert "box_outside_image" in out and "outside.xml" in out and "no_objects" in out
        assert tool.main(["test_check_dicts_name"]) == 0
        assert "no_objects" in capsys.readouterr().out
        assert tool.main(["no_such_dataset_name"]) == 2
        assert "neither a folder nor a registered dataset" in capsys.readouterr().err
    finally:
        DatasetCatalog.remove("test_check_voc_name")
        DatasetCatalog.remove("test_check_dicts_name")


def test_folder_without_classes_summarises_unknown_classes_and_counts_per_class(tmp_path, capsys):
    fruit = {f"f{i}": (xml(f"f{i}.jpg", [obj("apple", (2, 3, 20, 25))] * (i + 1) + [obj("banana", (5, 5, 15, 15))]),
                       f"f{i}.jpg", jpeg_bytes()) for i in range(3)}
    fruit["d"] = (xml("d.jpg", GOOD_BOX), "d.jpg", jpeg_bytes())
    root = make_folder(tmp_path / "fruit", fruit)
    tool = load_tool()
    assert tool.main([str(root), "--no-images"]) == 1
    out = capsys.readouterr().out.splitlines()
    unknown = [line for line in out if line.startswith("ERROR") and "unknown_class" in line]
    assert len(unknown) == 1 and "20 VOC classes" in unknown[0] and "known classes" not in unknown[0]
    assert "9 object(s)" in unknown[0] and "apple (6 objects in 3 images), banana (3 objects in 3 images)" in unknown[0]
    assert "--classes apple,banana,dog" in unknown[0]
    table = out[out.index(next(line for line in out if line.startswith("class"))):][:4]
    assert [line.split()[:3] for line in table] == [["class", "images", "instances"], ["apple", "3", "6"],
                                                   ["banana", "3", "3"], ["dog", "1", "1"]]
    assert tool.main([str(root), "--no-images", "--classes", "apple,banana,dog,kiwi"]) == 0
    out = capsys.readouterr().out
    assert [line.split() for line in out.splitlines() if line.startswith("kiwi")] == [["kiwi", "0", "0"]]
