"""Training and test loaders: deterministic, resumable, DDP-aware; partners paired within a batch.

Training draws depend only on ``(SEED, global sample position)``: position ``p`` of iteration
``it`` on rank ``r`` is ``it * global_batch + r * local_batch + j``. The dataset index of ``p`` comes
from a per-epoch permutation, its augmentation and its mixing from the streams of
:mod:`lossmix.data.mixer` (``default_rng([seed, p])``, ``default_rng([seed, p, 1])``); so the stream is the same whatever the number of workers, and
resuming at iteration ``it`` continues it exactly.

Partners are the other samples of the same batch (sample ``j`` mixes with ``j + 1``), so mixing
costs no extra decoding; with one image per batch the partner is decoded separately.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..utils import comm
from .catalog import DatasetCatalog
from .errors import BadSampleError
from .mapper import LossMixDatasetMapper, to_model_input
from .mixer import Mixer, partner_index, sample_rng

logger = logging.getLogger(__name__)

MAX_REPLACEMENTS = 100  # consecutive bad samples tolerated under ON_BAD_SAMPLE skip before giving up
ON_BAD_KEYS = {"train": "DATALOADER.ON_BAD_SAMPLE", "test": "TEST.ON_BAD_SAMPLE"}


def with_hint(err: BadSampleError, stage: str = "train") -> BadSampleError:
    """``err`` with what to do next: the skip policy, and the tool that lists every bad file at once."""
    return BadSampleError(err.path, f"{err.problem} ({ON_BAD_KEYS.get(stage, ON_BAD_KEYS['train'])} skip leaves bad "
                          "files out; tools/check_dataset.py lists every bad file)", kind=err.kind)


def get_dataset_dicts(names, *, filter_empty: bool = False, on_bad: str = "error",
                      bad_log: Optional["BadSampleLog"] = None, stage: str = "train") -> list[dict]:
    """Concatenate registered datasets; ``filter_empty`` drops images without annotations.

    ``on_bad="skip"``: annotation files that do not parse (malformed / hostile XML, unknown class, bad box...)
    are left out when the dataset is built, each logged with its file and kind and recorded in ``bad_log``
    (main process) with ``stage`` and the dataset name.
    """
    if isinstance(names, str):
        names = [names]
    dicts = []
    for name in names:
        problems: list = []
        try:
            dicts.extend(DatasetCatalog.get(name, on_bad=on_bad, problems=problems))
        except BadSampleError as err:
            raise with_hint(err, stage) from None
        if problems:
            logger.warning("dataset %s: %d bad annotation file(s) left out (DATALOADER/TEST.ON_BAD_SAMPLE skip)",
                           name, len(problems))
            if bad_log is not None and comm.is_main_process():
                for record in problems:
                    bad_log.write(record, stage=stage, dataset=name)
    if filter_empty:
        dicts = [d for d in dicts if d.get("annotations")]
    if not dicts:
        raise ValueError(f"datasets {list(names)} contain no images")
    return dicts


class BadSampleLog:
    """Appends skipped samples to ``OUTPUT_DIR/bad_samples.jsonl`` (one JSON object per line, any process)."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self._seen: Optional[set] = None  # (file, kind, stage) already in the file

    def record(self, err: BadSampleError, **context) -> None:
        logger.warning("skipping bad sample: %s [%s]", err, err.kind)
        self.write(err.as_record(), **context)

    @staticmethod
    def _key(row: dict) -> tuple:
        return row.get("file"), row.get("kind"), row.get("stage")

    def write(self, record: dict, **context) -> None:
        """Append ``record`` + ``context`` unless a row for the same file, kind and stage is there already (a
        resumed run rebuilding its dataset, another worker meeting the same file)."""
        if not self.path:
            return
        row = {**record, **context}
        if self._seen is None:
            self._seen = {self._key(r) for r in self.rows()}
        if self._key(row) in self._seen:
            return
        self._seen.add(self._key(row))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict]:
        if not self.path or not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def count(self) -> int:
        """Distinct bad files logged (a bad image met on several iterations counts once)."""
        return len({row.get("file") for row in self.rows()})

    def count_events(self) -> int:
        """Rows logged: each time a bad file was skipped."""
        return len(self.rows())


class TrainPositions(Sampler):
    """Infinite stream of this rank's global sample positions, starting at ``start_iter``."""

    def __init__(self, local_batch: int, start_iter: int = 0, rank: Optional[int] = None,
                 world_size: Optional[int] = None):
        self.local_batch = local_batch
        self.start_iter = start_iter
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size

    def __iter__(self):
        global_batch = self.local_batch * self.world_size
        it = self.start_iter
        while True:
            base = it * global_batch + self.rank * self.local_batch
            yield from range(base, base + self.local_batch)
            it += 1


class TrainDataset(Dataset):
    """Global sample position -> loaded (weak-augmented, not yet mixed) sample."""

    def __init__(self, dicts: list[dict], mapper: LossMixDatasetMapper, *, seed: int, on_bad: str = "error",
                 bad_log: Optional[BadSampleLog] = None, with_partner: bool = False):
        self.dicts, self.mapper, self.seed = dicts, mapper, seed
        self.on_bad, self.bad_log = on_bad, bad_log or BadSampleLog(None)
        self.with_partner = with_partner
        self._perm_epoch, self._perm = -1, None
        self._bad: set[int] = set()  # indices found bad under skip: never read again (in this process)

    def __len__(self):
        return len(self.dicts)

    def index_of(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.dicts))
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.dicts))
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def load_index(self, index: int, rng: np.random.Generator, position: int) -> dict:
        """Load ``dicts[index]``; under ``skip`` a bad file is logged and the next one taken."""
        for attempt in range(MAX_REPLACEMENTS):
            current = (index + attempt) % len(self.dicts)
            if current in self._bad:  # dropped once; taking the next one is what reading it again would do
                continue
            try:
                return self.mapper.load(self.dicts[current], rng)
            except BadSampleError as err:
                if self.on_bad != "skip":
                    raise with_hint(err) from None
                self._bad.add(current)
                self.bad_log.record(err, position=position)
        raise RuntimeError(f"{MAX_REPLACEMENTS} consecutive bad samples from index {index}; is the dataset readable?")

    def __getitem__(self, position: int):
        rng = sample_rng(self.seed, position)
        sample = self.load_index(self.index_of(position), rng, position)
        sample["position"] = position
        if self.with_partner:
            sample["partner"] = self.load_index(partner_index(rng, len(self.dicts)), rng, position)
        return sample


