"""Learning-rate schedule: linear warm-up, then multi-step decay (a pure function of the iteration)."""
from __future__ import annotations

import bisect
from typing import Sequence

import torch


def lr_factor(iteration: int, *, warmup_iters: int, warmup_factor: float, steps: Sequence[int], gamma: float) -> float:
    """Multiplier of the base LR at ``iteration`` (0-based)."""
    factor = gamma ** bisect.bisect_right(list(steps), iteration)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum; weight decay on weights, none on norm parameters and biases (detectron2's habit)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.SOLVER.WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)


def build_scheduler(cfg, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    s = cfg.SOLVER
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda it: lr_factor(it, warmup_iters=s.WARMUP_ITERS, warmup_factor=s.WARMUP_FACTOR, steps=s.STEPS, gamma=s.GAMMA),
    )
