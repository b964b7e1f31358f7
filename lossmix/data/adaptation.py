"""Data for domain adaptation: a two-view mapper, source x source / source x target mixing, the loader.

Each iteration the loader yields ``{"source": [model input], "target": [two-view item]}``:

- ``source``: ``SOLVER.IMS_PER_BATCH // world`` labelled images (weak view: resize + flip), each
  mixed with one partner drawn among the enabled burn-in pairs (``DA.MIX_PAIRS``):
  ``source_source`` (the next image of the batch, both box sets weighted per LossMix) or
  ``source_target`` (this slot's weak target view; the target brings no boxes, the source boxes
  keep their mixing weight). Each input also carries ``"domain"``: the target share of its pixels
  (0 for a source image, ``1 - lam`` for a source x target mix), the discriminator's label.
- ``target``: as many unlabelled images, each ``{"weak": model input (for the teacher),
  "strong": numpy sample (for the student), "position": int}``; both views share one geometry.
  When the target set's annotations are read for diagnostics or the upper bound (:func:`target_ground_truth`)
  the item also holds ``"ground_truth": {"boxes", "classes"}`` in the views' frame, apart from both views.
  Target images are only decoded from the first iteration that needs them (the end of burn-in,
  or iteration 0 when ``source_target`` mixing is on); before that the list is empty.

Target x target mixing needs the teacher's pseudo-labels, so it happens in the training process
(:mod:`lossmix.engine.pseudo_labels`). Every mixing draw, the partner rule and the pair-kind draw
come from the one :class:`~lossmix.data.mixer.Mixer` (generators from ``(SEED, position, stream)``):
resumable, independent of worker count, and never global seeding.

Images are ``HxWx3`` uint8 **RGB** throughout (``read_image`` decodes to RGB and the strong
augmentation's colour operations assume RGB).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from ..utils import comm
from .augment import StrongAugment
from .loader import TrainDataset, bad_sample_log, get_dataset_dicts, infinite_loader, local_batch_size
from .mapper import LossMixDatasetMapper, to_model_input
from .mixer import Mixer, partner_of

_TARGET_SEED_STREAM = 3  # derives the target dataset's seed (order and augmentation) from SEED


def active_pairs(cfg) -> tuple[str, ...]:
    """The ``DA.MIX_PAIRS`` that actually mix: none unless ``LOSSMIX.MODE`` mixes (plain Adaptive Teacher)."""
    if cfg.LOSSMIX.MODE == "none" or cfg.LOSSMIX.PROB <= 0:
        return ()
    return tuple(cfg.DA.MIX_PAIRS)


def target_ground_truth(cfg, target_dicts: Sequence[dict]) -> bool:
    """Whether the target images' annotations are read (apart from the views): always for
    ``DA.TARGET_LABELS ground_truth`` (an error naming the key when there are none), and for
    ``DA.PSEUDO_LABEL_METRICS auto`` when any target dict has annotations."""
    annotated = any(d.get("annotations") for d in target_dicts)
    if cfg.DA.TARGET_LABELS == "ground_truth":
        if not annotated:
            raise ValueError(f"DA.TARGET_LABELS = 'ground_truth' but DATASETS.TRAIN_UNLABELED "
                             f"{list(cfg.DATASETS.TRAIN_UNLABELED)} has no annotations to give the student")
        return True
    return cfg.DA.PSEUDO_LABEL_METRICS == "auto" and annotated


def without_boxes(sample: dict) -> dict:
    """A copy of a numpy sample with no instances (an unlabelled image as a mixing partner)."""
    out = dict(sample)
    out.update(boxes=np.zeros((0, 4), np.float32), classes=np.zeros(0, np.int64), weights=np.zeros(0, np.float32))
    return out


class TwoViewMapper:
    """Dataset dict -> ``{"weak": sample, "strong": sample}`` sharing one geometry.

    The weak view is :meth:`LossMixDatasetMapper.load` (read, resize to a drawn short side, maybe
    flip); the strong view is that image after :class:`StrongAugment` (colour jitter p=0.8,
    greyscale p=0.2, blur p=0.5, random erasing), so sizes and boxes are identical and only pixels
    differ. Both are numpy samples (``image`` HxWx3 uint8 RGB, ``boxes`` float32 [N,4], ``classes``
    int64 [N], ``weights`` float32 [N]). ``keep_annotations=False`` (unlabelled data) empties the
    boxes of both views, so a target set's annotations can never leak into training.
    ``ground_truth=True`` adds ``"ground_truth": {"boxes": float32 [N,4], "classes": int64 [N]}``: the
    annotations carried through the same geometry (the frame of both views and of the teacher's
    detections on the weak one), kept apart from the views (which stay empty unless ``keep_annotations``).
    """

    def __init__(self, *, weak: LossMixDatasetMapper, strong: Optional[StrongAugment] = None,
                 keep_annotations: bool = False, ground_truth: bool = False):
        self.weak = weak
        self.strong = strong if strong is not None else StrongAugment()
        self.keep_annotations = keep_annotations
        self.ground_truth = ground_truth

    @classmethod
    def from_config(cls, cfg, *, keep_annotations: bool = False, ground_truth: bool = False) -> "TwoViewMapper":
        weak = LossMixDatasetMapper.from_config(cfg, is_train=True).weak_only()
        return cls(weak=weak, keep_annotations=keep_annotations, ground_truth=ground_truth)

    def load(self, dataset_dict: dict, rng: np.random.Generator) -> dict:
        weak = self.weak.load(dataset_dict, rng)
        gt = {"boxes": weak["boxes"].copy(), "classes": weak["classes"].copy()} if self.ground_truth else None
        if not self.keep_annotations:
            weak = without_boxes(weak)
        strong = dict(weak)
        strong.update(image=self.strong.apply_image(weak["image"], rng), boxes=weak["boxes"].copy(),
                      classes=weak["classes"].copy(), weights=weak["weights"].copy())
        out = {"weak": weak, "strong": strong}
        if gt is not None:
            out["ground_truth"] = gt
        return out


class DomainAdaptationDataset(Dataset):
    """Global sample position -> ``{"source": loaded sample, "target": two-view sample or None}``.

    The target view is loaded only from iteration ``target_from_iter`` on (position //
    ``global_batch`` is the iteration).
    """

    def __init__(self, source: TrainDataset, target: TrainDataset, *, global_batch: int, target_from_iter: int):
        self.source, self.target = source, target
        self.global_batch, self.target_from_iter = global_batch, target_from_iter

    def __len__(self):
        return len(self.source)

    def __getitem__(self, position: int) -> dict:
        target = self.target[position] if position // self.global_batch >= self.target_from_iter else None
        return {"source": self.source[position], "target": target}


class DomainAdaptationCollate:
    """Mixes each source sample with its partner (see the module docstring) and builds model inputs.

    Args:
        mixer: the mixing policy, partner rule and generators (``LOSSMIX.*``, ``SEED``).
        source_pairs: enabled among ``("source_source", "source_target")``; with both, each slot
            draws one uniformly (:meth:`Mixer.choose_pair`, the first draw of its :meth:`Mixer.rng`).
        to_input: numpy sample -> model input (default :func:`to_model_input`; the detectron2
            plug-in passes its ``Instances`` conversion).
    """

    def __init__(self, mixer: Mixer, *, source_pairs: Sequence[str], to_input=to_model_input):
        self.mixer, self.to_input = mixer, to_input
        self.source_pairs = tuple(p for p in ("source_source", "source_target") if p in source_pairs)

    def mix_source(self, batch: Sequence[dict], target: Optional[dict], j: int) -> dict:
        """Mix ``batch[j]`` per the drawn pair kind; returns a model input with ``"domain"``."""
        sample = batch[j]
        position = sample["position"]
        rng = self.mixer.rng(position)
        kind = self.mixer.choose_pair(rng, self.source_pairs, target_available=target is not None)
        partner = None
        if kind == "source_source":
            partner = partner_of(batch, j)
        elif kind == "source_target":
            partner = without_boxes(target["weak"])
        mixed = self.mixer.mix(sample, partner, rng, position=position)
        inp = self.to_input(mixed)
        inp["domain"] = 1.0 - float(mixed["lam"]) if kind == "source_target" else 0.0
        return inp

    def __call__(self, items: list[dict]) -> dict:
        sources = [it["source"] for it in items]
        targets = [it["target"] for it in items]
        out_source = [self.mix_source(sources, t, j) for j, t in enumerate(targets)]
        out_target = [{"weak": self.to_input(t["weak"]), "strong": t["strong"], "position": t["position"],
                       **({"ground_truth": t["ground_truth"]} if "ground_truth" in t else {})}
                      for t in targets if t is not None]
        return {"source": out_source, "target": out_target}


def build_da_loader(cfg, *, start_iter: int = 0, local_batch: Optional[int] = None, mapper=None,
                    source_dicts: Optional[list] = None, target_dicts: Optional[list] = None, mixer: Optional[Mixer] = None,
                    to_input=to_model_input) -> DataLoader:
    """Infinite loader of ``{"source": [...], "target": [...]}`` batches for this rank (module docstring).

    ``SOLVER.IMS_PER_BATCH`` counts the source images of an iteration over all processes; as many
    target images come with them. The detectron2 plug-in passes its own ``mapper`` (any object with
    ``load(dataset_dict, rng) -> numpy sample``), dataset dicts, ``mixer`` and ``to_input``.
    """
    world = comm.get_world_size()
    local_batch = local_batch or local_batch_size(cfg)
    pairs = active_pairs(cfg)
    mapper = mapper or LossMixDatasetMapper.from_config(cfg, is_train=True)
    mixer = mixer or Mixer.from_config(cfg)
    bad_log = bad_sample_log(cfg)
    on_bad = cfg.DATALOADER.get("ON_BAD_SAMPLE", "error")  # a detectron2 config has no such key
    if source_dicts is None:
        source_dicts = get_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
                                         on_bad=on_bad, bad_log=bad_log)
    if target_dicts is None:
        target_dicts = get_dataset_dicts(cfg.DATASETS.TRAIN_UNLABELED, on_bad=on_bad, bad_log=bad_log)
    source = TrainDataset(source_dicts, mapper, seed=mixer.seed, on_bad=on_bad, bad_log=bad_log,
                          with_partner="source_source" in pairs and local_batch == 1)
    target_seed = int(np.random.SeedSequence([mixer.seed, _TARGET_SEED_STREAM]).generate_state(1)[0])
    weak = mapper.weak_only() if hasattr(mapper, "weak_only") else mapper  # the teacher's view is never strong
    target = TrainDataset(target_dicts, TwoViewMapper(weak=weak, ground_truth=target_ground_truth(cfg, target_dicts)),
                          seed=target_seed, on_bad=on_bad, bad_log=bad_log)
    dataset = DomainAdaptationDataset(source, target, global_batch=local_batch * world,
                                      target_from_iter=0 if "source_target" in pairs else cfg.DA.BURN_IN_ITERS)
    collate = DomainAdaptationCollate(mixer, source_pairs=pairs, to_input=to_input)
    return infinite_loader(cfg, dataset, collate, local_batch=local_batch, start_iter=start_iter)


__all__ = ["TwoViewMapper", "DomainAdaptationDataset", "DomainAdaptationCollate", "build_da_loader",
           "active_pairs", "without_boxes", "target_ground_truth"]
