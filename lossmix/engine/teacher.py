"""Adaptive-Teacher domain adaptation (Li et al., CVPR 2022) with LossMix domain mixing.

One iteration (``it``), with ``B`` source and ``B`` target images per process:

- **Burn-in** (``it < DA.BURN_IN_ITERS``): the student learns from the labelled source batch only
  (weak views, each possibly mixed source x source or source x target by the loader). No teacher,
  no discriminator.
- At ``it == DA.BURN_IN_ITERS`` the teacher is copied from the student.
- **Adaptation** (``it >= DA.BURN_IN_ITERS``): the teacher (eval mode, no gradients) detects on the
  weak target views; detections with score >= ``DA.PSEUDO_THRESHOLD`` become pseudo-labels
  (weight 1, or the teacher's score with ``DA.WEIGHT_BY_SCORE``) on the strong views, which may
  be mixed target x target (weights x lambda). The student's loss is
  ``sup + UNSUP_LOSS_WEIGHT * pseudo + DIS_LOSS_WEIGHT * (dis_source + dis_target)``: the
  source forward, the strong-view forward (objectness and classification; box regression
  weighted by ``DA.PSEUDO_BOX_WEIGHT`` and skipped when it is 0) and the image-level domain
  discriminator on ``DA.DIS_FEATURE`` behind gradient reversal, fed by a forward hook during
  those same two forwards. After the optimizer step the teacher follows the student by EMA.

Loss weights are applied once, in :meth:`TeacherStudentTrainer.compute_losses`, where each family
is produced. Plain Adaptive Teacher is the same code with mixing off (``LOSSMIX.MODE none`` or an
empty ``DA.MIX_PAIRS``).

DDP: the student and the discriminator are wrapped separately (``find_unused_parameters=False``).
Every student parameter gets a gradient from the source forward alone, in burn-in and after;
the discriminator is not run at all during burn-in, so its DDP wrapper never waits for gradients
then. Each rank keeps its own teacher, updated from the synchronised student, so the teachers agree.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..data.adaptation import TARGET_PAIR_STREAM, active_pairs, build_da_loader, pair_rng
from ..data.catalog import check_num_classes
from ..data.loader import bad_sample_log
from ..data.mapper import LossMixDatasetMapper, to_model_input
from ..modeling.build import build_detector, require_weights
from ..modeling.discriminator import ImageDomainDiscriminator, capture_feature, domain_loss
from ..utils import comm
from .checkpoint import Checkpointer, unwrap
from .defaults import _ddp, write_eval
from .inference import evaluate_dataset, images_to_device
from .schedule import build_optimizer, build_scheduler
from .trainer import Trainer, resolve_device, targets_to_device

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# teacher maintenance
# --------------------------------------------------------------------------------------------
def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of the (unwrapped) student: eval mode, ``requires_grad`` False everywhere."""
    teacher = copy.deepcopy(unwrap(student))
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def _paired(teacher: nn.Module, student: nn.Module):
    """(teacher tensor, student tensor) for every parameter and buffer, matched by name."""
    teacher, student = unwrap(teacher), unwrap(student)
    for kind, t_named, s_named in (("parameter", teacher.named_parameters(), student.named_parameters()),
                                   ("buffer", teacher.named_buffers(), student.named_buffers())):
        t_named, s_named = dict(t_named), dict(s_named)
        if t_named.keys() != s_named.keys():
            diff = sorted(set(t_named) ^ set(s_named))[:5]
            raise KeyError(f"teacher and student {kind}s differ by name: {diff}")
        for name, t in t_named.items():
            yield t, s_named[name].detach()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher = decay * teacher + (1 - decay) * student`` for every parameter and floating buffer
    (BatchNorm statistics included), matched by name; integer buffers (``num_batches_tracked``) are copied."""
    for t, s in _paired(teacher, student):
        if t.is_floating_point():
            t.mul_(decay).add_(s.to(t.dtype), alpha=1.0 - decay)
        else:
            t.copy_(s)


@torch.no_grad()
def copy_weights(teacher: nn.Module, student: nn.Module) -> None:
    """Every parameter and buffer of the student into the teacher, matched by name."""
    for t, s in _paired(teacher, student):
        t.copy_(s)


# --------------------------------------------------------------------------------------------
# pseudo-labels
# --------------------------------------------------------------------------------------------
def filter_pseudo_labels(detections: dict, threshold: float) -> dict:
    """Teacher detections -> pseudo-labels (numpy, in the detections' order).

    Args:
        detections: torchvision's output for one image: ``boxes`` [K,4] xyxy, ``scores`` [K],
            ``labels`` [K] (1-based; 0 is background).
        threshold: keep ``score >= threshold``.

    Returns:
        ``{"boxes": float32 [M,4], "classes": int64 [M] (0-based), "scores": float32 [M]}``.
    """
    keep = detections["scores"] >= threshold
    return {
        "boxes": detections["boxes"][keep].detach().float().cpu().numpy().reshape(-1, 4),
        "classes": (detections["labels"][keep] - 1).detach().cpu().numpy().astype(np.int64),
        "scores": detections["scores"][keep].detach().float().cpu().numpy(),
    }


def build_pseudo_inputs(strong_views: Sequence[dict], pseudo_labels: Sequence[dict], *,
                        mapper: LossMixDatasetMapper, mix: bool, weight_by_score: bool, box_weight: float,
                        rng_for_slot: Callable[[int], np.random.Generator]) -> list[dict]:
    """Strong views + their pseudo-labels -> the student's model inputs.

    Each strong view gets its image's pseudo-labels with incoming weight 1, or the teacher's score
    when ``weight_by_score``. With ``mix`` (target x target), slot ``j`` is mixed with slot
    ``j + 1`` by ``mapper.mix`` and ``rng_for_slot(j)``: in ``lossmix`` mode the weights become
    incoming x lambda (the partner's incoming x (1 - lambda)). ``box_weights`` = weights x
    ``box_weight`` (all zeros at 0: the heads then skip box regression). Every input has
    ``"domain"`` 1.0 (target).
    """
    samples = []
    for view, pseudo in zip(strong_views, pseudo_labels):
        n = len(pseudo["boxes"])
        weights = pseudo["scores"].astype(np.float32) if weight_by_score else np.ones(n, np.float32)
        samples.append({"image": view["image"], "boxes": pseudo["boxes"], "classes": pseudo["classes"],
                        "weights": weights})
    inputs = []
    for j, sample in enumerate(samples):
        partner = samples[(j + 1) % len(samples)] if mix and len(samples) > 1 else None
        mixed = mapper.mix(sample, partner, rng_for_slot(j))
        mixed["box_weights"] = mixed["weights"] * np.float32(box_weight)
        inp = to_model_input(mixed)
        inp["domain"] = 1.0
        inputs.append(inp)
    return inputs


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
class TeacherStudentTrainer(Trainer):
    """:class:`Trainer` whose step is the teacher-student one (module docstring).

    ``self.model`` is ``ModuleDict(student, discriminator)`` so that ``train()`` mode and gradient
    clipping cover both; the teacher stays outside it (always eval, never optimised).
    Batches come from :func:`lossmix.data.adaptation.build_da_loader`.
    """

    def __init__(self, cfg, student: nn.Module, teacher: nn.Module, discriminator: nn.Module, optimizer, scheduler,
                 data_loader, *, device, checkpointer: Checkpointer, start_iter: int = 0,
                 evaluate: Optional[Callable[[], dict]] = None):
        super().__init__(cfg, nn.ModuleDict({"student": student, "discriminator": discriminator}), optimizer,
                         scheduler, data_loader, device=device, checkpointer=checkpointer, start_iter=start_iter,
                         evaluate=evaluate)
        self.student, self.teacher, self.discriminator = student, teacher, discriminator
        da = cfg.DA
        self.burn_in = da.BURN_IN_ITERS
        self.ema_decay = da.EMA_DECAY
        self.threshold = da.PSEUDO_THRESHOLD
        self.pseudo_box_weight = da.PSEUDO_BOX_WEIGHT
        self.unsup_weight = da.UNSUP_LOSS_WEIGHT
        self.dis_weight = da.DIS_LOSS_WEIGHT
        self.dis_feature = str(da.DIS_FEATURE)  # torchvision names FPN levels "0", "1", ...
        self.weight_by_score = da.WEIGHT_BY_SCORE
        self.mix_targets = "target_target" in active_pairs(cfg)
        self.mapper = LossMixDatasetMapper.from_config(cfg, is_train=True)  # mixing only: no file is read here
        self.seed = cfg.SEED
        self.step_stats: dict[str, float] = {}

    @property
    def adapting(self) -> bool:
        return self.iter >= self.burn_in

    # -- pieces of a step (tests call them directly) --------------------------------------------
    @contextlib.contextmanager
    def _features(self, enabled: bool):
        if not enabled:
            yield None
            return
        with capture_feature(unwrap(self.student).backbone, self.dis_feature) as captured:
            yield captured

    def detector_losses(self, inputs: list[dict]) -> dict[str, torch.Tensor]:
        """The student's detection losses on model inputs (unweighted)."""
        images = images_to_device(inputs, self.device)
        targets = targets_to_device(inputs, self.device)
        with torch.autocast("cuda", enabled=self.use_amp):
            return self.student(images, targets)

    @torch.no_grad()
    def pseudo_label(self, target_items: list[dict]) -> list[dict]:
        """Teacher detections on the weak views -> student inputs on the strong views (maybe mixed)."""
        self.teacher.eval()
        with torch.autocast("cuda", enabled=self.use_amp):
            detections = self.teacher(images_to_device([t["weak"] for t in target_items], self.device))
        pseudo = [filter_pseudo_labels(d, self.threshold) for d in detections]
        self.step_stats["pseudo_labels_per_image"] = float(np.mean([len(p["boxes"]) for p in pseudo]))
        rank = comm.get_rank()
        return build_pseudo_inputs(
            [t["strong"] for t in target_items], pseudo, mapper=self.mapper, mix=self.mix_targets,
            weight_by_score=self.weight_by_score, box_weight=self.pseudo_box_weight,
            rng_for_slot=lambda j: pair_rng(self.seed, self.iter, rank, j, TARGET_PAIR_STREAM),
        )

    def unlabelled_inputs(self, target_items: list[dict]) -> list[dict]:
        """Strong views without pseudo-labels (only the discriminator needs the target forward)."""
        views = [t["strong"] for t in target_items]
        empty = [{"boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int64),
                  "scores": np.zeros(0, np.float32)}] * len(views)
        return build_pseudo_inputs(views, empty, mapper=self.mapper, mix=False, weight_by_score=False, box_weight=0.0,
                                   rng_for_slot=lambda j: None)

    def discriminator_loss(self, features: torch.Tensor, inputs: list[dict]) -> torch.Tensor:
        """Unweighted domain loss of captured features; each input's ``"domain"`` is its label."""
        domain = torch.tensor([float(i["domain"]) for i in inputs], device=features.device)
        with torch.autocast("cuda", enabled=self.use_amp):  # the features are half precision under AMP
            logits = self.discriminator(features)
        return domain_loss(logits.float(), domain)

    # -- the step ----------------------------------------------------------------------------------
    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        self.step_stats = {}
        if not self.adapting:
            return self.detector_losses(batch["source"])
        if self.iter == self.burn_in:
            copy_weights(self.teacher, self.student)
            logger.info("iteration %d: burn-in done, teacher copied from the student", self.iter)
        use_dis = self.dis_weight > 0
        with self._features(use_dis) as source_features:
            supervised = self.detector_losses(batch["source"])
        losses = dict(supervised)  # supervised source losses: weight 1
        if self.unsup_weight == 0 and not use_dis:
            return losses
        targets = batch["target"]
        inputs = self.pseudo_label(targets) if self.unsup_weight > 0 else self.unlabelled_inputs(targets)
        with self._features(use_dis) as target_features:
            pseudo = self.detector_losses(inputs)
        if self.unsup_weight > 0:
            losses.update({f"{k}_pseudo": self.unsup_weight * v for k, v in pseudo.items()})
        if use_dis:
            losses["loss_dis_source"] = self.dis_weight * self.discriminator_loss(source_features[0], batch["source"])
            losses["loss_dis_target"] = self.dis_weight * self.discriminator_loss(target_features[0], inputs)
        return losses

    def run_step(self, batch: dict) -> dict[str, float]:
        values = super().run_step(batch)
        if self.adapting:
            ema_update(self.teacher, self.student, self.ema_decay)
        values.update(self.step_stats)
        return values


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------
def _backbone_outputs(backbone: nn.Module, device) -> list[str]:
    was_training = backbone.training
    backbone.eval()  # no BatchNorm statistics updated by this probe
    try:
        with torch.no_grad():
            return list(backbone(torch.zeros(1, 3, 64, 64, device=device)).keys())
    finally:
        backbone.train(was_training)


def evaluate_da(cfg, student: nn.Module, teacher: Optional[nn.Module], device, dataset_names=None) -> dict:
    """AP of teacher and student on ``DATASETS.TEST``: ``{name: {"teacher": result or None, "student": result}}``,
    also written to ``OUTPUT_DIR/eval/<name>.json``. ``teacher=None`` (burn-in never ended) reports null."""
    results = {}
    for name in dataset_names or cfg.DATASETS.TEST:
        pair = {}
        for role, model in (("teacher", teacher), ("student", unwrap(student))):
            pair[role] = None if model is None else evaluate_dataset(cfg, model, name, device, role=role)
        write_eval(cfg, name, pair)
        if comm.is_main_process():
            results[name] = pair
    return results


def train_da(cfg, resume: bool = False, allow_fresh: bool = False) -> dict:
    """Teacher-student adaptation per ``cfg`` (resuming from ``OUTPUT_DIR/last_checkpoint`` if asked).

    Returns ``{"summary": {...}, "results": {test set: {"teacher": ..., "student": ...}}}``.
    Checkpoints hold ``model`` (the student), ``teacher``, ``discriminator``, ``optimizer`` and
    ``scheduler``; so ``--eval-only MODEL.WEIGHTS <checkpoint>`` evaluates the student.
    """
    require_weights(cfg)
    check_num_classes(cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                      [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TRAIN_UNLABELED, *cfg.DATASETS.TEST])
    if cfg.OUTPUT_DIR:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    torch.manual_seed(cfg.SEED + comm.get_rank())
    device = resolve_device(cfg.MODEL.DEVICE)
    student = build_detector(cfg).to(device)
    teacher = make_teacher(student)
    outputs = _backbone_outputs(student.backbone, device)
    if str(cfg.DA.DIS_FEATURE) not in outputs:
        raise ValueError(f"DA.DIS_FEATURE = {cfg.DA.DIS_FEATURE!r} is not an output of {cfg.MODEL.BACKBONE.NAME}; "
                         f"its outputs are {outputs}")
    discriminator = ImageDomainDiscriminator.from_config(cfg, in_channels=student.backbone.out_channels).to(device)
    optimizer = build_optimizer(cfg, nn.ModuleDict({"student": student, "discriminator": discriminator}))
    scheduler = build_scheduler(cfg, optimizer)
    checkpointer = Checkpointer(cfg.OUTPUT_DIR, keep=cfg.SOLVER.KEEP_CHECKPOINTS, model=student, teacher=teacher,
                                discriminator=discriminator, optimizer=optimizer, scheduler=scheduler)
    start_iter = checkpointer.resume(allow_fresh=allow_fresh) if resume else 0
    logger.info("domain adaptation: burn-in %d of %d iterations, mixing pairs %s", cfg.DA.BURN_IN_ITERS,
                cfg.SOLVER.MAX_ITER, list(active_pairs(cfg)) or "none")
    ddp_student, ddp_discriminator = _ddp(student, device), _ddp(discriminator, device)
    loader = build_da_loader(cfg, start_iter=start_iter)

    def teacher_if_ready(iteration: int):
        return teacher if iteration > cfg.DA.BURN_IN_ITERS else None

    trainer = TeacherStudentTrainer(
        cfg, ddp_student, teacher, ddp_discriminator, optimizer, scheduler, loader, device=device,
        checkpointer=checkpointer, start_iter=start_iter,
        evaluate=lambda: evaluate_da(cfg, student, teacher_if_ready(trainer.iter + 1), device,
                                     cfg.TEST.EVAL_PERIOD_DATASETS or None),
    )
    summary = trainer.train()
    summary["skipped_bad_samples"] = bad_sample_log(cfg).count()
    results = evaluate_da(cfg, student, teacher_if_ready(cfg.SOLVER.MAX_ITER), device)
    return {"summary": summary, "results": results}


__all__ = ["TeacherStudentTrainer", "train_da", "evaluate_da", "ema_update", "copy_weights", "make_teacher",
           "filter_pseudo_labels", "build_pseudo_inputs"]
