"""The README's "Your own dataset" commands, run as written (bash) on a generated VOC-format folder with 3 own classes.

Only two things differ from a user's shell: ``/data/pets`` is the generated folder, and ``python`` is a function
that runs the repository's tool and appends size-only overrides (2 iterations, 64-96 px, one IG method) so the
test stays cheap; the commands themselves are read from README.md.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np

from .helpers import REPO

CLASSES = ("cat", "dog", "rabbit")
SHORTER = {
    "train_net.py": "SOLVER.MAX_ITER 2 SOLVER.WARMUP_ITERS 1 'SOLVER.STEPS' '()' SOLVER.IMS_PER_BATCH 2 "
                    "SOLVER.CHECKPOINT_PERIOD 0 INPUT.MIN_SIZE_TRAIN '(64,)' INPUT.MAX_SIZE_TRAIN 96 "
                    "INPUT.MIN_SIZE_TEST 64 INPUT.MAX_SIZE_TEST 96 MODEL.DEVICE cpu",
    "visualize_mixing.py": "INPUT.MIN_SIZE_TRAIN '(64,)' INPUT.MAX_SIZE_TRAIN 96",
    "attribution.py": "--methods gradcam",
}


def readme_commands() -> str:
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = text.split("## Your own dataset", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def write_voc(root, *, num_train=4, num_test=2, size=(72, 88)):
    """A VOC-format folder: coloured rectangles, one class per colour, ``ImageSets/Main/{train,test}.txt``."""
    rng = np.random.default_rng(0)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    colours = ((200, 40, 40), (40, 200, 40), (40, 40, 200))
    ids = {"train": [f"tr{i}" for i in range(num_train)], "test": [f"te{i}" for i in range(num_test)]}
    for split, split_ids in ids.items():
        for k, image_id in enumerate(split_ids):
            h, w = size
            image = np.full((h, w, 3), 120, np.uint8)
            objects = []
            for j in range(2):
                c = (k + j) % 3
                x1, y1 = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 30))
                x2, y2 = x1 + int(rng.integers(15, 29)), y1 + int(rng.integers(15, 29))
                image[y1:y2, x1:x2] = colours[c]
                objects.append(f"<object><name>{CLASSES[c]}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}"
                               f"</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
            cv2.imwrite(os.path.join(root, "JPEGImages", f"{image_id}.jpg"), image[:, :, ::-1])
            with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as f:
                f.write(f"<annotation><filename>{image_id}.jpg</filename><size><width>{w}</width><height>{h}"
                        f"</height><depth>3</depth></size>{''.join(objects)}</annotation>")
        with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("\n".join(split_ids) + "\n")


def test_readme_own_dataset_commands_run_as_written(tmp_path):
    data = tmp_path / "pets"
    write_voc(str(data))
    commands = readme_commands()
    assert "/data/pets" in commands and "custom/voc_format_cpu.yaml" in commands
    cases = "\n".join(f'    *{tool}) extra="{extra}";;' for tool, extra in SHORTER.items())
    script = (
        "set -e\n"
        "python() {\n"
        '  tool="$1"; shift; extra=""\n'
        f'  case "$tool" in\n{cases}\n  esac\n'
        f'  eval "\\"{sys.executable}\\" \\"{REPO}/$tool\\" \\"\\$@\\" $extra"\n'
        "}\n"
        + commands.replace("/data/pets", str(data))
    )
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "output" / "pets"
    assert "== pets_train: 0 problem(s)" in proc.stdout and "== pets_test: 0 problem(s)" in proc.stdout
    assert (out / "model_final.pth").is_file()
    trained = json.load(open(out / "eval" / "pets_test.json"))["model"]
    evaluated = json.load(open(out / "eval_only" / "model_final" / "eval" / "pets_test.json"))["model"]
    assert evaluated["AP50"] == trained["AP50"]  # the same weights on the same images
    assert sorted(trained["per_class"]) == sorted(CLASSES)
    assert sorted(os.listdir(out / "mixing")) == [f"mix_{k}.png" for k in range(4)]
    report = json.load(open(out / "attribution" / "attribution.json"))
    assert {r["class_name"] for r in report} <= set(CLASSES) and len(report) == 2  # names, not "class 0"
    assert (out / "attribution" / "attribution_gradcam.png").is_file()
