"""Build a config from YAML (with ``_BASE_``) and ``KEY VALUE`` overrides, and validate it."""
from __future__ import annotations

import os

from .defaults import CfgNode, get_cfg

_CHOICES = {
    "LOSSMIX.MODE": ("none", "uniform", "noise", "lossmix"),
    "LOSSMIX.METHOD": ("mixup", "cutmix", "saliencymix"),
    "LOSSMIX.FORMULATION": ("instance", "interpolate"),
    "LOSSMIX.SALIENCY": ("fine_grained", "spectral_residual"),
    "LOSSMIX.PASTE": ("stretch", "keep_aspect"),
    "DATALOADER.ON_BAD_SAMPLE": ("error", "skip"),
    "MODEL.DEVICE": ("auto", "cpu", "cuda"),
    "TEST.METRIC": ("auto", "voc_area", "voc07", "coco"),
}
_PROBABILITIES = ("LOSSMIX.PROB", "INPUT.RANDOM_FLIP", "LOSSMIX.MIN_VISIBLE", "MODEL.RPN.POSITIVE_FRACTION",
                  "MODEL.ROI_HEADS.POSITIVE_FRACTION", "MODEL.ROI_HEADS.IOU_THRESHOLD",
                  "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.ROI_HEADS.NMS_THRESH_TEST", "MODEL.RPN.NMS_THRESH")
_NON_NEGATIVE = ("SOLVER.MAX_ITER", "SOLVER.WARMUP_ITERS", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD",
                 "DATALOADER.NUM_WORKERS", "SOLVER.CLIP_GRADIENTS", "SOLVER.WEIGHT_DECAY", "LOSSMIX.BG_WEIGHT",
                 "SOLVER.KEEP_CHECKPOINTS")
_POSITIVE = ("SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR", "LOSSMIX.ALPHA", "SOLVER.MAX_BAD_STEPS",
             "MODEL.ROI_HEADS.NUM_CLASSES", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TRAIN", "INPUT.MAX_SIZE_TEST")


class ConfigError(ValueError):
    """A config value out of range: the message names the key, the value and what is allowed."""


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def merge_from_list(cfg: CfgNode, opts: list) -> None:
    """``KEY VALUE`` overrides; an unknown key raises ``KeyError`` naming it."""
    if len(opts) % 2:
        raise ValueError(f"overrides must be KEY VALUE pairs, got an odd number: {opts}")
    for key in opts[0::2]:
        try:
            _get(cfg, key)
        except KeyError:
            raise KeyError(f"unknown config key {key!r} (from the command line)") from None
    cfg.merge_from_list(list(opts))


def merge_from_file(cfg: CfgNode, path: str) -> None:
    """Merge a YAML file, following ``_BASE_`` (relative to the file); unknown keys raise ``KeyError``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        cfg.merge_from_file(path)
    except (KeyError, AssertionError) as err:  # yacs asserts on unknown keys
        raise KeyError(f"{path}: {err}") from None


def validate(cfg: CfgNode) -> None:
    """Reject out-of-range values at start-up (the key, the value, what is allowed)."""
    for key, allowed in _CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key} = {_get(cfg, key)!r}; allowed: {', '.join(allowed)}")
    for key in _PROBABILITIES:
        v = _get(cfg, key)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{key} = {v!r}; allowed: a number in [0, 1]")
    for key in _NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key} = {_get(cfg, key)!r}; allowed: >= 0")
    for key in _POSITIVE:
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key} = {_get(cfg, key)!r}; allowed: > 0")
    lo, hi = cfg.LOSSMIX.NOISE_RANGE
    if not 0.0 <= lo <= hi <= 1.0:
        raise ConfigError(f"LOSSMIX.NOISE_RANGE = {tuple(cfg.LOSSMIX.NOISE_RANGE)}; allowed: 0 <= low <= high <= 1")
    bg, fg = cfg.MODEL.RPN.IOU_THRESHOLDS
    if not 0.0 <= bg <= fg <= 1.0:
        raise ConfigError(f"MODEL.RPN.IOU_THRESHOLDS = {[bg, fg]}; allowed: 0 <= background <= foreground <= 1")
    if any(s <= 0 for s in cfg.INPUT.MIN_SIZE_TRAIN):
        raise ConfigError(f"INPUT.MIN_SIZE_TRAIN = {cfg.INPUT.MIN_SIZE_TRAIN}; allowed: positive sizes")
    if any(s < 0 for s in cfg.SOLVER.STEPS) or list(cfg.SOLVER.STEPS) != sorted(cfg.SOLVER.STEPS):
        raise ConfigError(f"SOLVER.STEPS = {cfg.SOLVER.STEPS}; allowed: increasing non-negative iterations")
    extra = [d for d in cfg.TEST.EVAL_PERIOD_DATASETS if d not in cfg.DATASETS.TEST]
    if extra:
        raise ConfigError(f"TEST.EVAL_PERIOD_DATASETS = {list(cfg.TEST.EVAL_PERIOD_DATASETS)}: {extra} not in "
                          f"DATASETS.TEST; allowed: a subset of {list(cfg.DATASETS.TEST)}")
    from ..modeling.build import BACKBONES, NORM_LAYERS

    if cfg.MODEL.BACKBONE.NAME not in BACKBONES:
        raise ConfigError(f"MODEL.BACKBONE.NAME = {cfg.MODEL.BACKBONE.NAME!r}; allowed: {', '.join(sorted(BACKBONES))}")
    if cfg.MODEL.BACKBONE.NORM not in NORM_LAYERS:
        raise ConfigError(f"MODEL.BACKBONE.NORM = {cfg.MODEL.BACKBONE.NORM!r}; allowed: {', '.join(NORM_LAYERS)}")
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
