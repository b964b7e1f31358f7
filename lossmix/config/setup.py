"""Build a config from YAML (with ``_BASE_``) and ``KEY VALUE`` overrides, and validate it."""
from __future__ import annotations

import difflib
import glob
import logging
import os

from .defaults import CfgNode, ConfigError, check_value_type, coerce_numbers, get_cfg, unknown_key  # noqa: F401

logger = logging.getLogger(__name__)

NOT_LOSSMIX_CONFIGS = ("d2", "benchmark")  # detectron2-format configs and benchmark protocols: never a train_net config
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")

DEVICES = ("auto", "cpu", "cuda")  # MODEL.DEVICE (lossmix.engine.trainer.resolve_device)


def choices() -> dict:
    """Allowed values of the keys that name a choice, taken from the modules that implement them (imported
    here, at validation: they are leaves that import no config)."""
    from ..data.errors import ON_BAD_POLICIES
    from ..data.mixing import FORMULATIONS, METHODS, MODES, PASTE_MODES, SALIENCY_METHODS
    from ..evaluation import METRICS
    from ..evaluation.voc import RECALL_LEVEL_CHOICES, VOC_METRICS

    return {
        "LOSSMIX.MODE": MODES,
        "LOSSMIX.METHOD": METHODS,
        "LOSSMIX.FORMULATION": FORMULATIONS,
        "LOSSMIX.SALIENCY": SALIENCY_METHODS,
        "LOSSMIX.PASTE": PASTE_MODES,
        "DATALOADER.ON_BAD_SAMPLE": ON_BAD_POLICIES,
        "MODEL.DEVICE": DEVICES,
        "TEST.METRIC": ("auto", *METRICS),
        "TEST.VOC07_RECALL_LEVELS": RECALL_LEVEL_CHOICES,
        "TEST.ON_BAD_SAMPLE": ON_BAD_POLICIES,
        "DATASETS.CUSTOM_METRIC": VOC_METRICS,
    }


_PROBABILITIES = ("LOSSMIX.PROB", "INPUT.RANDOM_FLIP", "INPUT.STRONG_AUGMENT_PROB", "LOSSMIX.MIN_VISIBLE",
                  "MODEL.RPN.POSITIVE_FRACTION", "MODEL.ROI_HEADS.POSITIVE_FRACTION", "MODEL.ROI_HEADS.IOU_THRESHOLD",
                  "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.ROI_HEADS.NMS_THRESH_TEST", "MODEL.RPN.NMS_THRESH",
                  "MODEL.RETINANET.SCORE_THRESH_TEST", "MODEL.RETINANET.NMS_THRESH_TEST",
                  "MODEL.FCOS.SCORE_THRESH_TEST", "MODEL.FCOS.NMS_THRESH_TEST")
_NON_NEGATIVE = ("SOLVER.MAX_ITER", "SOLVER.WARMUP_ITERS", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD",
                 "DATALOADER.NUM_WORKERS", "SOLVER.CLIP_GRADIENTS", "SOLVER.WEIGHT_DECAY", "LOSSMIX.BG_WEIGHT",
                 "SOLVER.KEEP_CHECKPOINTS", "LOSSMIX.OFF_LAST_ITERS")
