"""The Adaptive-Teacher recipe (Li et al., CVPR 2022) with LossMix domain mixing.

One iteration (``it``), with ``B`` source and ``B`` target images per process:

- **Burn-in** (``it < burn_in``): the student learns from the labelled source batch only (weak
  views, each possibly mixed source x source or source x target by the loader). No teacher, no
  discriminator.
- At ``it == burn_in`` the teacher is copied from the student.
- **Adaptation** (``it >= burn_in``): the teacher (eval mode, no gradients) detects on the weak
  target views; detections with score >= ``threshold`` become pseudo-labels (weight 1, or the
  teacher's score with ``weight_by_score``) on the strong views, which may be mixed target x target
  (weights x lambda). The student's loss is
  ``sup + unsup_weight * pseudo + dis_weight * (dis_source + dis_target)``: the source forward, the
  strong-view forward (objectness and classification; box regression weighted by
  ``pseudo_box_weight`` and skipped when it is 0) and the image-level domain discriminator on the
  backbone output ``dis_feature`` behind gradient reversal, fed by a forward hook during those
  same forwards. With ``unsup_weight == 0`` the target views go through the backbone alone (only
  the discriminator needs them). After the optimizer step the teacher follows the student by EMA.

What the teacher passes is measured every step and logged pooled over each log period
(:meth:`period_metrics`, :class:`~lossmix.engine.pseudo_labels.PseudoLabelStats`): pseudo-labels per
image, the share of target images with none, their scores and, when the target items carry
``"ground_truth"`` (``DA.PSEUDO_LABEL_METRICS``), their precision and recall at IoU 0.5. A warning
names the iteration when none has passed the threshold for ``DA.NO_PSEUDO_LABEL_WARN_ITERS`` iterations.
With ``target_labels="ground_truth"`` (``DA.TARGET_LABELS``, an upper bound for experiments) the
strong views get the target's own annotations (weight 1) in place of the pseudo-labels, with the
same mixing, weights and box-weight policy; the teacher still runs and is still measured.

Plain Adaptive Teacher is the same code with mixing off (``LOSSMIX.MODE none`` or an empty
``DA.MIX_PAIRS``).

DDP: the student and the discriminator are wrapped separately. Every student parameter gets a
gradient from the source forward alone, in burn-in and after; the discriminator is not run at all
during burn-in. Each rank keeps its own teacher, updated from the synchronised student, so the
teachers agree.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ...data.adaptation import active_pairs, build_da_loader
from ...data.catalog import MetadataCatalog
from ...data.mapper import to_model_input
from ...data.mixer import Mixer
from ...modeling.discriminator import ImageDomainDiscriminator, capture_feature, domain_loss
from ..checkpoint import load_detector, unwrap
from ..ema import copy_weights, ema_update, make_teacher
from ..inference import images_to_device, targets_to_device
from ..pseudo_labels import NoPseudoLabelWatch, PseudoLabelStats, build_pseudo_inputs, filter_pseudo_labels
from . import Recipe, register_recipe

logger = logging.getLogger(__name__)


def backbone_outputs(backbone: nn.Module, device) -> list[str]:
    """Names of the feature maps ``backbone`` returns (probed in eval mode: no BatchNorm statistics move)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            return list(backbone(torch.zeros(1, 3, 64, 64, device=device)).keys())
    finally:
        backbone.train(was_training)


