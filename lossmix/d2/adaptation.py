"""Adaptive Teacher (Li et al., CVPR 2022) + LossMix pairs on detectron2 models.

The step is the core recipe's (:class:`lossmix.engine.recipes.adaptive_teacher.AdaptiveTeacherRecipe`:
burn-in on labelled source, teacher copied from the student at its end, then pseudo-labels from the
EMA teacher on weak target views, the student on strong views, an image-level domain discriminator
behind gradient reversal on one backbone output), and so are its pieces: the loader
(:func:`lossmix.data.adaptation.build_da_loader`: weak / strong views sharing one geometry, source x
source and source x target mixing during burn-in and after), target x target mixing on
pseudo-labels, the :class:`~lossmix.data.mixer.Mixer`, the EMA (:mod:`lossmix.engine.ema`), the
pseudo-label filter (:mod:`lossmix.engine.pseudo_labels`) and the discriminator
(:mod:`lossmix.modeling.discriminator`). What this module adds is detectron2's side only:

- :class:`D2AdaptiveTeacherRecipe`: the student's losses are a ``GeneralizedRCNN``'s
  (``model(list of dicts)``), the teacher's detections ``inference(..., do_postprocess=False)``
  (boxes in the weak view's pixels), pseudo-labels become ``Instances`` with ``gt_weights`` and
  ``gt_box_weights`` (``DA.PSEUDO_BOX_WEIGHT``, 0 by default: no box regression on pseudo-labels);
- :class:`AdaptiveTeacherModel`: student, teacher and discriminator in one ``nn.Module`` whose training
  forward is one step's losses, so detectron2's ``SimpleTrainer`` / ``AMPTrainer``, optimizer,
  DDP and ``DetectionCheckpointer`` (teacher and discriminator saved with the student) serve unchanged;
- :class:`AdaptiveTeacherTrainer`: ``DefaultTrainer`` with that model, the adaptation loader
  (resumed at the checkpoint's iteration, random state included), the EMA after each optimizer step,
  and evaluation of the teacher and the student.

Keys: ``DA.*`` (:func:`lossmix.d2.add_da_config`, the core's definition; ``DA.DIS_FEATURE`` names a
backbone output such as ``"p4"`` or ``"res4"``), ``DATASETS.TRAIN_UNLABELED``, ``LOSSMIX.*``.
The model's heads must read ``gt_weights`` (``LossMixRPN`` and ``LossMixStandardROIHeads`` /
``LossMixRes5ROIHeads``): pseudo-labels and mixed boxes carry weights.
"""
from __future__ import annotations

import logging
import weakref

import numpy as np
import torch
from torch import nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, create_ddp_model
from detectron2.utils import comm

from ..data.adaptation import active_pairs, build_da_loader
from ..engine.ema import copy_weights, make_teacher
from ..engine.recipes.adaptive_teacher import AdaptiveTeacherRecipe
from ..modeling.discriminator import ImageDomainDiscriminator
from .datasets import build_evaluator
from .mapper import LossMixDatasetMapper

logger = logging.getLogger(__name__)


class D2AdaptiveTeacherRecipe(AdaptiveTeacherRecipe):
    """The core recipe on a detectron2 ``GeneralizedRCNN`` (module docstring); ``to_input`` is the
    mapper's :meth:`~lossmix.d2.mapper.LossMixDatasetMapper.to_input`."""

    def __init__(self, *, to_input, **kwargs):
        super().__init__(**kwargs)
        self.to_input = to_input

    def detector_losses(self, inputs: list[dict]) -> dict[str, torch.Tensor]:
        return self.student_forward(inputs)

    def backbone_features(self, inputs: list[dict]) -> torch.Tensor:
        images = self.student.preprocess_image(inputs)
        return self.student.backbone(images.tensor)[self.dis_feature]

    def teacher_detections(self, weak_inputs: list[dict]) -> list[dict]:
        found = self.teacher.inference(weak_inputs, do_postprocess=False)
        return [{"boxes": i.pred_boxes.tensor, "scores": i.scores, "labels": i.pred_classes + 1} for i in found]


class AdaptiveTeacherModel(nn.Module):
    """Student, EMA teacher and domain discriminator. Training: ``forward(batch)`` is the losses of step
    :attr:`iteration` (set by the trainer); evaluation: the student's inference. The teacher never trains."""

    def __init__(self, recipe: D2AdaptiveTeacherRecipe):
        super().__init__()
        self.student, self.teacher, self.discriminator = recipe.student, recipe.teacher, recipe.discriminator
        self.recipe = [recipe]  # not a submodule: its modules are the three above
        self.iteration = 0

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batch):
        if not self.training:
            return self.student(batch)
        return self.recipe[0].losses(batch, self.iteration)


