"""Checkpoints (atomic writes, the newest K kept, ``weights_only`` loading, resume state) and initial weights
(``MODEL.WEIGHTS``: checked at start-up, loaded into a freshly built detector)."""
from __future__ import annotations

import glob
import logging
import os
import random
import re
import tempfile

import numpy as np
import torch

from ..config.setup import ConfigError
from ..modeling.build import build_detector
from ..utils import comm

logger = logging.getLogger(__name__)

_PERIODIC = re.compile(r"model_(\d{7})\.pth$")
DAMAGED_SUFFIX = ".damaged"  # a checkpoint that does not load is renamed <name>.pth.damaged, never deleted
RUN_RECORDS = ("metrics.jsonl", "last_checkpoint")  # with any *.pth: an OUTPUT_DIR that holds a run


class UnreadableFileError(ValueError):
    """A checkpoint or weights file that ``torch.load`` cannot read; the message names the file and why."""


class ResumeError(RuntimeError):
    """``--resume`` found no checkpoint to continue from in a folder that holds a run."""


class RunFolderError(ResumeError):
    """A new run (no ``--resume``) was pointed at a folder that already holds a run."""


RUN_OUTPUTS = ("last_checkpoint", "metrics.jsonl", "metrics.dropped.jsonl", "bad_samples.jsonl", "eval")
RUN_OUTPUT_PATTERNS = ("*.pth", "*.pth.damaged", "events.out.tfevents.*")


def run_outputs(folder: str) -> list[str]:
    """The files and folders of ``folder`` that a training run writes (checkpoints, metrics, eval/, events)."""
    if not folder or not os.path.isdir(folder):
        return []
    found = [os.path.join(folder, n) for n in RUN_OUTPUTS if os.path.exists(os.path.join(folder, n))]
    for pattern in RUN_OUTPUT_PATTERNS:
        found += glob.glob(os.path.join(glob.escape(folder), pattern))
    return sorted(set(found))


def check_new_run(folder: str, *, overwrite: bool = False) -> None:
    """Before a run that does not resume: refuse a ``folder`` that holds another run's outputs, or with
    ``overwrite`` delete them (checkpoints, metrics, eval/, events; ``config.yaml``, ``log.txt`` and
    ``eval_only/`` stay), so two runs never mix in one folder."""
    import shutil

    found = run_outputs(folder)
    if not found:
        return
    if not overwrite:
        shown = ", ".join(os.path.basename(p) for p in found[:5]) + (", ..." if len(found) > 5 else "")
        raise RunFolderError(
            f"OUTPUT_DIR {folder} already holds a run ({shown}); add --resume to continue it, set OUTPUT_DIR to a "
            "new folder, or add --overwrite to delete its checkpoints, metrics and evaluations and start over")
    if comm.is_main_process():
        for path in found:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        logger.warning("--overwrite: deleted %d file(s) / folder(s) of the previous run in %s", len(found), folder)


