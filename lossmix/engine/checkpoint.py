"""Checkpoints: atomic writes, the newest K kept, ``weights_only`` loading, resume state."""
from __future__ import annotations

import glob
import logging
import os
import random
import re
import tempfile

import numpy as np
import torch

from ..utils import comm

logger = logging.getLogger(__name__)

_PERIODIC = re.compile(r"model_(\d{7})\.pth$")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP (``.module``), or the model itself."""
    return model.module if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def atomic_save(obj, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": repr(random.getstate()),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    import ast

    random.setstate(ast.literal_eval(state["python"]))


class Checkpointer:
    """Saves ``{"model", "iteration", "optimizer", "scheduler", "rng", "rng_per_rank", **extra}`` under ``folder``.

    ``rng`` is the saving process's RNG state; ``rng_per_rank`` (DDP) every rank's, gathered by the
    trainer, so that on resume each rank continues its own stream.

    ``save(name)`` writes ``name.pth`` atomically and points ``last_checkpoint`` at it; periodic
    checkpoints (``model_0001234.pth``) beyond the newest ``keep`` are deleted. Loading uses
    ``torch.load(weights_only=True)``: a checkpoint is untrusted input.
    """

    def __init__(self, folder: str, *, keep: int = 3, **modules):
        self.folder, self.keep, self.modules = folder, keep, modules

    def save(self, name: str, iteration: int, *, rng_per_rank: list | None = None, **extra) -> str:
        data = {key: (unwrap(m).state_dict()) for key, m in self.modules.items() if m is not None}
        data.update(iteration=int(iteration), rng=rng_state(), **extra)
        if rng_per_rank is not None:
            data["rng_per_rank"] = list(rng_per_rank)
        path = os.path.join(self.folder, f"{name}.pth")
        atomic_save(data, path)
        tmp_last = os.path.join(self.folder, ".last_checkpoint.tmp")
        with open(tmp_last, "w") as f:
            f.write(os.path.basename(path))
        os.replace(tmp_last, os.path.join(self.folder, "last_checkpoint"))
        self._prune()
        logger.info("saved checkpoint %s (iteration %d)", path, iteration)
        return path

    def _prune(self) -> None:
        periodic = sorted(p for p in glob.glob(os.path.join(self.folder, "model_*.pth")) if _PERIODIC.search(p))
        for old in periodic[: max(len(periodic) - self.keep, 0)]:
            os.remove(old)

    def last_checkpoint(self) -> str | None:
        pointer = os.path.join(self.folder, "last_checkpoint")
        if not os.path.exists(pointer):
            return None
        with open(pointer) as f:
            path = os.path.join(self.folder, f.read().strip())
        return path if os.path.exists(path) else None

    def load(self, path: str, *, restore_rng: bool = True) -> dict:
        """Restore every registered module (and this rank's RNGs); returns the remaining entries (iteration, ...).

        Each rank restores its own state from ``rng_per_rank`` when the checkpoint has one per
        process; otherwise rank 0 restores ``rng`` and other ranks keep their ``SEED + rank`` streams
        (with a warning): one rank's state on every rank would make them draw alike.
        """
        data = torch.load(path, map_location="cpu", weights_only=True)
        for key, module in self.modules.items():
            if module is None:
                continue
            if key not in data:
                raise KeyError(f"checkpoint {path} has no {key!r} entry")
            unwrap(module).load_state_dict(data[key])
        if restore_rng:
            rank, per_rank = comm.get_rank(), data.get("rng_per_rank")
            if per_rank is not None and len(per_rank) == comm.get_world_size():
                set_rng_state(per_rank[rank])
            elif rank == 0 and "rng" in data:
                set_rng_state(data["rng"])
            else:
                logger.warning("%s holds no RNG state for rank %d; it keeps its seeded stream", path, rank)
        return {k: v for k, v in data.items() if k not in self.modules}
