"""``setup`` / ``train`` / ``evaluate``: what ``tools/train_net.py`` runs, reusable from Python."""
from __future__ import annotations

import json
import logging
import os

import torch

from ..config.setup import build_config, for_eval_only
from ..data.builtin import register_custom
from ..data.catalog import check_num_classes
from ..data.loader import bad_sample_log, build_train_loader
from ..modeling.build import build_detector, require_weights
from ..utils import comm
from ..utils.logger import setup_logging
from .checkpoint import Checkpointer
from .inference import evaluate_dataset
from .schedule import build_optimizer, build_scheduler
from .trainer import Trainer, resolve_device

logger = logging.getLogger("lossmix")


def setup(config_file: str = "", opts=None, *, eval_only: bool = False):
    """Config from file + overrides, the output folder (with the merged config.yaml), logging (console and
    OUTPUT_DIR/log.txt) and the DATASETS.CUSTOM_VOC folders. ``eval_only``: OUTPUT_DIR/eval_only/<weights>."""
    cfg = build_config(config_file, opts)
    if eval_only:
        cfg = for_eval_only(cfg)
    register_custom(cfg)
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(cfg.dump())
    setup_logging(cfg.OUTPUT_DIR)
    return cfg


def _ddp(model, device):
    if comm.get_world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def write_eval(cfg, dataset_name: str, result) -> None:
    """``OUTPUT_DIR/eval/<dataset_name>.json`` (main process only)."""
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        os.makedirs(os.path.join(cfg.OUTPUT_DIR, "eval"), exist_ok=True)
        with open(os.path.join(cfg.OUTPUT_DIR, "eval", f"{dataset_name}.json"), "w") as f:
            json.dump(result, f, indent=1)


def evaluate(cfg, model, device, dataset_names=None) -> dict:
    """Evaluate on ``DATASETS.TEST`` (or the given names); writes ``OUTPUT_DIR/eval/<name>.json``."""
    results = {}
    for name in dataset_names or cfg.DATASETS.TEST:
        result = evaluate_dataset(cfg, model, name, device)
        write_eval(cfg, name, result)
        if comm.is_main_process():
            results[name] = result
    return results


def train(cfg, *, resume: bool = False, allow_fresh: bool = False) -> dict:
    """Supervised training per ``cfg`` (resuming from the newest loadable checkpoint if asked); returns results."""
    require_weights(cfg)
    check_num_classes(cfg.MODEL.ROI_HEADS.NUM_CLASSES, [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])
    if cfg.OUTPUT_DIR:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    torch.manual_seed(cfg.SEED + comm.get_rank())
    device = resolve_device(cfg.MODEL.DEVICE)
    model = build_detector(cfg).to(device)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    checkpointer = Checkpointer(cfg.OUTPUT_DIR, keep=cfg.SOLVER.KEEP_CHECKPOINTS, model=model,
                                optimizer=optimizer, scheduler=scheduler)
    start_iter = checkpointer.resume(allow_fresh=allow_fresh) if resume else 0
    ddp_model = _ddp(model, device)
    loader = build_train_loader(cfg, start_iter=start_iter)
    trainer = Trainer(cfg, ddp_model, optimizer, scheduler, loader, device=device, checkpointer=checkpointer,
                      start_iter=start_iter,
                      evaluate=lambda: evaluate(cfg, model, device, cfg.TEST.EVAL_PERIOD_DATASETS or None))
    summary = trainer.train()
    summary["skipped_bad_samples"] = bad_sample_log(cfg).count()
    if summary["skipped_bad_samples"]:
        logger.warning("%d bad file(s) were skipped (%d times); see %s/bad_samples.jsonl", summary["skipped_bad_samples"],
                       bad_sample_log(cfg).count_events(), cfg.OUTPUT_DIR)
    results = evaluate(cfg, model, device)
    return {"summary": summary, "results": results}


def evaluate_only(cfg) -> dict:
    """Load ``MODEL.WEIGHTS`` (already done by build_detector) and evaluate on ``DATASETS.TEST``."""
    require_weights(cfg, eval_only=True)
    check_num_classes(cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.DATASETS.TEST)
    device = resolve_device(cfg.MODEL.DEVICE)
    model = build_detector(cfg).to(device)
    return evaluate(cfg, model, device)
