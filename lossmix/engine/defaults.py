"""``setup`` / ``train`` / ``evaluate``: what ``tools/train_net.py`` runs, reusable from Python."""
from __future__ import annotations

import json
import logging
import os

import torch

from ..config.setup import build_config
from ..data.loader import bad_sample_log, build_test_loader, build_train_loader
from ..modeling.build import build_detector
from ..utils import comm
from .checkpoint import Checkpointer
from .inference import build_evaluator, inference_on_dataset
from .schedule import build_optimizer, build_scheduler
from .trainer import Trainer, resolve_device

logger = logging.getLogger("lossmix")


def setup(config_file: str = "", opts=None):
    """Config from file + overrides, the output folder (with the merged config.yaml) and logging."""
    from ..data import builtin  # noqa: F401  (registers the standard dataset names)

    cfg = build_config(config_file, opts)
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(cfg.dump())
    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s r{comm.get_rank()}] %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
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
        result = inference_on_dataset(model, build_test_loader(cfg, name), build_evaluator(cfg, name), device)
        write_eval(cfg, name, result)
        if comm.is_main_process():
            results[name] = result
    return results


def train(cfg, *, resume: bool = False) -> dict:
    """Supervised training per ``cfg`` (resuming from ``OUTPUT_DIR/last_checkpoint`` if asked); returns results."""
    if cfg.OUTPUT_DIR:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    torch.manual_seed(cfg.SEED + comm.get_rank())
    device = resolve_device(cfg.MODEL.DEVICE)
    model = build_detector(cfg).to(device)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    checkpointer = Checkpointer(cfg.OUTPUT_DIR, keep=cfg.SOLVER.KEEP_CHECKPOINTS, model=model,
                                optimizer=optimizer, scheduler=scheduler)
    start_iter = 0
    if resume and checkpointer.last_checkpoint():
        path = checkpointer.last_checkpoint()
        start_iter = checkpointer.load(path)["iteration"]
        logger.info("resumed from %s at iteration %d", path, start_iter)
    ddp_model = _ddp(model, device)
    loader = build_train_loader(cfg, start_iter=start_iter)
    trainer = Trainer(cfg, ddp_model, optimizer, scheduler, loader, device=device, checkpointer=checkpointer,
                      start_iter=start_iter,
                      evaluate=lambda: evaluate(cfg, model, device, cfg.TEST.EVAL_PERIOD_DATASETS or None))
    summary = trainer.train()
    summary["skipped_bad_samples"] = bad_sample_log(cfg).count()
    if summary["skipped_bad_samples"]:
        logger.warning("%d bad samples were skipped; see %s/bad_samples.jsonl", summary["skipped_bad_samples"], cfg.OUTPUT_DIR)
    results = evaluate(cfg, model, device)
    return {"summary": summary, "results": results}


def evaluate_only(cfg) -> dict:
    """Load ``MODEL.WEIGHTS`` (already done by build_detector) and evaluate on ``DATASETS.TEST``."""
    device = resolve_device(cfg.MODEL.DEVICE)
    model = build_detector(cfg).to(device)
    return evaluate(cfg, model, device)