@register_recipe("adaptive_teacher")
class AdaptiveTeacherRecipe(Recipe):
    """Student, EMA teacher and domain discriminator (module docstring); batches from :func:`build_da_loader`.

    Args:
        student / discriminator: trained; teacher: the student's EMA copy (:func:`make_teacher`).
        device: where batches go.
        mixer: target x target mixing of pseudo-labelled views; ``mix_targets`` turns it on.
        burn_in / ema_decay / threshold / pseudo_box_weight / unsup_weight / dis_weight /
        dis_feature / weight_by_score: ``DA.*`` (``dis_feature`` a backbone output name, e.g. "2").
        target_labels: ``pseudo`` | ``ground_truth`` (``DA.TARGET_LABELS``: the items' ``"ground_truth"``
            in place of the pseudo-labels).
        class_names: names of the detector's classes, for the per-class pseudo-label metrics
            (default: their indices, read from the student's box predictor).
        warn_after: ``DA.NO_PSEUDO_LABEL_WARN_ITERS`` (0 = never warn).
    """

    def __init__(self, *, student: nn.Module, teacher: nn.Module, discriminator: nn.Module, device: torch.device,
                 mixer: Mixer, mix_targets: bool = False, burn_in: int, ema_decay: float = 0.9996,
                 threshold: float = 0.8, pseudo_box_weight: float = 0.0, unsup_weight: float = 1.0,
                 dis_weight: float = 0.1, dis_feature: str = "2", weight_by_score: bool = False,
                 target_labels: str = "pseudo", class_names: Optional[Sequence[str]] = None, warn_after: int = 50):
        self.student, self.teacher, self.discriminator = student, teacher, discriminator
        self.student_forward, self.discriminator_forward = student, discriminator  # DDP wrappers once distributed
        self.device, self.mixer, self.mix_targets = device, mixer, mix_targets
        self.burn_in, self.ema_decay, self.threshold = burn_in, ema_decay, threshold
        self.pseudo_box_weight, self.unsup_weight, self.dis_weight = pseudo_box_weight, unsup_weight, dis_weight
        self.dis_feature, self.weight_by_score = str(dis_feature), weight_by_score
        self._trainable = nn.ModuleDict({"student": student, "discriminator": discriminator})
        if target_labels not in ("pseudo", "ground_truth"):
            raise ValueError(f"target_labels must be 'pseudo' or 'ground_truth', got {target_labels!r}")
        self.target_labels = target_labels
        if class_names is None:
            class_names = [str(c) for c in range(student.roi_heads.box_predictor.cls_score.out_features - 1)]
        self.pseudo_stats = PseudoLabelStats(class_names=class_names)
        self.no_label_watch = NoPseudoLabelWatch(patience=warn_after, threshold=threshold)

    @classmethod
    def from_config(cls, cfg, *, device: torch.device) -> "AdaptiveTeacherRecipe":
        student = load_detector(cfg).to(device)
        teacher = make_teacher(student)
        outputs = backbone_outputs(student.backbone, device)
        if str(cfg.DA.DIS_FEATURE) not in outputs:
            raise ValueError(f"DA.DIS_FEATURE = {cfg.DA.DIS_FEATURE!r} is not an output of {cfg.MODEL.BACKBONE.NAME}; "
                             f"its outputs are {outputs}")
        discriminator = ImageDomainDiscriminator.from_config(cfg, in_channels=student.backbone.out_channels).to(device)
        da = cfg.DA
        logger.info("adaptive teacher: burn-in %d of %d iterations, mixing pairs %s", da.BURN_IN_ITERS,
                    cfg.SOLVER.MAX_ITER, list(active_pairs(cfg)) or "none")
        return cls(student=student, teacher=teacher, discriminator=discriminator, device=device,
                   mixer=Mixer.from_config(cfg), mix_targets="target_target" in active_pairs(cfg),
                   burn_in=da.BURN_IN_ITERS, ema_decay=da.EMA_DECAY, threshold=da.PSEUDO_THRESHOLD,
                   pseudo_box_weight=da.PSEUDO_BOX_WEIGHT, unsup_weight=da.UNSUP_LOSS_WEIGHT,
                   dis_weight=da.DIS_LOSS_WEIGHT, dis_feature=str(da.DIS_FEATURE), weight_by_score=da.WEIGHT_BY_SCORE,
                   target_labels=da.TARGET_LABELS, class_names=target_class_names(cfg),
                   warn_after=da.NO_PSEUDO_LABEL_WARN_ITERS)

    # -- what run() asks for ---------------------------------------------------------------------
    @property
    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"model": self.student, "teacher": self.teacher, "discriminator": self.discriminator}

    @property
    def trainable(self) -> nn.Module:
        return self._trainable

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self.student_forward, self.discriminator_forward = wrap(self.student), wrap(self.discriminator)
        self._trainable = nn.ModuleDict({"student": self.student_forward, "discriminator": self.discriminator_forward})

    @staticmethod
    def build_loader(cfg, *, start_iter: int):
        return build_da_loader(cfg, start_iter=start_iter)

    def eval_models(self, iteration: Optional[int]) -> dict[str, Optional[nn.Module]]:
        """Teacher (None until a step after burn-in has updated it) and student."""
        ready = iteration is None or iteration > self.burn_in
        return {"teacher": self.teacher if ready else None, "student": self.student}

    # -- pieces of a step (tests call them directly) ---------------------------------------------
    @contextlib.contextmanager
    def _features(self, enabled: bool):
        if not enabled:
            yield None
            return
        with capture_feature(self.student.backbone, self.dis_feature) as captured:
            yield captured

    def detector_losses(self, inputs: list[dict]) -> dict[str, torch.Tensor]:
        """The student's detection losses on model inputs (unweighted)."""
        return self.student_forward(images_to_device(inputs, self.device), targets_to_device(inputs, self.device))

    def backbone_features(self, inputs: list[dict]) -> torch.Tensor:
        """The student backbone's ``dis_feature`` map of model inputs (normalised and batched as in training)."""
        images, _ = self.student.transform(images_to_device(inputs, self.device))
        return self.student.backbone(images.tensors)[self.dis_feature]

    # numpy sample -> the student's model input (the detectron2 plug-in sets its own)
    to_input = staticmethod(to_model_input)

    def teacher_detections(self, weak_inputs: list[dict]) -> list[dict]:
        """The teacher's detections on weak-view model inputs, as torchvision gives them
        (``boxes`` xyxy in the input's pixels, ``scores``, ``labels`` 1-based)."""
        return self.teacher(images_to_device(weak_inputs, self.device))

    @torch.no_grad()
    def pseudo_label(self, target_items: list[dict], iteration: Optional[int] = None) -> list[dict]:
        """Teacher detections on the weak views -> student inputs on the strong views (maybe mixed).

        The pseudo-labels are recorded in :attr:`pseudo_stats` (against the items' ``"ground_truth"``
        when they carry it) and, with ``iteration``, in the no-pseudo-label watch. With
        ``target_labels == "ground_truth"`` the strong views get :func:`ground_truth_labels` instead.
        """
        self.teacher.eval()
        detections = self.teacher_detections([t["weak"] for t in target_items])
        pseudo = [filter_pseudo_labels(d, self.threshold) for d in detections]
        truth = [t.get("ground_truth") for t in target_items]
        self.pseudo_stats.update(pseudo, truth if all(g is not None for g in truth) else None)
        if iteration is not None:
            self.no_label_watch.update(iteration, sum(len(p["boxes"]) for p in pseudo))
        labels = pseudo
        if self.target_labels == "ground_truth":
            if any(g is None for g in truth):
                raise ValueError("DA.TARGET_LABELS = 'ground_truth' but the target batch carries no ground truth "
                                 "(the loader reads it only for that key or DA.PSEUDO_LABEL_METRICS)")
            labels = [ground_truth_labels(g) for g in truth]
        return build_pseudo_inputs(
            [t["strong"] for t in target_items], labels, positions=[t["position"] for t in target_items],
            mixer=self.mixer, mix=self.mix_targets, weight_by_score=self.weight_by_score,
            box_weight=self.pseudo_box_weight, to_input=self.to_input)

    def unlabelled_inputs(self, target_items: list[dict]) -> list[dict]:
        """Strong views as model inputs without boxes (the discriminator-only path)."""
        views = [t["strong"] for t in target_items]
        empty = [{"boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int64),
                  "scores": np.zeros(0, np.float32)}] * len(views)
        return build_pseudo_inputs(views, empty, positions=[t["position"] for t in target_items], mixer=self.mixer,
                                   mix=False, weight_by_score=False, box_weight=0.0, to_input=self.to_input)

    def discriminator_loss(self, features: torch.Tensor, inputs: list[dict]) -> torch.Tensor:
        """Unweighted domain loss of feature maps; each input's ``"domain"`` is its label."""
        domain = torch.tensor([float(i["domain"]) for i in inputs], device=features.device)
        return domain_loss(self.discriminator_forward(features).float(), domain)

    # -- the step ---------------------------------------------------------------------------------
    def losses(self, batch: dict, iteration: int) -> dict[str, torch.Tensor]:
        if iteration < self.burn_in:
            return self.detector_losses(batch["source"])
        if iteration == self.burn_in:
            copy_weights(self.teacher, self.student)
            logger.info("iteration %d: burn-in done, teacher copied from the student", iteration)
        use_dis = self.dis_weight > 0
        with self._features(use_dis) as source_features:
            supervised = self.detector_losses(batch["source"])
        losses = dict(supervised)  # supervised source losses: weight 1
        if self.unsup_weight == 0 and not use_dis:
            return losses
        targets = batch["target"]
        if self.unsup_weight > 0:
            inputs = self.pseudo_label(targets, iteration)
            with self._features(use_dis) as captured:
                pseudo = self.detector_losses(inputs)
            losses.update({f"{k}_pseudo": self.unsup_weight * v for k, v in pseudo.items()})
            target_features = captured[0] if use_dis else None
        else:  # only the discriminator needs the target images: the backbone alone
            inputs = self.unlabelled_inputs(targets)
            target_features = self.backbone_features(inputs)
        if use_dis:
            losses["loss_dis_source"] = self.dis_weight * self.discriminator_loss(source_features[0], batch["source"])
            losses["loss_dis_target"] = self.dis_weight * self.discriminator_loss(target_features, inputs)
        return losses

    def after_step(self, iteration: int) -> dict[str, float]:
        if iteration >= self.burn_in:
            ema_update(self.teacher, self.student, self.ema_decay)
        return {}

    def period_metrics(self) -> dict[str, float]:
        """The pseudo-label metrics pooled over the steps since the last call (:meth:`PseudoLabelStats.summary`)."""
        return self.pseudo_stats.summary()


def ground_truth_labels(ground_truth: dict) -> dict:
    """A target image's annotations as pseudo-labels (scores 1, so weight 1 with or without ``weight_by_score``)."""
    n = len(ground_truth["classes"])
    return {"boxes": np.asarray(ground_truth["boxes"], np.float32).reshape(-1, 4),
            "classes": np.asarray(ground_truth["classes"], np.int64), "scores": np.ones(n, np.float32)}


def target_class_names(cfg) -> Optional[list[str]]:
    """The class names of the first target set (its ``thing_classes``), or None when it records none."""
    names = cfg.DATASETS.TRAIN_UNLABELED
    classes = MetadataCatalog.get(names[0]).get("thing_classes") if names else None
    return list(classes) if classes and len(classes) == cfg.MODEL.ROI_HEADS.NUM_CLASSES else None
