"""Gradient reversal and an image-level domain discriminator on one backbone feature map.

The discriminator tells source (label 0) from target (label 1) per feature-map pixel; the
gradient-reversal layer in front of it makes the backbone *maximise* that loss, i.e. learn
domain-confusing features (Ganin & Lempitsky 2015; Adaptive Teacher's image-level discriminator).
The feature map is taken during the detector's normal forward with :func:`capture_feature`, so the
backbone runs once per image batch.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-coeff``."""

    @staticmethod
    def forward(ctx, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        return grad_output * -ctx.coeff, None


def grad_reverse(x: Tensor, coeff: float = 1.0) -> Tensor:
    """``x`` unchanged; the gradient flowing back into ``x`` is scaled by ``-coeff``."""
    return GradientReversal.apply(x, coeff)


class ImageDomainDiscriminator(nn.Module):
    """Gradient reversal, then 3x3 convs ``in -> 256 -> 128 -> 1`` with LeakyReLU(0.2) in between.

    ``forward(features [N, C, H, W]) -> logits [N, 1, H, W]`` (one source/target logit per pixel).

    Args:
        in_channels: channels of the feature map (the FPN width, 256 for torchvision's FPN).
        hidden: widths of the two hidden convs.
        grl_lambda: gradient-reversal coefficient (``DA.GRL_LAMBDA``); 0 stops the gradient into the features.
        negative_slope: LeakyReLU slope.
    """

    def __init__(self, *, in_channels: int, hidden: Sequence[int] = (256, 128), grl_lambda: float = 1.0,
                 negative_slope: float = 0.2):
        super().__init__()
        widths = [int(in_channels), *(int(h) for h in hidden)]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.LeakyReLU(negative_slope, inplace=True)]
        layers.append(nn.Conv2d(widths[-1], 1, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.grl_lambda = float(grl_lambda)

    @classmethod
    def from_config(cls, cfg, in_channels: int) -> "ImageDomainDiscriminator":
        return cls(in_channels=in_channels, grl_lambda=cfg.DA.GRL_LAMBDA)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(grad_reverse(features, self.grl_lambda))


def domain_loss(logits: Tensor, domain: Tensor) -> Tensor:
    """Per-pixel binary cross-entropy, averaged over every pixel of the batch.

    logits [N, 1, H, W]; domain [N] float: 0 source, 1 target, in between for an image mixed from
    both (its target share of the pixels).
    """
    target = domain.to(device=logits.device, dtype=logits.dtype).view(-1, 1, 1, 1).expand_as(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


@contextlib.contextmanager
def capture_feature(backbone: nn.Module, name: str) -> Iterator[list[Tensor]]:
    """While active, every forward of ``backbone`` appends its output ``name`` to the yielded list.

    ``backbone`` returns a dict of feature maps (torchvision's ``BackboneWithFPN``); a missing
    ``name`` raises ``KeyError`` listing the available ones. The hook is removed on exit, so
    copies of the model (the teacher) never carry it.
    """
    captured: list[Tensor] = []

    def hook(_module, _inputs, output):
        if name not in output:
            raise KeyError(f"DA.DIS_FEATURE {name!r} is not a backbone output; available: {list(output)}")
        captured.append(output[name])

    handle = backbone.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


__all__ = ["GradientReversal", "grad_reverse", "ImageDomainDiscriminator", "domain_loss", "capture_feature"]
