"""Time the VOC reader (defusedxml, validation, dataset dicts) against a parse_rec-style reference; prints one JSON object.

5,000 VOC-style annotation files (1-6 objects each, VOC's tags: filename, size, object/name, pose,
truncated, difficult, bndbox) are written to a temporary folder. ``reference`` is the classic
``parse_rec`` loop of the VOC devkit's Python ports, written here with ``xml.etree``: parse each
file, read every object's name, pose, truncated, difficult and integer box; no validation, no
defusedxml. ``lossmix`` is :func:`lossmix.data.voc.load_voc_instances` on the same split. Each is
timed as the best of ``REPEATS`` full passes, alternated, in process CPU time; ``ratio`` = lossmix /
reference (<= 1: at least as fast).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lossmix.data.voc import VOC_CLASSES, load_voc_instances  # noqa: E402

NUM_FILES = 5000
REPEATS = 6


def write_split(root: str, rng: np.random.Generator) -> list[str]:
    os.makedirs(os.path.join(root, "Annotations"))
    os.makedirs(os.path.join(root, "ImageSets", "Main"))
    ids = [f"{i:06d}" for i in range(NUM_FILES)]
    for image_id in ids:
        w, h = int(rng.integers(300, 501)), int(rng.integers(300, 501))
        objects = []
        for _ in range(int(rng.integers(1, 7))):
            x1, y1 = int(rng.integers(1, w - 20)), int(rng.integers(1, h - 20))
            x2, y2 = int(rng.integers(x1 + 5, w + 1)), int(rng.integers(y1 + 5, h + 1))
            objects.append(
                f"<object><name>{VOC_CLASSES[int(rng.integers(20))]}</name><pose>Unspecified</pose>"
                f"<truncated>{int(rng.integers(2))}</truncated><difficult>{int(rng.random() < 0.1)}</difficult>"
                f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
        xml = (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
               f"<source><database>The VOC2007 Database</database></source>"
               f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>0</segmented>"
               + "".join(objects) + "</annotation>")
        with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
            f.write(xml)
    with open(os.path.join(root, "ImageSets", "Main", "test.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return ids


def parse_rec(filename: str) -> list[dict]:
    """The VOC devkit's ``parse_rec`` as its Python ports write it (xml.etree, no validation)."""
    tree = ET.parse(filename)
    objects = []
    for obj in tree.findall("object"):
        bbox = obj.find("bndbox")
        objects.append({
            "name": obj.find("name").text,
            "pose": obj.find("pose").text,
            "truncated": int(obj.find("truncated").text),
            "difficult": int(obj.find("difficult").text),
            "bbox": [int(bbox.find(tag).text) for tag in ("xmin", "ymin", "xmax", "ymax")],
        })
    return objects


def reference(root: str) -> list:
    with open(os.path.join(root, "ImageSets", "Main", "test.txt")) as f:
        ids = [x.strip() for x in f.readlines()]
    return [parse_rec(os.path.join(root, "Annotations", i + ".xml")) for i in ids]


def best_of_alternated(fns: dict) -> dict:
    """``{name: (best CPU seconds, last output)}``: the callables alternate (ABBA) for ``REPEATS`` rounds, and
    process CPU time is taken, so that load from other processes on a shared machine hits both alike."""
    times, outs = {name: [] for name in fns}, {}
    for k in range(REPEATS):
        for name in (list(fns) if k % 2 == 0 else list(fns)[::-1]):
            start = time.process_time()
            outs[name] = fns[name]()
            times[name].append(time.process_time() - start)
    return {name: (min(times[name]), outs[name]) for name in fns}


def main() -> dict:
    with tempfile.TemporaryDirectory() as root:
        write_split(root, np.random.default_rng(0))
        best = best_of_alternated({"reference": lambda: reference(root),
                                   "lossmix": lambda: load_voc_instances(root, "test", VOC_CLASSES)})
        (ref_s, ref), (ours_s, ours) = best["reference"], best["lossmix"]
    objects = sum(len(r) for r in ref)
    assert objects == sum(len(d["annotations"]) for d in ours)
    result = {"files": NUM_FILES, "objects": objects, "reference_parse_rec_s": round(ref_s, 3),
              "lossmix_s": round(ours_s, 3), "ratio": round(ours_s / ref_s, 2), "repeats": REPEATS}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
