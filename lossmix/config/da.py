"""Validation of the domain-adaptation keys (``DA.*``, ``DATASETS.TRAIN_UNLABELED``); registered on import."""
from __future__ import annotations

from .setup import ConfigError, get_key as _get, register_validator

MIX_PAIR_KINDS = ("source_source", "source_target", "target_target")  # the LossMix pairs of DA.MIX_PAIRS

_CHOICES = {"DA.TARGET_LABELS": ("pseudo", "ground_truth"), "DA.PSEUDO_LABEL_METRICS": ("auto", "off")}
_UNIT_INTERVAL = ("DA.EMA_DECAY", "DA.PSEUDO_THRESHOLD")
_NON_NEGATIVE = ("DA.BURN_IN_ITERS", "DA.PSEUDO_BOX_WEIGHT", "DA.UNSUP_LOSS_WEIGHT", "DA.DIS_LOSS_WEIGHT",
                 "DA.GRL_LAMBDA")


def validate_da_common(cfg) -> None:
    """The ``DA.*`` checks every back-end shares (all but ``DA.DIS_FEATURE``, whose form is the back-end's)."""
    for key in _UNIT_INTERVAL:
        v = _get(cfg, key)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{key} = {v!r}; allowed: a number in [0, 1]")
    for key in _NON_NEGATIVE:
        v = _get(cfg, key)
        if v < 0:
            raise ConfigError(f"{key} = {v!r}; allowed: >= 0")
    pairs = list(cfg.DA.MIX_PAIRS)
    unknown = [p for p in pairs if p not in MIX_PAIR_KINDS]
    if unknown or len(set(pairs)) != len(pairs):
        raise ConfigError(f"DA.MIX_PAIRS = {tuple(pairs)}; allowed: distinct entries of {', '.join(MIX_PAIR_KINDS)}")
    if not isinstance(cfg.DA.WEIGHT_BY_SCORE, bool):
        raise ConfigError(f"DA.WEIGHT_BY_SCORE = {cfg.DA.WEIGHT_BY_SCORE!r}; allowed: True or False")
    for key, allowed in _CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key} = {_get(cfg, key)!r}; allowed: {', '.join(allowed)}")
    warn = cfg.DA.NO_PSEUDO_LABEL_WARN_ITERS
    if isinstance(warn, bool) or not isinstance(warn, int) or warn < 0:
        raise ConfigError(f"DA.NO_PSEUDO_LABEL_WARN_ITERS = {warn!r}; allowed: an int >= 0 (0 = never warn)")
    if cfg.DA.ENABLED and not cfg.DATASETS.TRAIN_UNLABELED:
        raise ConfigError("DA.ENABLED = True but DATASETS.TRAIN_UNLABELED is empty; name the unlabelled target set(s)")


@register_validator
def validate_da(cfg) -> None:
    """Ranges of the ``DA.*`` keys; an enabled DA run needs unlabelled data."""
    if isinstance(cfg.DA.DIS_FEATURE, bool) or not isinstance(cfg.DA.DIS_FEATURE, int) or cfg.DA.DIS_FEATURE < 0:
        raise ConfigError(f"DA.DIS_FEATURE = {cfg.DA.DIS_FEATURE!r}; allowed: an FPN level index >= 0 (e.g. 2)")
    validate_da_common(cfg)
