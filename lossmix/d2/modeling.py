"""detectron2 RPN and ROI heads whose losses are weighted per instance (LossMix), as mixins.

The weights ride on detectron2's own structures: the mapper puts ``gt_weights`` (and optionally
``gt_box_weights``, ``gt_from_partner``, ``gt_lam``) on each image's ``Instances``.

- **RPN** (:class:`LossMixRPNMixin`): ``label_and_sample_anchors`` runs detectron2's own (same
  matching, same ``subsample_labels`` draws) while recording the matcher's output, so each sampled
  anchor looks up its matched instance's weight (background anchors get ``LOSSMIX.BG_WEIGHT``);
  ``losses`` applies them with :mod:`lossmix.modeling.losses`, normalised like detectron2
  (``batch_size_per_image * num_images``).
- **ROI heads** (:class:`LossMixROIHeadsMixin`): detectron2's ``label_and_sample_proposals`` already
  copies every ``gt_*`` field of the matched instance onto the sampled proposals, so ``gt_weights``
  arrives there without re-matching; the mixin turns it into per-proposal weights (background:
  ``BG_WEIGHT``) and the box predictor's ``losses`` (:class:`LossMixOutputLayersMixin`) applies them.

With all weights 1 every loss equals detectron2's (same sampling, same normalisers); weights ``c``
(background too) scale every loss by ``c``; a weight-0 instance's class does not matter.

``LOSSMIX.FORMULATION interpolate`` labels each sampled anchor / proposal against A's and B's
boxes separately and sums ``lam * L(x, A) + (1 - lam) * L(x, B)`` (sampling still on the union, as on
the torchvision side); the per-instance weights multiply in as well, so with ``MODE uniform``
(weights 1) this is the paper's exact interpolation.

Combine with your own subclasses in one line -- the mixin first, e.g. for Adaptive Teacher::

    @ROI_HEADS_REGISTRY.register()
    class LossMixStandardROIHeadsPseudoLab(LossMixROIHeadsMixin, StandardROIHeadsPseudoLab): pass

    @PROPOSAL_GENERATOR_REGISTRY.register()
    class LossMixPseudoLabRPN(LossMixRPNMixin, PseudoLabRPN): pass

The ROI mixin needs a box predictor whose ``losses`` is detectron2's ``FastRCNNOutputLayers.losses``
(softmax cross-entropy; any box-regression loss type); it is switched to its weighted subclass.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from detectron2.config import configurable
from detectron2.layers import cat, ciou_loss, diou_loss
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss

from ..modeling.losses import weighted_box_loss, weighted_classification_loss, weighted_objectness_loss
from ..modeling.targets import FORMULATIONS, LossTerm, against_a_and_b, per_sample_weights

try:  # detectron2's event-storage statistics of the classifier (private, present since 2021)
    from detectron2.modeling.roi_heads.fast_rcnn import _log_classification_stats
except ImportError:  # pragma: no cover
    def _log_classification_stats(*_args, **_kwargs):
        pass

__all__ = [
    "LossMixRPNMixin",
    "LossMixRPN",
    "LossMixROIHeadsMixin",
    "LossMixStandardROIHeads",
    "LossMixRes5ROIHeads",
    "LossMixOutputLayersMixin",
    "LossMixFastRCNNOutputLayers",
    "as_lossmix_predictor",
    "weighted_box_regression_loss",
]

_IOU_LOSSES = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}


# ------------------------------------------------------------------------------------------- shared
def weighted_box_regression_loss(loss_type: str, smooth_l1_beta: float, box2box_transform, anchors, pred_deltas,
                                 gt_boxes, weights, normaliser) -> torch.Tensor:
    """detectron2's ``_dense_box_regression_loss`` on already-selected foreground rows, row ``i``
    weighted by ``weights[i]``, divided by ``normaliser``: ``sum(w * loss) / normaliser``.

    anchors (proposal boxes), pred_deltas, gt_boxes: ``[P, 4]``; weights ``[P]``. ``smooth_l1`` goes through
    :func:`lossmix.modeling.losses.weighted_box_loss`; ``giou`` / ``diou`` / ``ciou`` weigh detectron2's
    per-box losses.
    """
    if loss_type == "smooth_l1":
        targets = box2box_transform.get_deltas(anchors, gt_boxes)
        return weighted_box_loss(pred_deltas, targets, weights, normaliser, beta=smooth_l1_beta)
    if loss_type not in _IOU_LOSSES:
        raise ValueError(f"Invalid dense box regression loss type '{loss_type}'")
    per_box = _IOU_LOSSES[loss_type](box2box_transform.apply_deltas(pred_deltas, anchors), gt_boxes, reduction="none")
    return (per_box * weights).sum() / max(normaliser, 1)


def _field(inst: Instances, name: str, n: int, device, dtype=torch.float32) -> torch.Tensor:
    """``inst.<name>`` as ``dtype``; ``gt_box_weights`` falls back to ``gt_weights``, and that to ones."""
    if inst.has(name):
        return inst.get(name).to(device=device, dtype=dtype)
    if name == "gt_box_weights":
        return _field(inst, "gt_weights", n, device, dtype)
    return torch.ones(n, device=device, dtype=dtype)


def _split_by_source(inst: Instances) -> tuple[float, torch.Tensor, torch.Tensor]:
    """``(lam, index of A's instances, index of B's)`` from ``gt_lam`` / ``gt_from_partner``.

    An image without instances has ``lam`` 1: both terms are then background-only and equal, so
    lambda does not matter.
    """
    n = len(inst)
    device = inst.gt_boxes.tensor.device
    lam = float(inst.gt_lam[0]) if inst.has("gt_lam") and n else 1.0
    partner = inst.gt_from_partner.to(device=device, dtype=torch.bool) if inst.has("gt_from_partner") \
        else torch.zeros(n, dtype=torch.bool, device=device)
    return lam, torch.where(~partner)[0], torch.where(partner)[0]


class _LossMixSettings:
    """``bg_weight`` / ``formulation`` of a mixin, from ``cfg.LOSSMIX`` or keyword arguments."""

    lossmix_bg_weight: float = 1.0
    lossmix_formulation: str = "instance"

    def _configure_lossmix(self, bg_weight: float, formulation: str) -> None:
        if formulation not in FORMULATIONS:
            raise ValueError(f"LOSSMIX.FORMULATION must be one of {FORMULATIONS}, got {formulation!r}")
        if not bg_weight >= 0:
            raise ValueError(f"LOSSMIX.BG_WEIGHT must be >= 0, got {bg_weight!r}")
        self.lossmix_bg_weight = float(bg_weight)
        self.lossmix_formulation = formulation

    @staticmethod
    def _lossmix_args(cfg) -> dict:
        if "LOSSMIX" not in cfg:
            raise KeyError("cfg has no LOSSMIX node: call lossmix.d2.add_lossmix_config(cfg) before merging the YAML")
        return {"lossmix_bg_weight": cfg.LOSSMIX.BG_WEIGHT, "lossmix_formulation": cfg.LOSSMIX.FORMULATION}


# ------------------------------------------------------------------------------------------- RPN
class AnchorLabels(list):
    """detectron2's per-image anchor label list, carrying each image's loss terms (``terms[i]``: a
    list of :class:`~lossmix.modeling.targets.LossTerm`; ``regression_targets`` are matched gt boxes,
    ``None`` = detectron2's own matched boxes)."""

    def __init__(self, labels, terms):
        super().__init__(labels)
        self.terms = terms


class _MatchRecorder:
    """Stands in for a ``Matcher`` and records the matched indices of every call."""

    def __init__(self, matcher):
        self.matcher, self.matches = matcher, []

    def __call__(self, match_quality_matrix):
        matches, labels = self.matcher(match_quality_matrix)
        self.matches.append(matches)
        return matches, labels

    def __getattr__(self, name):
        return getattr(self.matcher, name)


@contextlib.contextmanager
def _recording(module, attr: str):
    original = getattr(module, attr)
    recorder = _MatchRecorder(original)
    setattr(module, attr, recorder)
    try:
        yield recorder.matches
    finally:
        setattr(module, attr, original)


class LossMixRPNMixin(_LossMixSettings):
    """Per-instance weights for detectron2's ``RPN`` (or a subclass that keeps its
    ``label_and_sample_anchors`` / ``losses`` contract, e.g. Adaptive Teacher's ``PseudoLabRPN``).

    Extra constructor arguments: ``lossmix_bg_weight``, ``lossmix_formulation`` (from ``cfg.LOSSMIX``).
    """

    @configurable
    def __init__(self, *args, lossmix_bg_weight: float = 1.0, lossmix_formulation: str = "instance", **kwargs):
        super().__init__(*args, **kwargs)
        self._configure_lossmix(lossmix_bg_weight, lossmix_formulation)

    @classmethod
    def from_config(cls, cfg, *args, **kwargs):
        ret = super().from_config(cfg, *args, **kwargs)
        ret.update(cls._lossmix_args(cfg))
        return ret

    @torch.jit.unused
    @torch.no_grad()
    def label_and_sample_anchors(self, anchors, gt_instances, *args, **kwargs):
        with _recording(self, "anchor_matcher") as matches:
            gt_labels, matched_gt_boxes = super().label_and_sample_anchors(anchors, gt_instances, *args, **kwargs)
        if len(matches) != len(gt_instances):
            raise RuntimeError(f"LossMixRPNMixin expected one anchor matching per image ({len(gt_instances)}), "
                               f"saw {len(matches)}: does this RPN's label_and_sample_anchors use self.anchor_matcher?")
        all_anchors = type(anchors[0]).cat(anchors)
        terms = []
        for inst, labels, matched in zip(gt_instances, gt_labels, matches):
            matched = matched.to(labels.device)
            if self.lossmix_formulation == "instance":
                terms.append([self._term(inst, labels, matched, 1.0, None)])
            else:
                terms.append(self._interpolate_terms(inst, labels, all_anchors))
        return AnchorLabels(gt_labels, terms), matched_gt_boxes

    def _term(self, inst, labels, matched, coef, boxes) -> LossTerm:
        n, device = len(inst), labels.device
        fg = labels == 1
        cls_w = per_sample_weights(_field(inst, "gt_weights", n, device), matched, fg, self.lossmix_bg_weight)
        box_w = per_sample_weights(_field(inst, "gt_box_weights", n, device), matched, fg, 0.0)
        return LossTerm(labels, cls_w * coef * (labels >= 0), box_w * coef, boxes)

    def _interpolate_terms(self, inst, labels, anchors) -> list:
        """A's and B's terms: the anchors sampled on the union, labelled against each box set alone."""
        sampled = labels >= 0

        def term(idx, coef) -> LossTerm:
            sub = inst[idx]
            matched, sub_labels = self.anchor_matcher(pairwise_iou(sub.gt_boxes, anchors))
            matched, sub_labels = matched.to(labels.device), sub_labels.to(labels.device)
            if self.anchor_boundary_thresh >= 0:
                sub_labels[~anchors.inside_box(inst.image_size, self.anchor_boundary_thresh)] = -1
            sub_labels = torch.where(sampled, sub_labels, torch.full_like(sub_labels, -1))
            boxes = sub.gt_boxes.tensor[matched] if len(sub) else torch.zeros_like(anchors.tensor)
            return self._term(sub, sub_labels, matched, coef, boxes)

        return against_a_and_b(*_split_by_source(inst), term)

    @torch.jit.unused
    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes, *args, **kwargs):
        if not isinstance(gt_labels, AnchorLabels):  # labels not from our label_and_sample_anchors
            return super().losses(anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                                  *args, **kwargs)
        num_images = len(gt_labels)
        stacked = torch.stack(list(gt_labels))
        storage = get_event_storage()
        storage.put_scalar("rpn/num_pos_anchors", (stacked == 1).sum().item() / num_images)
        storage.put_scalar("rpn/num_neg_anchors", (stacked == 0).sum().item() / num_images)

        normaliser = self.batch_size_per_image * num_images
        logits = cat(pred_objectness_logits, dim=1)  # N x R
        deltas = cat(pred_anchor_deltas, dim=1)  # N x R x B
        all_anchors = type(anchors[0]).cat(anchors).tensor
        all_anchors = all_anchors.unsqueeze(0).expand(num_images, -1, -1)
        loss_cls = loss_loc = None
        for k in range(len(gt_labels.terms[0])):
            terms = [t[k] for t in gt_labels.terms]
            labels = torch.stack([t.labels for t in terms])
            valid, pos = labels >= 0, labels == 1
            cls_w = torch.stack([t.cls_weights for t in terms])
            obj = weighted_objectness_loss(logits[valid], labels[valid].to(logits.dtype), cls_w[valid], normaliser)
            targets = torch.stack([t.regression_targets if t.regression_targets is not None else g
                                   for t, g in zip(terms, gt_boxes)])
            box_w = torch.stack([t.box_weights for t in terms])
            loc = weighted_box_regression_loss(self.box_reg_loss_type, self.smooth_l1_beta, self.box2box_transform,
                                               all_anchors[pos], deltas[pos], targets[pos], box_w[pos], normaliser)
            loss_cls = obj if loss_cls is None else loss_cls + obj
            loss_loc = loc if loss_loc is None else loss_loc + loc
        losses = {"loss_rpn_cls": loss_cls, "loss_rpn_loc": loss_loc}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}