def torch_load(path: str, what: str = "file"):
    """``torch.load(path, weights_only=True)`` on CPU; any failure becomes one :class:`UnreadableFileError` line
    naming ``what`` and ``path`` and saying what is wrong (truncated archive, not a PyTorch file, pickled objects)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path!r} does not exist") from None
    except OSError as err:
        raise UnreadableFileError(f"{what} {path!r}: cannot read it ({err.strerror or err})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... depending on the damage
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not head:
            why = "the file is empty (0 bytes)"
        elif not head.startswith((b"PK", b"\x80")):  # neither torch.save's zip archive nor a legacy pickle
            why = f"not a PyTorch file written by torch.save (it starts with {head!r})"
        elif "weights only load failed" in first.lower():
            why = ("holds Python objects besides tensors (e.g. a whole pickled model), which are not loaded "
                   "from untrusted files; save model.state_dict() with torch.save instead")
        elif head.startswith(b"PK"):
            why = f"truncated or corrupt PyTorch archive ({type(err).__name__}: {first[:100]})"
        else:
            why = f"not a PyTorch file written by torch.save (it starts with {head!r}; {type(err).__name__})"
        raise UnreadableFileError(f"{what} {path!r}: {why}") from None


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

    def pointed_checkpoint(self) -> str | None:
        """The path ``last_checkpoint`` names (whether or not it exists), or None without a pointer."""
        pointer = os.path.join(self.folder, "last_checkpoint")
        if not os.path.exists(pointer):
            return None
        with open(pointer) as f:
            return os.path.join(self.folder, f.read().strip())

    def last_checkpoint(self) -> str | None:
        path = self.pointed_checkpoint()
        return path if path and os.path.exists(path) else None

    def candidates(self) -> list[str]:
        """Checkpoints to resume from, newest first: the one ``last_checkpoint`` names, then every other
        ``*.pth`` of the folder by modification time (periodic, final, interrupted)."""
        pointed = self.last_checkpoint()
        others = [p for p in glob.glob(os.path.join(glob.escape(self.folder), "*.pth"))
                  if not os.path.basename(p).startswith(".tmp_") and p != pointed]
        others.sort(key=lambda p: (os.path.getmtime(p), p), reverse=True)
        return ([pointed] if pointed else []) + others

    def holds_run(self) -> bool:
        """True when the folder holds a run's records (metrics, a checkpoint pointer or any checkpoint)."""
        if not self.folder or not os.path.isdir(self.folder):
            return False
        return any(os.path.exists(os.path.join(self.folder, name)) for name in RUN_RECORDS) or bool(
            glob.glob(os.path.join(glob.escape(self.folder), "*.pth*")))

    def resume(self, *, allow_fresh: bool = False) -> int:
        """Load the newest checkpoint that loads and return its iteration (0 when starting fresh).

        A checkpoint that does not load is named in a warning and moved aside to ``<name>.pth.damaged``
        (main process; never deleted), and the next older one is tried. ``last_checkpoint`` naming a file
        that is gone is warned about too. With nothing loadable in a folder that holds a run,
        :class:`ResumeError` unless ``allow_fresh`` (then training starts at iteration 0, with a warning).
        """
        from ..utils import comm

        pointed = self.pointed_checkpoint()
        if pointed and not os.path.exists(pointed):
            logger.warning("last_checkpoint names %s, which does not exist; trying the other checkpoints", pointed)
        for path in self.candidates():
            try:
                iteration = int(self.load(path)["iteration"])
            except (UnreadableFileError, FileNotFoundError) as err:  # the file itself is damaged (or gone)
                logger.warning("checkpoint %s does not load (%s); moving it aside and trying an older one",
                               path, str(err).splitlines()[0])
                if comm.is_main_process() and os.path.exists(path):
                    os.replace(path, path + DAMAGED_SUFFIX)
                    logger.warning("moved %s to %s", path, path + DAMAGED_SUFFIX)
                continue
            logger.info("resumed from %s at iteration %d", path, iteration)
            return iteration
        if self.holds_run() and not allow_fresh:
            found = sorted(os.listdir(self.folder))
            raise ResumeError(
                f"--resume: no loadable checkpoint in {self.folder} (it holds {', '.join(found[:8])}"
                f"{', ...' if len(found) > 8 else ''}); refusing to start over in a run folder. Point OUTPUT_DIR "
                f"elsewhere, or add --allow-fresh to start from iteration 0 here")
        if self.holds_run():
            logger.warning("--resume: no loadable checkpoint in %s; starting from iteration 0", self.folder)
        return 0

    def load(self, path: str, *, restore_rng: bool = True) -> dict:
        """Restore every registered module (and this rank's RNGs); returns the remaining entries (iteration, ...).

        Each rank restores its own state from ``rng_per_rank`` when the checkpoint has one per
        process; otherwise rank 0 restores ``rng`` and other ranks keep their ``SEED + rank`` streams
        (with a warning): one rank's state on every rank would make them draw alike.
        """
        data = torch_load(path, "checkpoint")
        if not isinstance(data, dict) or "iteration" not in data:
            raise UnreadableFileError(f"checkpoint {path!r}: not a lossmix checkpoint (no 'iteration' entry)")
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


# ------------------------------------------------------------------------------- initial weights (MODEL.WEIGHTS)
# torchvision classification models whose ImageNet weights fit each backbone (for the advice below)
_IMAGENET_MODELS = {"R18-FPN": "resnet18", "R34-FPN": "resnet34", "R50-FPN": "resnet50", "R101-FPN": "resnet101",
                    "MNV3-FPN": "mobilenet_v3_large"}


