"""Partners for :class:`~lossmix.d2.mapper.LossMixDatasetMapper` inside ``build_detection_train_loader``.

detectron2's mapper sees one dataset dict at a time, so pairing happens one level up, in a dataset
wrapper that detectron2's own loader drives; the pairing, the draws and the mixing are the core's
(:mod:`lossmix.data.mixer`), only the structures are detectron2's:

- :class:`PositionedSampler` wraps any detectron2 training sampler (``TrainingSampler``,
  ``RepeatFactorTrainingSampler``, ...; already sharded per rank) and numbers what it yields:
  ``(position, index)``, ``position`` counting this rank's samples from 0;
- :class:`LossMixTrainDataset` maps ``(position, index)`` to a mixed model input. The rank's
  position becomes the core's global position (:func:`~lossmix.data.mixer.global_position`), so a
  sample's augmentation draws from :func:`~lossmix.data.mixer.sample_rng` and its mixing from
  :meth:`Mixer.rng`, exactly as on the torchvision side: a sample depends only on (seed, global
  position), not on the number of loader workers. The partner is the core's *loaded partner*
  (:func:`~lossmix.data.mixer.partner_index`, uniform over ``partners``, on the sample's stream
  after the sample), decoded only when :meth:`Mixer.plan` says the sample is mixed.

``partners`` defaults to the training set itself; pass e.g. an unlabelled target-domain list for
source-target mixing. :func:`build_lossmix_train_loader` assembles it the way
``build_detection_train_loader(cfg)`` would (same dataset dicts, sampler, batch size, aspect-ratio
grouping, workers).
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence

from torch.utils.data import Dataset, Sampler
from detectron2.data import build_detection_train_loader
from detectron2.data.build import _train_loader_from_config
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

from ..data.mixer import global_position, partner_index, sample_rng
from .mapper import LossMixDatasetMapper


class PositionedSampler(Sampler):
    """``(position, index)`` for each index of ``sampler``, positions from ``start`` (see module docstring)."""

    def __init__(self, sampler, start: int = 0):
        self.sampler = sampler
        self.start = int(start)

    def __iter__(self):
        # skipping is cheap: detectron2's samplers only draw permutations
        return itertools.islice(enumerate(self.sampler), self.start, None)


def _as_dataset(dicts):
    return DatasetFromList(dicts, copy=False) if isinstance(dicts, list) else dicts


class LossMixTrainDataset(Dataset):
    """Map-style dataset of ``(position, index)`` -> a mixed detectron2 model input.

    Args:
        dataset: the training dataset dicts (a list or an indexable dataset).
        mapper: a training :class:`LossMixDatasetMapper` (its ``mixer`` holds the policy and the seed).
        partners: dataset dicts partners are drawn from; default ``dataset``.
        local_batch: images per iteration on this rank; rank / world_size: default from ``comm``.
    """

    def __init__(self, dataset, mapper: LossMixDatasetMapper, *, local_batch: int,
                 partners: Optional[Sequence] = None, rank: Optional[int] = None, world_size: Optional[int] = None):
        if mapper.mixer.seed < 0:
            raise ValueError(f"the mixer's seed must be >= 0, got {mapper.mixer.seed}")
        self.dataset = _as_dataset(dataset)
        self.partners = self.dataset if partners is None else _as_dataset(partners)
        if len(self.partners) == 0:
            raise ValueError("no partners to mix with: the partner dataset is empty")
        self.mapper, self.mixer, self.local_batch = mapper, mapper.mixer, int(local_batch)
        self.rank = comm.get_rank() if rank is None else int(rank)
        self.world_size = comm.get_world_size() if world_size is None else int(world_size)

    def __len__(self):
        return len(self.dataset)

    def position(self, local_position: int) -> int:
        return global_position(local_position, rank=self.rank, local_batch=self.local_batch,
                               world_size=self.world_size)

    def __getitem__(self, item):
        local_position, index = item
        position = self.position(local_position)
        rng = sample_rng(self.mixer.seed, position)
        base = self.mapper.load_sample(self.dataset[index], rng)
        mix_rng = self.mixer.rng(position)
        plan = self.mixer.plan(mix_rng, position)
        partner = None
        if plan.mixes:
            partner = self.mapper.load_sample(self.partners[partner_index(rng, len(self.partners))], rng)
        out = self.mapper.to_input(self.mixer.apply(base, partner, plan, mix_rng))
        out["lossmix_position"] = position
        return out


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
    paired = LossMixTrainDataset(kwargs["dataset"], mapper, local_batch=local_batch, partners=partners)
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