@PROPOSAL_GENERATOR_REGISTRY.register()
class LossMixRPN(LossMixRPNMixin, RPN):
    """detectron2's ``RPN`` with LossMix weights (``MODEL.PROPOSAL_GENERATOR.NAME: "LossMixRPN"``)."""


# ------------------------------------------------------------------------------------------- box predictor
class LossMixOutputLayersMixin:
    """``FastRCNNOutputLayers.losses`` with per-proposal weights.

    Reads the fields :class:`LossMixROIHeadsMixin` puts on the sampled proposals, each ``[R, T]``
    (``T`` loss terms: 1, or 2 for the interpolate formulation): ``lossmix_classes``,
    ``lossmix_boxes`` (``[R, T, 4]``), ``lossmix_cls_weights``, ``lossmix_box_weights``. Proposals
    without them get detectron2's unweighted losses.
    """

    def losses(self, predictions, proposals):
        if not proposals or not all(p.has("lossmix_cls_weights") for p in proposals):
            return super().losses(predictions, proposals)
        if self.use_sigmoid_ce or getattr(self, "use_fed_loss", False):
            raise NotImplementedError("LossMix weights detectron2's softmax cross-entropy only "
                                      "(MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE / USE_FED_LOSS must be off)")
        scores, proposal_deltas = predictions
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        _log_classification_stats(scores, gt_classes)
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        assert not proposal_boxes.requires_grad, "Proposals should not require gradients!"
        classes = cat([p.lossmix_classes for p in proposals], dim=0)
        boxes = cat([p.lossmix_boxes for p in proposals], dim=0)
        cls_w = cat([p.lossmix_cls_weights for p in proposals], dim=0)
        box_w = cat([p.lossmix_box_weights for p in proposals], dim=0)
        num = gt_classes.numel()  # detectron2's divisor for both losses
        box_dim = proposal_boxes.shape[1]
        loss_cls = loss_box = None
        for k in range(classes.shape[1]):
            c = classes[:, k]
            cls = weighted_classification_loss(scores, c.clamp(min=0), cls_w[:, k] * (c >= 0))
            fg = torch.where((c >= 0) & (c < self.num_classes))[0]
            if proposal_deltas.shape[1] == box_dim:  # class-agnostic regression
                fg_deltas = proposal_deltas[fg]
            else:
                fg_deltas = proposal_deltas.view(-1, self.num_classes, box_dim)[fg, c[fg]]
            box = weighted_box_regression_loss(self.box_reg_loss_type, self.smooth_l1_beta, self.box2box_transform,
                                               proposal_boxes[fg], fg_deltas, boxes[fg, k], box_w[fg, k], num)
            loss_cls = cls if loss_cls is None else loss_cls + cls
            loss_box = box if loss_box is None else loss_box + box
        losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}