class MixCollate:
    """Mixes each sample of a batch with its partner (:meth:`Mixer.mix_batch`) and builds model inputs."""

    def __init__(self, mixer: Mixer):
        self.mixer = mixer

    def __call__(self, samples: list[dict]) -> list[dict]:
        return [to_model_input(mixed) for _, mixed in self.mixer.mix_batch(samples)]


def _as_list(batch):
    return batch


def _worker_init(_):
    # Workers share the cores with the training process. (No cv2.setNumThreads here: in a forked
    # worker it can deadlock tearing down the thread pool inherited from the parent.)
    torch.set_num_threads(1)


def local_batch_size(cfg) -> int:
    """``SOLVER.IMS_PER_BATCH`` split over the processes (it must divide evenly)."""
    world = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be divisible by the {world} processes")
    return cfg.SOLVER.IMS_PER_BATCH // world


def bad_sample_log(cfg) -> BadSampleLog:
    return BadSampleLog(os.path.join(cfg.OUTPUT_DIR, "bad_samples.jsonl") if cfg.OUTPUT_DIR else None)


def infinite_loader(cfg, dataset: Dataset, collate_fn, *, local_batch: int, start_iter: int) -> DataLoader:
    """The DataLoader over global sample positions from ``start_iter`` (shared by every training loader)."""
    workers = cfg.DATALOADER.NUM_WORKERS
    return DataLoader(
        dataset,
        batch_size=local_batch,
        sampler=TrainPositions(local_batch, start_iter),
        num_workers=workers,
        collate_fn=collate_fn,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers else None,
        generator=torch.Generator().manual_seed(cfg.SEED),  # keeps the global torch RNG (model sampling) untouched
    )


def build_train_loader(cfg, *, mapper: Optional[LossMixDatasetMapper] = None, mixer: Optional[Mixer] = None,
                       dataset_names=None, start_iter: int = 0, local_batch: Optional[int] = None) -> DataLoader:
    """An infinite loader of lists of model inputs for this rank (``mixer`` defaults to ``LOSSMIX.*``)."""
    dicts = get_dataset_dicts(dataset_names or cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
                              on_bad=cfg.DATALOADER.ON_BAD_SAMPLE, bad_log=bad_sample_log(cfg))
    mapper = mapper or LossMixDatasetMapper.from_config(cfg, is_train=True)
    mixer = mixer or Mixer.from_config(cfg)
    local_batch = local_batch or local_batch_size(cfg)
    dataset = TrainDataset(dicts, mapper, seed=cfg.SEED, on_bad=cfg.DATALOADER.ON_BAD_SAMPLE,
                           bad_log=bad_sample_log(cfg), with_partner=mixer.mixes and local_batch == 1)
    return infinite_loader(cfg, dataset, MixCollate(mixer), local_batch=local_batch, start_iter=start_iter)


class TestDataset(Dataset):
    """Test images as model inputs. ``on_bad="skip"``: an image that cannot be read is logged and yields None
    (the evaluator then has no detections for it, so its boxes count as misses)."""

    def __init__(self, dicts, mapper, *, on_bad: str = "error", bad_log: Optional[BadSampleLog] = None):
        self.dicts, self.mapper = dicts, mapper
        self.on_bad, self.bad_log = on_bad, bad_log or BadSampleLog(None)

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, i):
        try:
            sample = self.mapper.load(self.dicts[i], np.random.default_rng(0))
        except BadSampleError as err:
            if self.on_bad != "skip":
                raise with_hint(err, "test") from None
            self.bad_log.record(err, stage="test")
            return None
        return to_model_input(sample)


def eval_dataset_dicts(cfg, dataset_name: str) -> list[dict]:
    """A test set's dicts under ``TEST.ON_BAD_SAMPLE`` (``skip`` leaves bad annotation files out, logged)."""
    return get_dataset_dicts(dataset_name, on_bad=cfg.TEST.ON_BAD_SAMPLE, bad_log=bad_sample_log(cfg), stage="test")


def build_test_loader(cfg, dataset_name: str, *, mapper: Optional[LossMixDatasetMapper] = None,
                      dicts: Optional[list] = None) -> DataLoader:
    """Loader over this rank's contiguous share of a test set (batch 1, no augmentation); ``dicts`` defaults to
    :func:`eval_dataset_dicts`."""
    dicts = eval_dataset_dicts(cfg, dataset_name) if dicts is None else dicts
    rank, world = comm.get_rank(), comm.get_world_size()
    share = (len(dicts) + world - 1) // world
    mine = dicts[rank * share:(rank + 1) * share]
    mapper = mapper or LossMixDatasetMapper.from_config(cfg, is_train=False)
    workers = cfg.DATALOADER.NUM_WORKERS
    dataset = TestDataset(mine, mapper, on_bad=cfg.TEST.ON_BAD_SAMPLE, bad_log=bad_sample_log(cfg))
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers,
                      collate_fn=_as_list, worker_init_fn=_worker_init if workers else None)
