"""``LOSSMIX.*`` config keys for a detectron2 ``CfgNode``: the same keys, defaults and meanings as
:mod:`lossmix.config.defaults` (a test keeps the two in step)."""
from __future__ import annotations

from detectron2.config import CfgNode as CN

from ..data.mixing import METHODS, MODES, PASTE_MODES, SALIENCY_METHODS
from ..modeling.targets import FORMULATIONS


def add_lossmix_config(cfg: CN) -> CN:
    """Add the ``LOSSMIX`` node to a detectron2 config (call it before ``merge_from_file``); returns ``cfg``.

    Detectron2 keys LossMix reads beside these: ``SEED`` (the mixing streams; -1 = a seed shared by
    all processes, drawn at start), ``INPUT.FORMAT`` (BGR / RGB images are mixed), ``SOLVER.IMS_PER_BATCH``.
    """
    _C = cfg
    _C.LOSSMIX = CN()
    # none | uniform (union of both box sets, weights 1) | noise (partner blended in, its boxes dropped) | lossmix
    _C.LOSSMIX.MODE = "none"
    # mixup (geometry preserved, max(H) x max(W) canvas) | cutmix | saliencymix (patch on the partner's saliency peak)
    _C.LOSSMIX.METHOD = "mixup"
    # lambda ~ Beta(ALPHA, ALPHA); the paper found 1.0 best
    _C.LOSSMIX.ALPHA = 1.0
    # probability that a training sample is mixed (otherwise it is used as is, weights 1)
    _C.LOSSMIX.PROB = 1.0
    # partner blend weight range for MODE noise
    _C.LOSSMIX.NOISE_RANGE = (0.0, 0.1)
    # patch methods: instances whose visible fraction is below this are dropped
    _C.LOSSMIX.MIN_VISIBLE = 0.1
    # loss weight of background anchors / proposals
    _C.LOSSMIX.BG_WEIGHT = 1.0
    # saliencymix's saliency map: fine_grained (Montabone-Soto, as the SaliencyMix paper) | spectral_residual
    _C.LOSSMIX.SALIENCY = "fine_grained"
    # cutmix / saliencymix: partner brought to the base's size by stretch (unequal x / y factors)
    # | keep_aspect (one factor, cover then centre-crop)
    _C.LOSSMIX.PASTE = "stretch"
    # instance (per-instance weights) | interpolate (lambda * L(x, A) + (1 - lambda) * L(x, B))
    _C.LOSSMIX.FORMULATION = "instance"
    return cfg


def validate_lossmix_config(cfg: CN) -> None:
    """Reject out-of-range ``LOSSMIX.*`` values (the message names the key, the value and what is allowed)."""
    m = cfg.LOSSMIX
    for key, value, allowed in (("MODE", m.MODE, MODES), ("METHOD", m.METHOD, METHODS),
                                ("FORMULATION", m.FORMULATION, FORMULATIONS),
                                ("SALIENCY", m.SALIENCY, SALIENCY_METHODS), ("PASTE", m.PASTE, PASTE_MODES)):
        if value not in allowed:
            raise ValueError(f"LOSSMIX.{key} = {value!r}; allowed: {', '.join(allowed)}")
    for key in ("PROB", "MIN_VISIBLE"):
        if not 0.0 <= m[key] <= 1.0:
            raise ValueError(f"LOSSMIX.{key} = {m[key]!r}; allowed: a number in [0, 1]")
    if not m.ALPHA > 0:
        raise ValueError(f"LOSSMIX.ALPHA = {m.ALPHA!r}; allowed: > 0")
    if not m.BG_WEIGHT >= 0:
        raise ValueError(f"LOSSMIX.BG_WEIGHT = {m.BG_WEIGHT!r}; allowed: >= 0")
    lo, hi = m.NOISE_RANGE
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"LOSSMIX.NOISE_RANGE = {tuple(m.NOISE_RANGE)}; allowed: 0 <= low <= high <= 1")