class LossMixFastRCNNOutputLayers(LossMixOutputLayersMixin, FastRCNNOutputLayers):
    """detectron2's ``FastRCNNOutputLayers`` with LossMix weights."""


_WEIGHTED_PREDICTORS = {FastRCNNOutputLayers: LossMixFastRCNNOutputLayers}


def as_lossmix_predictor(predictor):
    """Switch a built box predictor to its weighted class, in place (parameters untouched); returns it.

    Works for ``FastRCNNOutputLayers`` and subclasses that keep its ``losses``; a predictor with its
    own ``losses`` (e.g. a focal loss) cannot be weighted generically and raises ``TypeError``.
    """
    if isinstance(predictor, LossMixOutputLayersMixin):
        return predictor
    cls = type(predictor)
    if not isinstance(predictor, FastRCNNOutputLayers):
        raise TypeError(f"LossMix weighs a FastRCNNOutputLayers box predictor; this ROI head has a {cls.__name__}")
    if cls.losses is not FastRCNNOutputLayers.losses:
        raise TypeError(
            f"{cls.__name__} has its own losses(); LossMix weights detectron2's FastRCNNOutputLayers.losses. "
            "Weigh your loss per proposal with the fields LossMixROIHeadsMixin puts on the proposals "
            "(lossmix_cls_weights, lossmix_box_weights; see LossMixOutputLayersMixin), or use "
            "FastRCNNOutputLayers (e.g. Adaptive Teacher's ROI_HEADS.LOSS CrossEntropy)."
        )
    if cls not in _WEIGHTED_PREDICTORS:
        _WEIGHTED_PREDICTORS[cls] = type(f"LossMix{cls.__name__}", (LossMixOutputLayersMixin, cls),
                                         {"__module__": cls.__module__, "__doc__": cls.__doc__})
    predictor.__class__ = _WEIGHTED_PREDICTORS[cls]
    return predictor


