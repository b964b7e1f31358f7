"""What torchvision's one-stage detectors (RetinaNet, FCOS) need to follow the project's detector contract.

:class:`OneStageMixin` goes first in a subclass of torchvision's ``RetinaNet`` / ``FCOS``:

- **Labels**: the project numbers classes 1..C in targets and detections (0 is background, as
  Faster R-CNN); torchvision's one-stage heads have C outputs numbered 0..C-1, so ``forward`` shifts
  targets down by one and detections up by one (no dead background column).
- **Loss names**: torchvision's ``{"classification", ...}`` come out as ``{"loss_classification", ...}``.
- **Interpolate formulation**: ``compute_loss`` runs torchvision's own matching and the weighted head
  twice, on A's instances with ``loss_scale`` lambda and on B's with 1 - lambda
  (:func:`~lossmix.modeling.targets.interpolate_targets`), and sums: ``lam * L(x, A) + (1 - lam) * L(x, B)``.

The per-instance weights themselves are applied by the detector's weighted head (its ``compute_loss``).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .targets import interpolate_targets


class OneStageMixin:
    """Label shift, ``loss_*`` names and the interpolate formulation for a torchvision one-stage detector whose
    ``head`` is a weighted head (has ``formulation``): torchvision's head, built by the detector, is replaced by
    ``weighted_head.adopt`` (its parameters kept)."""

    weighted_head: type  # the weighted head class (a WeightedLossMixin) that takes over torchvision's head

    def __init__(self, backbone, num_classes: int, *, bg_weight: float = 1.0, formulation: str = "instance", **kwargs):
        super().__init__(backbone, num_classes, **kwargs)
        self.head = self.weighted_head.adopt(self.head, bg_weight=bg_weight, formulation=formulation)

    def forward(self, images: list[Tensor], targets: Optional[list[dict[str, Tensor]]] = None):
        if targets is not None:
            targets = [{**t, "labels": t["labels"] - 1} for t in targets]
        out = super().forward(images, targets)
        if self.training:
            return {f"loss_{k}": v for k, v in out.items()}
        for det in out:
            det["labels"] = det["labels"] + 1
        return out

    def compute_loss(self, targets, head_outputs, anchors, *args):
        if self.head.formulation == "instance":
            return super().compute_loss(targets, head_outputs, anchors, *args)
        a, b = (super(OneStageMixin, self).compute_loss(part, head_outputs, anchors, *args)
                for part in interpolate_targets(targets))
        return {k: a[k] + b[k] for k in a}


__all__ = ["OneStageMixin"]
