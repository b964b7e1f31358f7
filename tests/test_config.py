import os
import re

import pytest

from lossmix.config import get_cfg
from lossmix.config.setup import ConfigError, build_config

from .helpers import REPO


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_base_inheritance_and_overrides(tmp_path):
    _write(tmp_path / "base.yaml", "SOLVER:\n  BASE_LR: 0.5\n  MAX_ITER: 10\nLOSSMIX:\n  MODE: uniform\n")
    child = _write(tmp_path / "child.yaml", '_BASE_: "base.yaml"\nSOLVER:\n  MAX_ITER: 20\n')
    cfg = build_config(child, ["LOSSMIX.ALPHA", "0.5"])
    assert cfg.SOLVER.BASE_LR == 0.5  # inherited
    assert cfg.SOLVER.MAX_ITER == 20  # child wins
    assert cfg.LOSSMIX.MODE == "uniform"
    assert cfg.LOSSMIX.ALPHA == 0.5  # command line wins
    assert cfg.SOLVER.MOMENTUM == get_cfg().SOLVER.MOMENTUM  # untouched default


def test_unknown_key_in_file_names_it(tmp_path):
    path = _write(tmp_path / "bad.yaml", "SOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(KeyError, match="BASE_LRR"):
        build_config(path)


def test_unknown_override_names_it():
    with pytest.raises(KeyError, match="SOLVER.NOPE"):
        build_config("", ["SOLVER.NOPE", "1"])


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("LOSSMIX.ALPHA", "0.0", r"LOSSMIX.ALPHA = 0.0; allowed: > 0"),
        ("LOSSMIX.PROB", "1.5", r"LOSSMIX.PROB = 1.5; allowed: a number in \[0, 1\]"),
        ("SOLVER.MAX_ITER", "-1", r"SOLVER.MAX_ITER = -1; allowed: >= 0"),
        ("LOSSMIX.MODE", "mixall", r"LOSSMIX.MODE = 'mixall'; allowed: none, uniform, noise, lossmix"),
        ("MODEL.BACKBONE.NAME", "R7-FPN", r"MODEL.BACKBONE.NAME = 'R7-FPN'; allowed: .*R50-FPN"),
        ("LOSSMIX.NOISE_RANGE", "(0.3, 0.1)", r"NOISE_RANGE"),
        ("SOLVER.STEPS", "(10, 5)", r"SOLVER.STEPS"),
        ("LOSSMIX.SALIENCY", "itti", r"LOSSMIX.SALIENCY = 'itti'; allowed: fine_grained, spectral_residual"),
        ("LOSSMIX.PASTE", "fit", r"LOSSMIX.PASTE = 'fit'; allowed: stretch, keep_aspect"),
        ("TEST.EVAL_PERIOD_DATASETS", "('b',)", r"\['b'\] not in DATASETS.TEST; allowed: a subset of \[\]"),
    ],
)
def test_out_of_range_values_rejected(key, value, match):
    with pytest.raises(ConfigError, match=match):
        build_config("", [key, value])


def test_every_shipped_config_loads():
    found = []
    for root, _, files in os.walk(os.path.join(REPO, "configs")):
        if os.path.relpath(root, os.path.join(REPO, "configs")).split(os.sep)[0] in ("benchmark", "d2"):
            continue  # benchmark protocols (tests/test_benchmark.py) and detectron2-format configs (tests/test_d2.py)
        for f in files:
            if f.endswith(".yaml"):
                build_config(os.path.join(root, f))
                found.append(f)
    assert "faster_rcnn_r50_lossmix.yaml" in found and "synthetic_lossmix.yaml" in found


def _leaf_keys(node, prefix=""):
    for k, v in node.items():
        if hasattr(v, "items"):
            yield from _leaf_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_every_key_is_read():
    """A key no code reads is a dead key: it fails here."""
    source = []
    for folder in ("lossmix", "tools"):
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for f in files:
                if f.endswith(".py") and f != "defaults.py":
                    source.append(open(os.path.join(root, f)).read())
    text = "\n".join(source)
    dead = []
    for key in _leaf_keys(get_cfg()):
        if key == "VERSION":
            continue
        leaf = key.split(".")[-1]
        # read as cfg.A.B.C, through an alias (x.LEAF) or listed by its full name (validation tables)
        if not (re.search(r"\." + leaf + r"\b", text) or f'"{key}"' in text):
            dead.append(key)
    assert dead == []


def test_interpolate_formulation_refuses_lossmix_weights():
    # interpolate weighs A's loss by lambda itself; lossmix's instance weights (lambda) would square it
    with pytest.raises(ConfigError, match=r"with LOSSMIX.MODE = 'lossmix': interpolate applies lambda itself"):
        build_config("", ["LOSSMIX.MODE", "lossmix", "LOSSMIX.FORMULATION", "interpolate"])
    assert build_config("", ["LOSSMIX.MODE", "uniform", "LOSSMIX.FORMULATION", "interpolate"]).LOSSMIX.MODE == "uniform"