# ------------------------------------------------------------------------------------------- ROI heads
class LossMixROIHeadsMixin(_LossMixSettings):
    """Per-instance weights for detectron2's ROI heads (``StandardROIHeads``, ``Res5ROIHeads`` or a
    subclass such as Adaptive Teacher's ``StandardROIHeadsPseudoLab``): box classification and
    regression losses; mask / keypoint heads are left unweighted.

    Extra constructor arguments: ``lossmix_bg_weight``, ``lossmix_formulation`` (from ``cfg.LOSSMIX``).
    """

    @configurable
    def __init__(self, *args, lossmix_bg_weight: float = 1.0, lossmix_formulation: str = "instance", **kwargs):
        super().__init__(*args, **kwargs)
        self._configure_lossmix(lossmix_bg_weight, lossmix_formulation)
        self.box_predictor = as_lossmix_predictor(self.box_predictor)

    @classmethod
    def from_config(cls, cfg, *args, **kwargs):
        ret = super().from_config(cfg, *args, **kwargs)
        ret.update(cls._lossmix_args(cfg))
        return ret

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals, targets, *args, **kwargs):
        sampled = super().label_and_sample_proposals(proposals, targets, *args, **kwargs)
        for props, target in zip(sampled, targets):
            if self.lossmix_formulation == "instance":
                terms = [self._instance_term(props)]
            else:
                terms = self._interpolate_terms(props, target)
            props.lossmix_classes = torch.stack([t[0] for t in terms], dim=1)
            props.lossmix_boxes = torch.stack([t[1] for t in terms], dim=1)
            props.lossmix_cls_weights = torch.stack([t[2] for t in terms], dim=1)
            props.lossmix_box_weights = torch.stack([t[3] for t in terms], dim=1)
        return sampled

    def _weights(self, classes, w, bw, coef=1.0):
        fg = (classes >= 0) & (classes < self.num_classes)
        bg = torch.full_like(w, self.lossmix_bg_weight)
        cls_w = torch.where(fg, w, bg) * (classes >= 0) * coef
        return cls_w, torch.where(fg, bw, torch.zeros_like(bw)) * coef

    def _instance_term(self, props: Instances):
        """The stock labels; weights propagated by detectron2 as ``gt_weights`` (background: BG_WEIGHT)."""
        n, device = len(props), props.proposal_boxes.tensor.device
        classes = props.gt_classes
        boxes = (props.gt_boxes if props.has("gt_boxes") else props.proposal_boxes).tensor
        # an image without instances has no gt_* fields but gt_classes: all background, weights unused
        cls_w, box_w = self._weights(classes, _field(props, "gt_weights", n, device),
                                     _field(props, "gt_box_weights", n, device))
        return classes, boxes, cls_w, box_w

    def _interpolate_terms(self, props: Instances, target: Instances):
        """A's and B's terms: the sampled proposals labelled against each box set alone (detectron2's rules)."""
        n, device = len(props), props.proposal_boxes.tensor.device

        def term(idx, coef):
            sub = target[idx]
            matched, labels = self.proposal_matcher(pairwise_iou(sub.gt_boxes, props.proposal_boxes))
            if len(sub):
                classes = sub.gt_classes[matched].clone()
                classes[labels == 0] = self.num_classes
                classes[labels == -1] = -1
                boxes = sub.gt_boxes.tensor[matched]
                w = _field(sub, "gt_weights", len(sub), device)[matched]
                bw = _field(sub, "gt_box_weights", len(sub), device)[matched]
            else:
                classes = torch.full((n,), self.num_classes, dtype=torch.int64, device=device)
                boxes = props.proposal_boxes.tensor
                w = bw = torch.ones(n, device=device)
            return classes, boxes, *self._weights(classes, w, bw, coef)

        return against_a_and_b(*_split_by_source(target), term)


@ROI_HEADS_REGISTRY.register()
class LossMixStandardROIHeads(LossMixROIHeadsMixin, StandardROIHeads):
    """detectron2's ``StandardROIHeads`` with LossMix weights (``MODEL.ROI_HEADS.NAME: "LossMixStandardROIHeads"``)."""


@ROI_HEADS_REGISTRY.register()
class LossMixRes5ROIHeads(LossMixROIHeadsMixin, Res5ROIHeads):
    """detectron2's ``Res5ROIHeads`` (C4 models) with LossMix weights (``MODEL.ROI_HEADS.NAME: "LossMixRes5ROIHeads"``)."""
