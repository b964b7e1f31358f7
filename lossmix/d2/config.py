"""``LOSSMIX.*`` and ``DA.*`` config keys for a detectron2 ``CfgNode``, built from the core's definition.

The keys, defaults, comments and checks are those of :mod:`lossmix.config` (``defaults.py`` and
``setup.py`` / ``da.py``): nothing is listed twice. :func:`lossmix.config.schema.node_entries` gives
each key's one-line meaning. The only difference: ``DA.DIS_FEATURE`` names a detectron2 backbone
output (e.g. ``"p4"``, ``"res4"``, ``"vgg4"``) where the core takes an FPN level index.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN

from ..config.da import validate_da_common
from ..config.schema import Entry, build_node, node_entries
from ..config.setup import ConfigError, validate_lossmix

# The backend-specific meaning of a shared key: {node: {key: Entry}}.
D2_OVERRIDES = {
    "DA": {"DIS_FEATURE": Entry("DIS_FEATURE", "p4", "backbone output the domain discriminator sees, by name "
                                "(p4: stride 16 of an FPN, as the core's level 2; res4 / vgg4 in Adaptive Teacher's configs)")},
}


def add_lossmix_config(cfg: CN) -> CN:
    """Add the ``LOSSMIX`` node to a detectron2 config (call it before ``merge_from_file``); returns ``cfg``.

    Detectron2 keys LossMix reads beside these: ``SEED`` (the mixing streams; -1 = a seed shared by
    all processes, drawn at start), ``INPUT.FORMAT`` (BGR / RGB images are mixed), ``SOLVER.IMS_PER_BATCH``
    and ``SOLVER.MAX_ITER`` (``LOSSMIX.OFF_LAST_ITERS``).
    """
    cfg.LOSSMIX = build_node(CN, "LOSSMIX", D2_OVERRIDES.get("LOSSMIX"))
    return cfg


def add_da_config(cfg: CN) -> CN:
    """Add the domain-adaptation keys (``DA.*``, ``DATASETS.TRAIN_UNLABELED``) to a detectron2 config; returns ``cfg``."""
    cfg.DA = build_node(CN, "DA", D2_OVERRIDES.get("DA"))
    unlabeled = next(e for e in node_entries("DATASETS") if e.key == "TRAIN_UNLABELED")
    cfg.DATASETS.TRAIN_UNLABELED = unlabeled.default
    return cfg


def validate_lossmix_config(cfg: CN) -> None:
    """The core's checks of ``LOSSMIX.*`` (and of ``DA.*`` when present); ``ConfigError`` (a ``ValueError``) names
    the key, the value and what is allowed."""
    validate_lossmix(cfg)
    if "DA" in cfg:
        validate_da_common(cfg)
        if not isinstance(cfg.DA.DIS_FEATURE, str) or not cfg.DA.DIS_FEATURE:
            raise ConfigError(f"DA.DIS_FEATURE = {cfg.DA.DIS_FEATURE!r}; allowed: the name of a backbone output "
                              "(e.g. 'p4', 'res4')")


__all__ = ["add_lossmix_config", "add_da_config", "validate_lossmix_config", "D2_OVERRIDES"]
