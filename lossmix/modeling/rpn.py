"""Region proposal network whose losses are weighted per instance (LossMix).

torchvision 0.29's ``RegionProposalNetwork.forward`` hands the first output of
``assign_targets_to_anchors`` to ``compute_loss`` untouched, as its third positional argument
(``setup.py`` pins that minor version; ``tests/test_weighted_heads.py`` checks this call flow). We override just those two methods:
``assign_targets_to_anchors`` returns, instead of one label tensor per image, an
:class:`AnchorAssignment` that also carries each anchor's weight (its matched instance's weight,
``bg_weight`` for background), and ``compute_loss`` applies it. With all weights 1 the losses equal
torchvision's exactly (same sampler calls, same normalisers).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection.rpn import RegionProposalNetwork

from .losses import weighted_box_loss, weighted_objectness_loss
from .targets import LossTerm, WeightedLossMixin, against_a_and_b, instance_weights, per_sample_weights, split_by_source


@dataclass
class AnchorAssignment:
    """One image's anchors: ``labels`` (1 fg / 0 bg / -1 ignored) drive the sampler; ``terms`` the losses."""

    labels: Tensor
    terms: list[LossTerm]


class WeightedRPN(WeightedLossMixin, RegionProposalNetwork):
    """``RegionProposalNetwork`` with per-instance loss weights; see module docstring.

    Args (beyond torchvision's): ``bg_weight`` — loss weight of background anchors;
    ``formulation`` — ``"instance"`` or ``"interpolate"`` (see :mod:`lossmix.modeling.targets`).
    """

    @classmethod
    def from_rpn(cls, rpn: RegionProposalNetwork, **settings) -> "WeightedRPN":
        """Reuse a built torchvision RPN's modules and settings (shares its parameters)."""
        return cls.adopt(rpn, **settings)

    def label_anchors(self, gt_boxes: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
        """torchvision's anchor labelling, keeping the matched indices.

        Returns ``matched_idxs`` [A] (index into gt_boxes, or a negative Matcher code) and float
        ``labels`` [A]: 1 foreground, 0 background, -1 between thresholds.
        """
        if gt_boxes.numel() == 0:
            zeros = torch.zeros(anchors.shape[0], dtype=torch.float32, device=anchors.device)
            return torch.full_like(zeros, -1, dtype=torch.int64), zeros
        matched_idxs = self.proposal_matcher(self.box_similarity(gt_boxes, anchors))
        labels = (matched_idxs >= 0).to(torch.float32)
        labels[matched_idxs == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
        return matched_idxs, labels

    def _term(self, gt_boxes, inst_w, box_w, anchors, coef, encode):
        matched, labels = self.label_anchors(gt_boxes, anchors)
        fg = labels > 0
        cls_w = per_sample_weights(inst_w, matched, fg, self.bg_weight) * coef
        box_w = per_sample_weights(box_w, matched, fg, 0.0) * coef
        reg = None
        if encode:
            matched_boxes = gt_boxes[matched.clamp(min=0)] if gt_boxes.numel() else torch.zeros_like(anchors)
            reg = self.box_coder.encode_single(matched_boxes, anchors)
        return matched, labels, LossTerm(labels, cls_w, box_w, reg)

    def assign_targets_to_anchors(
        self, anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[AnchorAssignment], list[Tensor]]:
        assignments, matched_gt_boxes = [], []
        for anchors_i, target in zip(anchors, targets):
            gt = target["boxes"]
            w, bw = instance_weights(target), instance_weights(target, "box_weights")
            matched, labels, union_term = self._term(gt, w, bw, anchors_i, 1.0, encode=False)
            if gt.numel() == 0:
                matched_gt_boxes.append(torch.zeros(anchors_i.shape, dtype=torch.float32, device=anchors_i.device))
            else:
                matched_gt_boxes.append(gt[matched.clamp(min=0)])
            if self.formulation == "instance":
                terms = [union_term]
            else:
                terms = against_a_and_b(*split_by_source(target), lambda idx, coef: self._term(
                    gt[idx], w[idx], bw[idx], anchors_i, coef, encode=True)[2])
            assignments.append(AnchorAssignment(labels, terms))
        return assignments, matched_gt_boxes

    def compute_loss(
        self,
        objectness: Tensor,
        pred_bbox_deltas: Tensor,
        assignments: list[AnchorAssignment],
        regression_targets: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """torchvision passes this positionally where its own method takes ``labels``: here each image's
        :class:`AnchorAssignment` (labels for the sampler, loss terms with weights)."""
        sampled_pos, sampled_neg = self.fg_bg_sampler([a.labels for a in assignments])
        sampled = torch.where(torch.cat(sampled_pos) | torch.cat(sampled_neg))[0]
        objectness = objectness.flatten()[sampled]
        deltas = pred_bbox_deltas[sampled]
        with_boxes = any(bool((t.box_weights != 0).any()) for a in assignments for t in a.terms)
        obj_loss = objectness.sum() * 0.0
        box_loss = deltas.sum() * 0.0
        for k in range(len(assignments[0].terms)):
            terms = [a.terms[k] for a in assignments]
            term_labels = torch.cat([t.labels for t in terms])[sampled]
            valid = (term_labels >= 0).to(objectness.dtype)
            cls_w = torch.cat([t.cls_weights for t in terms])[sampled] * valid
            obj_loss = obj_loss + weighted_objectness_loss(objectness, term_labels.clamp(min=0), cls_w)
            if not with_boxes:
                continue
            regs = [t.regression_targets if t.regression_targets is not None else r for t, r in zip(terms, regression_targets)]
            pos = torch.where(term_labels > 0)[0]
            box_w = torch.cat([t.box_weights for t in terms])[sampled][pos]
            box_loss = box_loss + weighted_box_loss(deltas[pos], torch.cat(regs)[sampled[pos]], box_w, sampled.numel())
        return obj_loss, box_loss


__all__ = ["WeightedRPN", "AnchorAssignment"]
