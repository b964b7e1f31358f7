"""Partners for :class:`~lossmix.d2.mapper.LossMixDatasetMapper` inside ``build_detection_train_loader``.

detectron2's mapper sees one dataset dict at a time, so pairing happens one level up, in a dataset
wrapper that detectron2's own loader drives:

- :class:`PositionedSampler` wraps any detectron2 training sampler (``TrainingSampler``,
  ``RepeatFactorTrainingSampler``, ...; already sharded per rank) and numbers what it yields:
  ``(position, index)``, ``position`` counting this rank's samples from 0;
- :class:`LossMixTrainDataset` maps ``(position, index)`` to a mixed model input. Every random draw
  comes from its own stream, ``numpy.random.default_rng([seed, rank, position, k])``: ``k = 0`` the base
  image's augmentation, ``1`` the partner's, ``2`` the partner choice, ``3`` the mixing (``PROB``,
  lambda, patch). So a sample depends only on ``(seed, rank, position)``, not on the number of
  loader workers, and partner choice is independent of the mixing draws.

The partner is drawn uniformly from ``partners`` (default: the training set itself; pass e.g. an
unlabelled target-domain list for source-target mixing) and decoded separately, only when the sample
is mixed. :func:`build_lossmix_train_loader` assembles it the way ``build_detection_train_loader(cfg)``
would (same dataset dicts, sampler, batch size, aspect-ratio grouping, workers).
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np
from torch.utils.data import Dataset, Sampler
from detectron2.data import build_detection_train_loader
from detectron2.data.build import _train_loader_from_config
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

from .mapper import LossMixDatasetMapper

BASE_AUG, PARTNER_AUG, PARTNER_CHOICE, MIXING = range(4)  # stream numbers, see the module docstring


class PositionedSampler(Sampler):
    """``(position, index)`` for each index of ``sampler``, positions from ``start`` (see module docstring)."""

    def __init__(self, sampler, start: int = 0):
        self.sampler = sampler
        self.start = int(start)

    def __iter__(self):
        # skipping is cheap: detectron2's samplers only draw permutations
        return itertools.islice(enumerate(self.sampler), self.start, None)


class LossMixTrainDataset(Dataset):
    """Map-style dataset of ``(position, index)`` -> a mixed detectron2 model input.

    Args:
        dataset: the training dataset dicts (a list or an indexable dataset).
        mapper: a training :class:`LossMixDatasetMapper`.
        seed: the streams' seed (``>= 0``).
        partners: dataset dicts partners are drawn from; default ``dataset``.
        rank: this process's rank; default ``comm.get_rank()``.
    """

    def __init__(self, dataset, mapper: LossMixDatasetMapper, *, seed: int, partners: Optional[Sequence] = None,
                 rank: Optional[int] = None):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset = DatasetFromList(dataset, copy=False) if isinstance(dataset, list) else dataset
        if partners is None:
            self.partners = self.dataset
        else:
            self.partners = DatasetFromList(partners, copy=False) if isinstance(partners, list) else partners
        if len(self.partners) == 0:
            raise ValueError("no partners to mix with: the partner dataset is empty")
        self.mapper, self.seed = mapper, int(seed)
        self.rank = comm.get_rank() if rank is None else int(rank)

    def __len__(self):
        return len(self.dataset)

    def stream(self, position: int, k: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, int(position), k])

    def partner_index(self, position: int) -> int:
        """The partner of ``position``: uniform over ``partners``, from its own stream."""
        return int(self.stream(position, PARTNER_CHOICE).integers(len(self.partners)))

    def __getitem__(self, item):
        position, index = item
        mixing = self.stream(position, MIXING)
        plan = self.mapper.plan(mixing)
        base = self.mapper.load(self.dataset[index], self.stream(position, BASE_AUG))
        partner = None
        if plan.mode != "none":
            partner = self.mapper.load(self.partners[self.partner_index(position)], self.stream(position, PARTNER_AUG))
        out = self.mapper.mix(base, partner, plan, mixing)
        out["lossmix_position"] = int(position)
        return out


def _stream_seed(cfg) -> int:
    return int(cfg.SEED) if cfg.SEED >= 0 else int(comm.shared_random_seed())  # all ranks call this


def build_lossmix_train_loader(cfg, mapper: Optional[LossMixDatasetMapper] = None, *, dataset=None, sampler=None,
                               partners: Optional[Sequence] = None, start_iter: int = 0):
    """``build_detection_train_loader(cfg)`` with LossMix partners; see the module docstring.

    ``mapper`` defaults to ``LossMixDatasetMapper(cfg, is_train=True)``; ``dataset`` / ``sampler`` as
    detectron2 builds them from ``cfg`` unless given; ``partners`` defaults to the training dicts.
    ``start_iter`` skips the stream to that iteration (:func:`set_loader_start_iter` does it later,
    e.g. after ``resume_or_load``). Returns detectron2's loader (lists of model inputs).
    """
    mapper = mapper if mapper is not None else LossMixDatasetMapper(cfg, is_train=True)
    kwargs = _train_loader_from_config(cfg, mapper=mapper, dataset=dataset, sampler=sampler)
    local_batch = kwargs["total_batch_size"] // comm.get_world_size()
    paired = LossMixTrainDataset(kwargs["dataset"], mapper, seed=_stream_seed(cfg), partners=partners)
    positioned = PositionedSampler(kwargs["sampler"], start=start_iter * local_batch)
    loader = build_detection_train_loader(
        paired, mapper=None, sampler=positioned, total_batch_size=kwargs["total_batch_size"],
        aspect_ratio_grouping=kwargs["aspect_ratio_grouping"], num_workers=kwargs["num_workers"],
    )
    loader.lossmix_sampler, loader.lossmix_local_batch = positioned, local_batch
    return loader


def set_loader_start_iter(loader, start_iter: int) -> None:
    """Continue a :func:`build_lossmix_train_loader` stream at ``start_iter`` (call before iterating it).

    Without aspect-ratio grouping iteration ``i`` then gets exactly the samples it would have had in
    an uninterrupted run; with grouping, the same samples in nearly the same batches.
    """
    loader.lossmix_sampler.start = int(start_iter) * loader.lossmix_local_batch
