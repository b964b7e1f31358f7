"""Per-sample loss terms shared by the weighted RPN and ROI heads.

A target dict (one per image) may carry, beside torchvision's ``boxes`` and ``labels``:

- ``weights`` [N] float: classification / objectness weight of each instance (absent = 1);
- ``box_weights`` [N] float: box-regression weight of each instance (absent = ``weights``);
- ``lam`` scalar and ``from_partner`` [N] bool: the image-level mixing coefficient and which
  instances came from the partner image; read only by the ``interpolate`` formulation.

A :class:`LossTerm` describes one supervision signal over a head's samples: its labels, per-sample
classification and box weights, and (optionally) its own box targets. The ``instance`` formulation
has one term (the union of boxes, per-instance weights); ``interpolate`` has two (lambda * A and
(1 - lambda) * B, each labelled against its own box set).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

import torch
from torch import Tensor

from ..data.mixing import FORMULATIONS  # noqa: E402,F401  (defined with the mixing modes it pairs with)
T = TypeVar("T")


@dataclass
class LossTerm:
    labels: Tensor  # [K] per sample: class (ROI) or 1/0 (RPN); -1 = ignored by this term
    cls_weights: Tensor  # [K] weight of each sample's classification / objectness loss
    box_weights: Tensor  # [K] weight of each sample's box-regression loss (read for foreground only)
    regression_targets: Optional[Tensor] = None  # [K, 4]; None = the head's usual targets


def instance_weights(target: dict, key: str = "weights") -> Tensor:
    """``target[key]`` as float, or ones when absent (``box_weights`` falls back to ``weights``)."""
    boxes = target["boxes"]
    if key in target:
        return target[key].to(device=boxes.device, dtype=boxes.dtype)
    if key == "box_weights" and "weights" in target:
        return instance_weights(target, "weights")
    return torch.ones(boxes.shape[0], device=boxes.device, dtype=boxes.dtype)


def per_sample_weights(inst_weights: Tensor, matched_idxs: Tensor, foreground: Tensor, bg_weight: float) -> Tensor:
    """Each sample takes its matched instance's weight when foreground, ``bg_weight`` otherwise.

    inst_weights [N]; matched_idxs [K] (any value where not foreground); foreground [K] bool.
    """
    out = torch.full(foreground.shape, float(bg_weight), device=foreground.device, dtype=inst_weights.dtype)
    if inst_weights.numel() > 0:
        fg = torch.where(foreground)[0]
        out[fg] = inst_weights[matched_idxs[fg].clamp(min=0)]
    return out


def split_by_source(target: dict) -> tuple[float, Tensor, Tensor]:
    """``(lam, index_of_A_instances, index_of_B_instances)`` for the interpolate formulation."""
    boxes = target["boxes"]
    lam = float(target["lam"]) if "lam" in target else 1.0
    if "from_partner" in target:
        partner = target["from_partner"].to(device=boxes.device, dtype=torch.bool)
    else:
        partner = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    return lam, torch.where(~partner)[0], torch.where(partner)[0]


def against_a_and_b(lam: float, index_a: Tensor, index_b: Tensor, label: Callable[[Tensor, float], T]) -> list[T]:
    """The interpolate formulation's one loop, shared by every weighted head (torchvision's and detectron2's):
    ``[label(index_a, lam), label(index_b, 1 - lam)]``, the indices being A's and B's instances
    (``split_by_source(target)`` gives all three).

    ``label(index, coef)`` labels the head's samples against the instances ``index`` alone and scales
    their loss weights (background included) by ``coef``; summing the two terms gives
    ``lam * L(x, A) + (1 - lam) * L(x, B)``.
    """
    return [label(index_a, lam), label(index_b, 1.0 - lam)]


INSTANCE_KEYS = ("boxes", "labels", "weights", "box_weights", "from_partner")  # per-instance target entries


def interpolate_targets(targets: list[dict]) -> tuple[list[dict], list[dict]]:
    """Each torchvision target split by :func:`against_a_and_b` into A's and B's instances: two target lists,
    each target holding one source's instances and ``loss_scale`` (``lam`` / ``1 - lam``), which
    multiplies every sample weight of that image (see :func:`loss_scale`)."""
    def subset(target):
        return lambda index, coef: {**target, **{k: target[k][index] for k in INSTANCE_KEYS if k in target},
                                    "loss_scale": torch.tensor(coef * loss_scale(target))}

    pairs = [against_a_and_b(*split_by_source(t), subset(t)) for t in targets]
    return [a for a, _ in pairs], [b for _, b in pairs]


def loss_scale(target: dict) -> float:
    """``target["loss_scale"]`` (1 when absent): a factor on every sample weight of the image, foreground and
    background (set by :func:`interpolate_targets`)."""
    return float(target["loss_scale"]) if "loss_scale" in target else 1.0


class WeightedLossMixin:
    """Settings shared by the weighted RPN and ROI heads, and adoption of a built torchvision head."""

    bg_weight: float
    formulation: str

    def __init__(self, *args, bg_weight: float = 1.0, formulation: str = "instance", **kwargs):
        super().__init__(*args, **kwargs)  # the torchvision head this mixin precedes
        self.configure(bg_weight=bg_weight, formulation=formulation)

    def configure(self, *, bg_weight: float = 1.0, formulation: str = "instance") -> None:
        if formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
        self.bg_weight = float(bg_weight)
        self.formulation = formulation

    @classmethod
    def adopt(cls, head, **settings):
        """An instance of ``cls`` reusing a built torchvision head's modules and settings (shares its parameters)."""
        new = cls.__new__(cls)
        new.__dict__.update(head.__dict__)  # nn.Module state: submodules, matcher, sampler, thresholds
        new.configure(**settings)
        return new
