"""ROI box head whose losses are weighted per instance (LossMix).

torchvision's ``RoIHeads.forward`` calls the module-level ``fastrcnn_loss`` by name, so the
training path is the one place to override: ``forward`` runs the stock sampling
(``select_training_samples``), box head and predictor, then the weighted loss; inference goes to
torchvision unchanged. Each sampled proposal takes its matched instance's weight (``bg_weight``
for background). With all weights 1 the losses equal torchvision's exactly.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads

from .losses import weighted_fastrcnn_loss
from .targets import LossTerm, WeightedLossMixin, against_a_and_b, instance_weights, per_sample_weights, split_by_source


class WeightedRoIHeads(WeightedLossMixin, RoIHeads):
    """``RoIHeads`` (boxes only) with per-instance loss weights.

    Args (beyond torchvision's): ``bg_weight`` — loss weight of background proposals;
    ``formulation`` — ``"instance"`` or ``"interpolate"`` (see :mod:`lossmix.modeling.targets`).
    """

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads, **settings) -> "WeightedRoIHeads":
        """Reuse a built torchvision ``RoIHeads``' modules and settings (shares its parameters)."""
        if heads.has_mask() or heads.has_keypoint():
            raise NotImplementedError("weighted losses cover the box head only (no mask / keypoint heads)")
        return cls.adopt(heads, **settings)

    def _instance_terms(self, targets, matched_idxs, labels) -> list[LossTerm]:
        terms = []
        for target, matched, lab in zip(targets, matched_idxs, labels):
            fg = lab > 0
            cls_w = per_sample_weights(instance_weights(target), matched, fg, self.bg_weight)
            box_w = per_sample_weights(instance_weights(target, "box_weights"), matched, fg, 0.0)
            terms.append(LossTerm(lab, cls_w, box_w))
        return terms

    def _interpolate_terms(self, targets, proposals) -> list[list[LossTerm]]:
        """Two terms per image: the sampled proposals labelled against A's and B's boxes alone."""
        def label(target, props, w, bw):
            def term(idx, coef) -> LossTerm:
                gt = target["boxes"][idx].to(props.dtype)
                (matched,), (lab,) = self.assign_targets_to_proposals([props], [gt], [target["labels"][idx]])
                fg = lab > 0
                valid = (lab >= 0).to(props.dtype)
                cls_w = per_sample_weights(w[idx], matched, fg, self.bg_weight) * coef * valid
                box_w = per_sample_weights(bw[idx], matched, fg, 0.0) * coef
                gt_matched = gt[matched] if gt.numel() else torch.zeros_like(props)
                reg = self.box_coder.encode_single(gt_matched, props)
                return LossTerm(lab.clamp(min=0), cls_w, box_w, reg)
            return term

        per_image = [against_a_and_b(*split_by_source(t), label(t, p, instance_weights(t), instance_weights(t, "box_weights")))
                     for t, p in zip(targets, proposals)]
        return [[terms[k] for terms in per_image] for k in range(2)]

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: Optional[list[dict[str, Tensor]]] = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)

        if self.formulation == "instance":
            groups = [self._instance_terms(targets, matched_idxs, labels)]
        else:
            groups = self._interpolate_terms(targets, proposals)
        with_boxes = any(bool((t.box_weights != 0).any()) for terms in groups for t in terms)
        loss_cls = class_logits.sum() * 0.0
        loss_box = box_regression.sum() * 0.0
        for terms in groups:
            regs = [t.regression_targets if t.regression_targets is not None else r for t, r in zip(terms, regression_targets)]
            cls, box = weighted_fastrcnn_loss(
                class_logits,
                box_regression,
                torch.cat([t.labels for t in terms]),
                torch.cat(regs),
                torch.cat([t.cls_weights for t in terms]),
                torch.cat([t.box_weights for t in terms]) if with_boxes else None,
            )
            loss_cls, loss_box = loss_cls + cls, loss_box + box
        return [], {"loss_classifier": loss_cls, "loss_box_reg": loss_box}


__all__ = ["WeightedRoIHeads"]
