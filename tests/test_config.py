import ast
import os

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
        ("LOSSMIX.OFF_LAST_ITERS", "-1", r"LOSSMIX.OFF_LAST_ITERS = -1; allowed: >= 0"),
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


def _keys_read(source: str, keys: set, nodes: set) -> set:
    """Config keys read in ``source``: attribute chains of upper-case names (``cfg.SOLVER.MAX_ITER``,
    ``self.cfg.DA.EMA_DECAY``), also through an alias bound to a config node (``m = cfg.LOSSMIX``;
    ``m.MODE``). Strings and comments do not count: validation tables name keys without using them."""
    tree = ast.parse(source)

    def chain(node):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        return node, parts[::-1]

    def resolve(node, aliases):
        root, parts = chain(node)
        upper = []
        for part in reversed(parts):  # the trailing run of upper-case names
            if not part.isupper():
                break
            upper.insert(0, part)
        if not upper:
            return None
        if len(upper) == len(parts) and isinstance(root, ast.Name) and root.id in aliases:
            return ".".join([aliases[root.id], *upper])
        return ".".join(upper)

    pairs = []  # (name, value) of every assignment, tuples unpacked: rpn, roi = m.RPN, m.ROI_HEADS
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
                pairs += [(t, v) for t, v in zip(target.elts, value.elts)]
            else:
                pairs.append((target, value))
    aliases, read = {}, set()
    for _ in range(3):  # aliases of aliases: m = cfg.MODEL; rpn = m.RPN
        for target, value in pairs:
            if isinstance(target, ast.Name) and isinstance(value, ast.Attribute):
                path = resolve(value, aliases)
                if path in nodes:
                    aliases[target.id] = path
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            path = resolve(node, aliases)
            if path in keys:
                read.add(path)
    return read


def _sources(exclude=()):
    for folder in ("lossmix", "tools"):
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for f in files:
                path = os.path.join(root, f)
                if f.endswith(".py") and os.path.relpath(path, REPO) not in exclude:
                    yield path, open(path).read()


def _dead_keys(exclude=()):
    keys, nodes = set(_leaf_keys(get_cfg())) - {"VERSION"}, set(_nodes(get_cfg()))
    read = set()
    for path, text in _sources(exclude):
        if os.path.basename(os.path.dirname(path)) == "config":  # defaults and validation are not uses
            continue
        read |= _keys_read(text, keys, nodes)
    return sorted(keys - read)


def _nodes(node, prefix=""):
    for k, v in node.items():
        if hasattr(v, "items"):
            yield f"{prefix}{k}"
            yield from _nodes(v, f"{prefix}{k}.")


def test_every_key_is_read():
    """A key no code outside config/ reads (as an attribute chain, found with ast) is a dead key."""
    assert _dead_keys() == []


def test_the_key_test_fails_when_a_read_is_removed(tmp_path):
    """Removing the only read of MODEL.RPN.NMS_THRESH (faster_rcnn.py) makes it dead; the other keys stay read."""
    text = open(os.path.join(REPO, "lossmix", "modeling", "faster_rcnn.py")).read()
    keys, nodes = set(_leaf_keys(get_cfg())), set(_nodes(get_cfg()))
    stripped = text.replace("nms_thresh=rpn.NMS_THRESH, ", "")
    assert stripped != text
    without = _keys_read(stripped, keys, nodes)
    assert _keys_read(text, keys, nodes) - without == {"MODEL.RPN.NMS_THRESH"}
    rest = set()
    for path, source in _sources(exclude=("lossmix/modeling/faster_rcnn.py",)):
        if os.path.basename(os.path.dirname(path)) != "config":
            rest |= _keys_read(source, keys, nodes)
    assert "MODEL.RPN.NMS_THRESH" not in rest | without  # so test_every_key_is_read would list it as dead


def test_names_are_checked_by_their_registries():
    """MODEL.BACKBONE.NAME / NORM and RECIPE are validated where the names are registered, not in config/."""
    from lossmix.engine.recipes import get_recipe
    from lossmix.modeling.build import make_detector

    cfg = build_config("", ["MODEL.BACKBONE.NAME", "R7-FPN", "RECIPE", "nope"])  # config/ does not know the names
    with pytest.raises(KeyError, match=r"MODEL.BACKBONE.NAME = 'R7-FPN' is not registered; allowed: .*R50-FPN"):
        make_detector(backbone=cfg.MODEL.BACKBONE.NAME)
    with pytest.raises(KeyError, match=r"MODEL.BACKBONE.NORM = 'XN'.*FrozenBN"):
        make_detector(backbone="R18-FPN", norm="XN")
    with pytest.raises(KeyError, match=r"RECIPE = 'nope'.*adaptive_teacher, supervised"):
        get_recipe(cfg.RECIPE)
    setup_source = open(os.path.join(REPO, "lossmix", "config", "setup.py")).read()
    assert "modeling" not in setup_source