def require_weights(cfg, *, eval_only: bool = False) -> None:
    """Refuse a run that would use random weights where pretrained ones are needed, saying how to get them.

    ``--eval-only`` without ``MODEL.WEIGHTS`` is an error (it would evaluate a random model). Training
    without ``MODEL.WEIGHTS`` is an error when the backbone cannot learn from scratch: frozen BatchNorm
    (``MODEL.BACKBONE.NORM FrozenBN``) or frozen stages (``TRAINABLE_LAYERS`` < 5).
    """
    if cfg.MODEL.WEIGHTS:
        return
    if eval_only:
        raise ConfigError("--eval-only needs MODEL.WEIGHTS (a checkpoint such as OUTPUT_DIR/model_final.pth); "
                          "without it a randomly initialised model would be evaluated")
    backbone = cfg.MODEL.BACKBONE
    if backbone.NORM != "FrozenBN" and backbone.TRAINABLE_LAYERS >= 5:
        return
    arch = _IMAGENET_MODELS.get(backbone.NAME, "resnet50")
    raise ConfigError(
        f"MODEL.WEIGHTS is empty but MODEL.BACKBONE.NORM = {backbone.NORM} and TRAINABLE_LAYERS = "
        f"{backbone.TRAINABLE_LAYERS}: this {backbone.NAME} would train from random weights with frozen "
        f"normalisation / stages. Give MODEL.WEIGHTS an ImageNet state dict saved on a machine with internet: "
        f"python -c \"import torch, torchvision; torch.save(torchvision.models.{arch}(weights='IMAGENET1K_V1')"
        f".state_dict(), '{arch}_imagenet.pth')\" then MODEL.WEIGHTS {arch}_imagenet.pth; or train from scratch with "
        f"MODEL.BACKBONE.NORM BN MODEL.BACKBONE.TRAINABLE_LAYERS 5")


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_weights(model: torch.nn.Module, path: str) -> dict:
    """Load ``path`` into ``model``; returns ``{"kind", "missing", "unexpected", "skipped"}``.

    Accepted files (``torch.load(weights_only=True)``: a weights file is untrusted input):
    one of our checkpoints (``{"model": state_dict, ...}``), a torchvision detector state dict
    (``backbone.*`` with ``rpn.*`` / ``roi_heads.*`` or, for RetinaNet / FCOS, ``head.*``; tensors whose shape
    differs, e.g. the class predictor of another dataset, are skipped and listed) or an ImageNet classification backbone
    state dict (``conv1.*``/``layer*.*`` for ResNets, ``features.*`` for MobileNetV3).
    """
    if not os.path.isfile(path):
        from ..config.setup import config_writing

        maker = config_writing(path)
        hint = (f"; it is written by python tools/train_net.py --config-file {maker}: run that first" if maker else
                " (weights are never downloaded; give a local path)")
        raise FileNotFoundError(f"MODEL.WEIGHTS: no such file {path!r}{hint}")
    state = torch_load(path, "MODEL.WEIGHTS")
    if not isinstance(state, dict):
        raise UnreadableFileError(f"MODEL.WEIGHTS {path!r}: holds a {type(state).__name__}, expected a state dict "
                                  "(a dict of tensors, e.g. torch.save(model.state_dict(), path)) or a lossmix checkpoint")
    kind = None
    if isinstance(state.get("model"), dict):
        state, kind = state["model"], "checkpoint"
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise UnreadableFileError(f"MODEL.WEIGHTS {path!r}: not a state dict: entry {bad[0]!r} is a "
                                  f"{type(state[bad[0]]).__name__}, expected a tensor")
    if kind == "checkpoint":
        pass
    elif any(k.startswith(("backbone.", "rpn.", "roi_heads.", "head.")) for k in state):
        kind = "detector"
    elif any(k.startswith(("conv1.", "layer1.", "features.")) for k in state):
        kind = "backbone"
        state = _strip(state, "features.") if any(k.startswith("features.") for k in state) else state
        state = {"backbone.body." + k: v for k, v in state.items() if not k.startswith("fc.")}
    else:
        raise UnreadableFileError(f"MODEL.WEIGHTS {path!r}: a state dict with none of the expected keys (first: "
                                  f"{list(state)[:3]}); expected a lossmix checkpoint, torchvision detector or "
                                  "ImageNet backbone")
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in skipped}
    body = [k for k in own if k.startswith("backbone.body.")]
    loaded = [k for k in body if k in state]
    if kind in ("backbone", "detector") and body and len(loaded) < len(body) / 2:  # e.g. R18 weights for an R50 model
        absent = len(body) - len(loaded) - len([k for k in skipped if k.startswith("backbone.body.")])
        raise UnreadableFileError(
            f"MODEL.WEIGHTS {path!r}: only {len(loaded)} of the backbone's {len(body)} tensors load from it "
            f"({len(body) - len(loaded) - absent} have another shape, {absent} are absent); weights of another "
            "backbone than MODEL.BACKBONE.NAME?")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if kind != "backbone" or k.startswith("backbone.body.")]
    if kind == "checkpoint" and (missing or result.unexpected_keys or skipped):
        raise ValueError(
            f"MODEL.WEIGHTS {path!r} does not match the model: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}, shape mismatch {skipped[:5]}"
        )
    logger.info("loaded %s weights from %s (missing %d, unexpected %d, skipped %d)", kind, path,
                len(missing), len(result.unexpected_keys), len(skipped))
    return {"kind": kind, "missing": missing, "unexpected": list(result.unexpected_keys), "skipped": skipped}


def load_detector(cfg) -> torch.nn.Module:
    """:func:`~lossmix.modeling.build.build_detector` with ``MODEL.WEIGHTS`` loaded when set: what training
    and evaluation start from."""
    model = build_detector(cfg)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS)
    return model