_POSITIVE = ("SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR", "LOSSMIX.ALPHA", "SOLVER.MAX_BAD_STEPS",
             "MODEL.ROI_HEADS.NUM_CLASSES", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TRAIN", "INPUT.MAX_SIZE_TEST")


def get_key(cfg, key: str):
    """The value of a full key (``"SOLVER.MAX_ITER"``); ``KeyError`` if a part is missing."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


_get = get_key


def merge_from_list(cfg: CfgNode, opts: list) -> None:
    """``KEY VALUE`` overrides; an unknown key raises ``KeyError`` naming it."""
    if len(opts) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs, got {len(opts)} word(s): the last key {opts[-1]!r} has "
                          f"no value (a value with spaces needs quotes, e.g. DATASETS.TRAIN \"('a', 'b')\")")
    decoded = []
    for key, value in zip(opts[0::2], opts[1::2]):
        if isinstance(key, str) and key.startswith("--"):
            raise ConfigError(f"{key!r} among the KEY VALUE overrides is not a config key (an unknown option?)")
        try:
            default = _get(cfg, key)
        except KeyError:
            raise unknown_key(key, cfg, "from the command line") from None
        if isinstance(default, dict):
            raise ConfigError(f"{key} is a section, not a key; set one of its keys, e.g. {key}.{next(iter(default))}")
        value = coerce_numbers(CfgNode._decode_cfg_value(value), default)
        check_value_type(key, value, default, "from the command line")
        decoded += [key, value]
    cfg.merge_from_list(decoded)


def resolve_config_path(path: str, configs_dir: str = CONFIGS_DIR) -> str:
    """``path`` if it is a file; else the one file under ``configs_dir`` (searched recursively) that it names.

    ``faster_rcnn_r50_lossmix.yaml`` -> ``configs/faster_rcnn_r50_lossmix.yaml``; ``voc2clipart/x.yaml`` and
    names without ``.yaml`` work too. No match: ``FileNotFoundError`` with the closest names
    ("did you mean configs/..."); several matches: ``FileNotFoundError`` listing them.
    """
    if os.path.isfile(path):
        return path
    available = sorted(rel for rel in (os.path.relpath(p, configs_dir) for p in glob.glob(
        os.path.join(glob.escape(configs_dir), "**", "*.yaml"), recursive=True))
        if rel.split(os.sep)[0] not in NOT_LOSSMIX_CONFIGS)
    wanted = path if path.endswith((".yaml", ".yml")) else path + ".yaml"
    wanted = wanted.replace("\\", "/")
    if wanted.startswith("configs/"):
        wanted = wanted[len("configs/"):]
    matches = [rel for rel in available if rel == wanted or rel.endswith("/" + wanted)]
    shown = os.path.relpath(configs_dir)
    if shown.startswith(".."):  # run from elsewhere: the absolute folder reads better than ../../..
        shown = configs_dir
    if len(matches) == 1:
        resolved = os.path.join(configs_dir, matches[0])
        logger.info("config %s -> %s", path, resolved)
        return resolved
    if len(matches) > 1:
        raise FileNotFoundError(f"config file not found: {path}; it could be any of "
                                + ", ".join(os.path.join(shown, m) for m in matches))
    by_name = {}
    for rel in available:
        by_name.setdefault(os.path.basename(rel), []).append(rel)
    close = [rel for name in difflib.get_close_matches(os.path.basename(wanted), list(by_name), n=3, cutoff=0.6)
             for rel in by_name[name]][:3]
    hint = ("; did you mean " + " or ".join(os.path.join(shown, c) for c in close) + "?") if close else \
        f"; the configs shipped are under {shown}/"
    raise FileNotFoundError(f"config file not found: {path}{hint}")


def config_writing(weights_path: str, configs_dir: str = CONFIGS_DIR) -> str | None:
    """The shipped config (relative to the repository) whose ``OUTPUT_DIR`` holds ``weights_path``, e.g.
    ``configs/quickstart/synthetic_lossmix.yaml`` for ``./output/quickstart/synthetic_lossmix/model_final.pth``."""
    import yaml

    folder = os.path.normpath(os.path.dirname(weights_path))
    for path in sorted(glob.glob(os.path.join(glob.escape(configs_dir), "**", "*.yaml"), recursive=True)):
        if os.path.relpath(path, configs_dir).split(os.sep)[0] in NOT_LOSSMIX_CONFIGS:
            continue
        with open(path, encoding="utf-8") as f:
            out = (yaml.safe_load(f) or {}).get("OUTPUT_DIR")
        if out and os.path.normpath(out) == folder:
            return os.path.relpath(path, os.path.dirname(configs_dir))
    return None


def merge_from_file(cfg: CfgNode, path: str) -> None:
    """Merge a YAML file, following ``_BASE_`` (relative to the file); unknown keys raise ``KeyError``.

    A path that is not a file is looked up under ``configs/`` (:func:`resolve_config_path`).
    """
    path = resolve_config_path(path)
    try:
        cfg.merge_from_file(path)
    except ConfigError as err:  # a wrong type (CfgNode.merge_from_other_cfg)
        raise ConfigError(f"{path}: {err}") from None
    except (KeyError, AssertionError) as err:  # an unknown key (ours names it; yacs asserts on others)
        raise KeyError(f"{path}: {err.args[0] if isinstance(err, KeyError) and err.args else err}") from None


def _check_tables(cfg, prefix: str = "") -> None:
    """The choice / range tables above, for the keys that start with ``prefix`` ("" = all)."""
    for key, allowed in choices().items():
        if key.startswith(prefix) and _get(cfg, key) not in allowed:
            raise ConfigError(f"{key} = {_get(cfg, key)!r}; allowed: {', '.join(allowed)}")
    for key in _PROBABILITIES:
        if key.startswith(prefix) and not 0.0 <= _get(cfg, key) <= 1.0:
            raise ConfigError(f"{key} = {_get(cfg, key)!r}; allowed: a number in [0, 1]")
    for key in _NON_NEGATIVE:
        if key.startswith(prefix) and _get(cfg, key) < 0:
            raise ConfigError(f"{key} = {_get(cfg, key)!r}; allowed: >= 0")
    for key in _POSITIVE:
        if key.startswith(prefix) and _get(cfg, key) <= 0:
            raise ConfigError(f"{key} = {_get(cfg, key)!r}; allowed: > 0")


def _check_lossmix_combinations(cfg) -> None:
    lo, hi = cfg.LOSSMIX.NOISE_RANGE
    if not 0.0 <= lo <= hi <= 1.0:
        raise ConfigError(f"LOSSMIX.NOISE_RANGE = {tuple(cfg.LOSSMIX.NOISE_RANGE)}; allowed: 0 <= low <= high <= 1")
    if cfg.LOSSMIX.FORMULATION == "interpolate" and cfg.LOSSMIX.MODE == "lossmix":
        raise ConfigError("LOSSMIX.FORMULATION = 'interpolate' with LOSSMIX.MODE = 'lossmix': interpolate applies "
                          "lambda itself (lambda L(x, A) + (1 - lambda) L(x, B)), and lossmix's instance weights would "
                          "apply it a second time; allowed: MODE uniform with interpolate (the exact interpolation)")
    off = cfg.LOSSMIX.OFF_LAST_ITERS
    if isinstance(off, bool) or not isinstance(off, int) or off > cfg.SOLVER.MAX_ITER:
        raise ConfigError(f"LOSSMIX.OFF_LAST_ITERS = {off!r}; allowed: an int in [0, SOLVER.MAX_ITER = {cfg.SOLVER.MAX_ITER}]")


def validate_lossmix(cfg) -> None:
    """Only the ``LOSSMIX.*`` checks of :func:`validate` (they read ``SOLVER.MAX_ITER`` besides); the detectron2
    plug-in validates its ``LOSSMIX`` node, built from the same definition, with this."""
    _check_tables(cfg, "LOSSMIX.")
    _check_lossmix_combinations(cfg)


def validate(cfg: CfgNode) -> None:
    """Reject out-of-range values at start-up (the key, the value, what is allowed)."""
    _check_tables(cfg)
    _check_lossmix_combinations(cfg)
    for key in ("MODEL.RPN.IOU_THRESHOLDS", "MODEL.RETINANET.IOU_THRESHOLDS"):
        bg, fg = _get(cfg, key)
        if not 0.0 <= bg <= fg <= 1.0:
            raise ConfigError(f"{key} = {[bg, fg]}; allowed: 0 <= background <= foreground <= 1")
    if any(s <= 0 for s in cfg.INPUT.MIN_SIZE_TRAIN):
        raise ConfigError(f"INPUT.MIN_SIZE_TRAIN = {cfg.INPUT.MIN_SIZE_TRAIN}; allowed: positive sizes")
    if any(s < 0 for s in cfg.SOLVER.STEPS) or list(cfg.SOLVER.STEPS) != sorted(cfg.SOLVER.STEPS):
        raise ConfigError(f"SOLVER.STEPS = {cfg.SOLVER.STEPS}; allowed: increasing non-negative iterations")
    extra = [d for d in cfg.TEST.EVAL_PERIOD_DATASETS if d not in cfg.DATASETS.TEST]
    if extra:
        raise ConfigError(f"TEST.EVAL_PERIOD_DATASETS = {list(cfg.TEST.EVAL_PERIOD_DATASETS)}: {extra} not in "
                          f"DATASETS.TEST; allowed: a subset of {list(cfg.DATASETS.TEST)}")
    # Names (MODEL.META_ARCHITECTURE, MODEL.BACKBONE.NAME / NORM, MODEL.FPN.TOP_BLOCK, RECIPE) are checked by their registries when the component is built.
    for hook in _VALIDATORS:
        hook(cfg)


_VALIDATORS = []  # extra checks registered by extensions (e.g. the domain-adaptation keys)


def register_validator(fn):
    _VALIDATORS.append(fn)
    return fn


def build_config(config_file: str = "", opts: list | None = None, *, extra=()) -> CfgNode:
    """Defaults (plus ``extra`` ``add_*_config`` functions) <- ``config_file`` <- ``opts``; validated, frozen."""
    cfg = get_cfg()
    for add in extra:
        add(cfg)
    if config_file:
        merge_from_file(cfg, config_file)
    merge_from_list(cfg, list(opts or []))
    validate(cfg)
    cfg.freeze()
    return cfg


def for_eval_only(cfg: CfgNode) -> CfgNode:
    """``cfg`` with ``OUTPUT_DIR`` moved to ``<OUTPUT_DIR>/eval_only/<weights file stem>``.

    ``--eval-only`` writes its config.yaml, log and eval/*.json there, so a training run's records in
    ``OUTPUT_DIR`` (which ``tools/compare.py`` reads) are never overwritten.
    """
    cfg = cfg.clone()
    cfg.defrost()
    stem = os.path.splitext(os.path.basename(cfg.MODEL.WEIGHTS))[0] or "no_weights"
    cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "eval_only", stem) if cfg.OUTPUT_DIR else ""
    cfg.freeze()
    return cfg


def split_options(parser, argv=None):
    """``parser.parse_args`` where options written after the ``KEY VALUE`` overrides still count as options.

    ``parser`` must end with ``opts`` (``nargs=argparse.REMAINDER``), which swallows everything after the first
    override: ``... SOLVER.MAX_ITER 10 --resume`` would make ``--resume`` an override key. Tokens at key
    positions that are the parser's own options are taken out (with their values) and parsed as options.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    known = {s: a for a in parser._actions for s in a.option_strings}
    prefix = argv[:len(argv) - len(args.opts)]
    opts, options, rest, i = list(args.opts), [], [], 0
    while i < len(opts):
        token = opts[i]
        name = token.split("=", 1)[0]
        if len(rest) % 2 == 0 and name in known:  # at a KEY position: an option, not an override
            takes = 0 if known[name].nargs == 0 or "=" in token else 1
            options.extend(opts[i:i + 1 + takes])
            i += 1 + takes
            continue
        rest.append(token)
        i += 1
    return parser.parse_args(prefix + options + rest) if options else args