def test_interpolate_formulation_refuses_lossmix_weights():
    # interpolate weighs A's loss by lambda itself; lossmix's instance weights (lambda) would square it
    with pytest.raises(ConfigError, match=r"with LOSSMIX.MODE = 'lossmix': interpolate applies lambda itself"):
        build_config("", ["LOSSMIX.MODE", "lossmix", "LOSSMIX.FORMULATION", "interpolate"])
    assert build_config("", ["LOSSMIX.MODE", "uniform", "LOSSMIX.FORMULATION", "interpolate"]).LOSSMIX.MODE == "uniform"


def test_choices_come_from_the_modules_that_define_them():
    from lossmix.config import da, setup
    from lossmix.data import errors, mixing
    from lossmix.evaluation import voc
    from lossmix.modeling import targets

    allowed = setup.choices()
    assert allowed["LOSSMIX.MODE"] is mixing.MODES and allowed["LOSSMIX.METHOD"] is mixing.METHODS
    assert allowed["LOSSMIX.SALIENCY"] is mixing.SALIENCY_METHODS and allowed["LOSSMIX.PASTE"] is mixing.PASTE_MODES
    assert allowed["LOSSMIX.FORMULATION"] is targets.FORMULATIONS is mixing.FORMULATIONS
    assert allowed["DATALOADER.ON_BAD_SAMPLE"] is errors.ON_BAD_POLICIES is allowed["TEST.ON_BAD_SAMPLE"]
    assert allowed["DATASETS.CUSTOM_METRIC"] is voc.VOC_METRICS
    assert allowed["TEST.VOC07_RECALL_LEVELS"] is voc.RECALL_LEVEL_CHOICES
    source = open(setup.__file__).read()
    assert not any(f'"{v}"' in source for v in ("keep_aspect", "saliencymix", "spectral_residual", "cutmix",
                                                 "voc07", "skip"))  # not retyped
    assert da._get is setup.get_key  # one key-lookup helper


def test_ints_for_float_keys_and_the_range_check(tmp_path):
    cfg = build_config("", ["LOSSMIX.ALPHA", "2", "SOLVER.BASE_LR", "1", "LOSSMIX.NOISE_RANGE", "(0, 1)"])
    assert cfg.LOSSMIX.ALPHA == 2.0 and isinstance(cfg.LOSSMIX.ALPHA, float) and cfg.SOLVER.BASE_LR == 1.0
    assert cfg.LOSSMIX.NOISE_RANGE == (0.0, 1.0)
    (tmp_path / "a.yaml").write_text("LOSSMIX:\n  ALPHA: 2\nSOLVER:\n  BASE_LR: 1\n")
    cfg = build_config(str(tmp_path / "a.yaml"))
    assert isinstance(cfg.LOSSMIX.ALPHA, float) and cfg.LOSSMIX.ALPHA == 2.0
    with pytest.raises(ConfigError, match=r"LOSSMIX.ALPHA = -1.0; allowed: > 0"):
        build_config("", ["LOSSMIX.ALPHA", "-1"])
    with pytest.raises(ValueError, match="expected an integer"):
        build_config("", ["SOLVER.MAX_ITER", "1.5"])  # floats for int keys stay refused


def test_bare_config_names_resolve_under_configs():
    from lossmix.config.setup import resolve_config_path

    assert resolve_config_path("faster_rcnn_r50_lossmix.yaml") == os.path.join(REPO, "configs",
                                                                                "faster_rcnn_r50_lossmix.yaml")
    assert resolve_config_path("synthetic_lossmix").endswith(os.path.join("configs", "quickstart",
                                                                          "synthetic_lossmix.yaml"))
    with pytest.raises(FileNotFoundError, match=r"did you mean configs/faster_rcnn_r50_lossmix.yaml"):
        resolve_config_path("faster_rcnn_r50_losmix.yaml")
    with pytest.raises(FileNotFoundError, match="could be any of .*voc2clipart/faster_rcnn_r50_at.yaml.*voc2watercolor"):
        resolve_config_path("faster_rcnn_r50_at.yaml")
    assert build_config("faster_rcnn_r50_lossmix.yaml").LOSSMIX.MODE == "lossmix"
