"""LossMix for detectron2 users: config keys, a mixing dataset mapper and loader, and weighted heads.

Optional: ``import lossmix`` never imports detectron2; only ``import lossmix.d2`` does, and it
registers ``LossMixRPN`` (``PROPOSAL_GENERATOR_REGISTRY``) and ``LossMixStandardROIHeads`` /
``LossMixRes5ROIHeads`` (``ROI_HEADS_REGISTRY``). The three calls a detectron2 project adds::

    import lossmix.d2 as lmd2
    lmd2.add_lossmix_config(cfg)                    # LOSSMIX.* keys, before merge_from_file
    loader = lmd2.build_lossmix_train_loader(cfg)   # in Trainer.build_train_loader
    # and in the YAML: MODEL.PROPOSAL_GENERATOR.NAME "LossMixRPN",
    #                  MODEL.ROI_HEADS.NAME "LossMixStandardROIHeads" (or "LossMixRes5ROIHeads")

The config keys are built from :mod:`lossmix.config`'s definition, the mixing policy, partner rule
and random streams are the core :class:`~lossmix.data.mixer.Mixer`'s, the weighted reductions
:mod:`lossmix.modeling.losses`'; this subpackage only adapts them to detectron2's data structures.
Adaptive-Teacher training (EMA teacher, pseudo-labels, domain discriminator, LossMix pairs) on
detectron2 models: :mod:`lossmix.d2.adaptation`, selected by ``DA.ENABLED`` in ``tools/d2_train_net.py``.
"""
try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by tests/test_d2_import.py
    raise ImportError(
        "lossmix.d2 needs detectron2, which is not on PyPI. Install it from source into the same "
        "environment (after torch), e.g.\n"
        "    pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'\n"
        "(see https://detectron2.readthedocs.io/en/latest/tutorials/install.html and the README section "
        "'Using lossmix from detectron2'). The rest of lossmix works without it."
    ) from e

from ..data.mixer import Mixer, MixPlan
from .config import add_da_config, add_lossmix_config
from .data import LossMixTrainDataset, PositionedSampler, build_lossmix_train_loader, set_loader_start_iter
from .mapper import LossMixDatasetMapper
from .modeling import (
    LossMixFastRCNNOutputLayers,
    LossMixOutputLayersMixin,
    LossMixRes5ROIHeads,
    LossMixROIHeadsMixin,
    LossMixRPN,
    LossMixRPNMixin,
    LossMixStandardROIHeads,
    as_lossmix_predictor,
)

__all__ = [
    "add_lossmix_config",
    "add_da_config",
    "Mixer",
    "LossMixDatasetMapper",
    "MixPlan",
    "LossMixTrainDataset",
    "PositionedSampler",
    "build_lossmix_train_loader",
    "set_loader_start_iter",
    "LossMixRPNMixin",
    "LossMixRPN",
    "LossMixROIHeadsMixin",
    "LossMixStandardROIHeads",
    "LossMixRes5ROIHeads",
    "LossMixOutputLayersMixin",
    "LossMixFastRCNNOutputLayers",
    "as_lossmix_predictor",
]
