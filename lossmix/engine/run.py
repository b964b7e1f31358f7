"""The one training entry: build a recipe's modules and the shared pieces once, resume, DDP, train, evaluate.

``run(cfg)`` returns ``{"summary": {...}, "results": {dataset: {role: result}}}`` whatever the
recipe: role ``model`` for a supervised run, ``teacher`` / ``student`` for Adaptive Teacher.
"""
from __future__ import annotations

import logging
import os

import torch

from ..data.catalog import check_num_classes
from ..data.loader import bad_sample_log
from ..utils import comm
from .checkpoint import Checkpointer, check_new_run, load_detector, require_weights
from .inference import evaluate
from .recipes import get_recipe, recipe_name
from .schedule import build_optimizer, build_scheduler
from .trainer import Trainer, resolve_device

logger = logging.getLogger("lossmix")


def ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when there are several processes, else itself."""
    if comm.get_world_size() == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=False)


def run(cfg, *, resume: bool = False, allow_fresh: bool = False, eval_only: bool = False,
        overwrite: bool = False) -> dict:
    """Train per ``cfg`` with the recipe it names (with ``resume``, from the newest loadable checkpoint;
    ``allow_fresh``: start at 0 when none loads), then evaluate; with ``eval_only`` evaluate
    ``MODEL.WEIGHTS`` (role ``model``) without training. Without ``resume``, an ``OUTPUT_DIR`` that holds
    another run is refused (:class:`RunFolderError`), or with ``overwrite`` its run outputs are deleted first."""
    require_weights(cfg, eval_only=eval_only)
    check_num_classes(cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                      list(cfg.DATASETS.TEST) if eval_only else
                      [*cfg.DATASETS.TRAIN, *(cfg.DATASETS.TRAIN_UNLABELED if cfg.DA.ENABLED else ()), *cfg.DATASETS.TEST])
    if not resume and not eval_only:
        check_new_run(cfg.OUTPUT_DIR, overwrite=overwrite)
    if cfg.OUTPUT_DIR:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    torch.manual_seed(cfg.SEED + comm.get_rank())
    device = resolve_device(cfg.MODEL.DEVICE)
    if eval_only:
        return {"summary": {}, "results": evaluate(cfg, {"model": load_detector(cfg).to(device)}, device)}
    recipe = get_recipe(recipe_name(cfg)).from_config(cfg, device=device)
    optimizer = build_optimizer(cfg, recipe.trainable)
    scheduler = build_scheduler(cfg, optimizer)
    checkpointer = Checkpointer(cfg.OUTPUT_DIR, keep=cfg.SOLVER.KEEP_CHECKPOINTS, **recipe.checkpoint_modules,
                                optimizer=optimizer, scheduler=scheduler)
    start_iter = checkpointer.resume(allow_fresh=allow_fresh) if resume else 0
    recipe.distribute(lambda module: ddp(module, device))
    trainer = Trainer.from_config(
        cfg, recipe=recipe, optimizer=optimizer, scheduler=scheduler,
        data_loader=recipe.build_loader(cfg, start_iter=start_iter), checkpointer=checkpointer, device=device,
        start_iter=start_iter,
        evaluate=lambda iteration: evaluate(cfg, recipe.eval_models(iteration), device,
                                            cfg.TEST.EVAL_PERIOD_DATASETS or None))
    summary = trainer.train()
    interrupted = os.path.join(cfg.OUTPUT_DIR, "model_interrupted.pth") if cfg.OUTPUT_DIR else ""
    if interrupted and os.path.exists(interrupted) and comm.is_main_process():  # the run it saved has now finished
        os.remove(interrupted)
    summary["skipped_bad_samples"] = bad_sample_log(cfg).count()
    if summary["skipped_bad_samples"]:
        logger.warning("%d bad file(s) were left out; see %s/bad_samples.jsonl", summary["skipped_bad_samples"],
                       cfg.OUTPUT_DIR)
    results = evaluate(cfg, recipe.eval_models(cfg.SOLVER.MAX_ITER), device)
    return {"summary": summary, "results": results}


__all__ = ["run", "ddp"]