def build_adaptive_teacher(cfg, student: nn.Module) -> AdaptiveTeacherModel:
    """The recipe and model around ``student`` (a detectron2 ``GeneralizedRCNN``) from ``DA.*`` / ``LOSSMIX.*``."""
    da = cfg.DA
    shapes = student.backbone.output_shape()
    if da.DIS_FEATURE not in shapes:
        raise ValueError(f"DA.DIS_FEATURE = {da.DIS_FEATURE!r} is not an output of {cfg.MODEL.BACKBONE.NAME}; "
                         f"its outputs are {sorted(shapes)}")
    discriminator = ImageDomainDiscriminator(in_channels=shapes[da.DIS_FEATURE].channels,
                                             grl_lambda=da.GRL_LAMBDA).to(student.device)
    mapper = LossMixDatasetMapper(cfg, is_train=True)
    pairs = active_pairs(cfg)
    recipe = D2AdaptiveTeacherRecipe(
        student=student, teacher=make_teacher(student), discriminator=discriminator, device=student.device,
        mixer=mapper.mixer, mix_targets="target_target" in pairs, burn_in=da.BURN_IN_ITERS, ema_decay=da.EMA_DECAY,
        threshold=da.PSEUDO_THRESHOLD, pseudo_box_weight=da.PSEUDO_BOX_WEIGHT, unsup_weight=da.UNSUP_LOSS_WEIGHT,
        dis_weight=da.DIS_LOSS_WEIGHT, dis_feature=da.DIS_FEATURE, weight_by_score=da.WEIGHT_BY_SCORE,
        to_input=mapper.to_input)
    logger.info("adaptive teacher (detectron2): burn-in %d of %d iterations, mixing pairs %s", da.BURN_IN_ITERS,
                cfg.SOLVER.MAX_ITER, list(pairs) or "none")
    return AdaptiveTeacherModel(recipe)


class _SampleLoader:
    """The core loaders' mapper interface (``load(dict, rng) -> numpy sample``) over a detectron2 mapper."""

    def __init__(self, mapper: LossMixDatasetMapper):
        self.mapper = mapper

    def load(self, dataset_dict: dict, rng: np.random.Generator) -> dict:
        return self.mapper.load_sample(dataset_dict, rng)


def build_adaptation_loader(cfg, *, start_iter: int = 0):
    """The core's adaptation loader on detectron2 dataset dicts and structures: batches of
    ``{"source": [model input with "domain"], "target": [{"weak": model input, "strong": numpy sample, "position"}]}``."""
    mapper = LossMixDatasetMapper(cfg, is_train=True)
    source = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    target = get_detection_dataset_dicts(cfg.DATASETS.TRAIN_UNLABELED, filter_empty=False)
    return build_da_loader(cfg, start_iter=start_iter, mapper=_SampleLoader(mapper), source_dicts=source,
                           target_dicts=target, mixer=mapper.mixer, to_input=mapper.to_input)


class AdaptiveTeacherTrainer(DefaultTrainer):
    """``DefaultTrainer`` for :class:`AdaptiveTeacherModel` (module docstring)."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, with the student wrapped before the optimizer is built
        super(DefaultTrainer, self).__init__()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.cfg = cfg
        self.module = build_adaptive_teacher(cfg, self.build_model(cfg))
        optimizer = self.build_optimizer(cfg, self.module)  # student + discriminator (the teacher has no grads)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(self.module, broadcast_buffers=False, find_unused_parameters=True)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(self.module, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter, self.max_iter = 0, cfg.SOLVER.MAX_ITER
        self.register_hooks(self.build_hooks())

    @property
    def recipe(self) -> D2AdaptiveTeacherRecipe:
        return self.module.recipe[0]

    @classmethod
    def build_train_loader(cls, cfg):
        return build_adaptation_loader(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    def resume_or_load(self, resume=True):
        """Resume student, teacher, discriminator, optimizer, schedule and random state from ``OUTPUT_DIR``;
        else load ``MODEL.WEIGHTS`` (a detectron2 detector, e.g. a source-only run) into the student and the teacher."""
        if resume and self.checkpointer.has_checkpoint():
            super().resume_or_load(resume=True)
        else:
            DetectionCheckpointer(self.module.student).resume_or_load(self.cfg.MODEL.WEIGHTS, resume=False)
            copy_weights(self.module.teacher, self.module.student)
            self.start_iter = 0
        self._trainer.data_loader.sampler.start_iter = self.start_iter  # the loader continues its stream

    def run_step(self):
        self._trainer.iter = self.module.iteration = self.iter
        self._trainer.run_step()
        stats = self.recipe.after_step(self.iter)  # the EMA, after the optimizer step
        # the pseudo-label metrics of this step (detectron2's writers smooth per-step scalars over their period)
        stats.update(self.recipe.period_metrics())
        if stats:
            self.storage.put_scalars(**stats)

    def state_dict(self):
        ret = super().state_dict()
        ret["torch_rng"] = torch.get_rng_state()  # the heads' anchor / proposal sampling
        if torch.cuda.is_available():
            ret["cuda_rng"] = torch.cuda.get_rng_state_all()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "torch_rng" in state_dict:
            torch.set_rng_state(state_dict["torch_rng"])
        if "cuda_rng" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda_rng"])

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate the teacher and the student of an :class:`AdaptiveTeacherModel` (``{"teacher": ..., "student": ...}``)."""
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        if not isinstance(model, AdaptiveTeacherModel):
            return super().test(cfg, model, evaluators)
        return {role: super(AdaptiveTeacherTrainer, cls).test(cfg, getattr(model, role), evaluators)
                for role in ("teacher", "student")}


__all__ = ["D2AdaptiveTeacherRecipe", "AdaptiveTeacherModel", "AdaptiveTeacherTrainer", "build_adaptive_teacher",
           "build_adaptation_loader"]
