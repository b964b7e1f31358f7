"""Layers of the detector that are faster forms of torchvision's, with the same parameters and state-dict keys."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import FrozenBatchNorm2d as _TorchvisionFrozenBatchNorm2d

__all__ = ["FrozenBatchNorm2d"]


class _FrozenAffine(torch.autograd.Function):
    """``F.batch_norm`` with frozen statistics forward (one pass); backward ``grad * scale`` into ``x`` only."""

    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps):
        ctx.save_for_backward(weight * (var + eps).rsqrt())
        return F.batch_norm(x, mean, var, weight, bias, training=False, eps=eps)

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return grad * scale.reshape(1, -1, 1, 1).to(grad.dtype), None, None, None, None, None


class FrozenBatchNorm2d(_TorchvisionFrozenBatchNorm2d):
    """torchvision's ``FrozenBatchNorm2d`` (same buffers, same state-dict keys, so torchvision / ImageNet weights
    load) computed in one pass over the input instead of two.

    torchvision computes ``x * scale + bias``: two element-wise passes and a temporary the size of ``x``. Here
    the forward is one ``F.batch_norm`` call in inference mode, a fused kernel (detectron2 uses it when no
    gradient flows into ``x``: a frozen stage in training, every layer at inference). When a gradient does
    flow into ``x`` (a trainable stage above), the backward is torchvision's own ``grad * scale``, with the
    same ``scale``, so the input gradient is the one torchvision computes from the same upstream gradient.

    The output equals torchvision's up to float rounding (``F.batch_norm`` folds the statistics in its own
    order: ~1 ulp); the buffers never receive a gradient, as in torchvision.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            return _FrozenAffine.apply(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)
