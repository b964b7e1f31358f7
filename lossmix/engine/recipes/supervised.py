"""The supervised recipe: ``loss = sum(model(images, targets).values())`` (LossMix and its baselines: the mixing is in the data)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ...data.loader import build_train_loader
from ..checkpoint import load_detector
from ..inference import images_to_device, targets_to_device
from . import Recipe, register_recipe


@register_recipe("supervised")
class SupervisedRecipe(Recipe):
    """One detector trained on labelled (possibly mixed) batches from :func:`build_train_loader`.

    Args:
        model: the detector (its ``forward(images, targets)`` returns the loss dict).
        device: where batches go.
    """

    def __init__(self, *, model: nn.Module, device: torch.device):
        self.model, self.device = model, device
        self.forward = model  # the DDP wrapper once distributed

    @classmethod
    def from_config(cls, cfg, *, device: torch.device) -> "SupervisedRecipe":
        return cls(model=load_detector(cfg).to(device), device=device)

    @property
    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    @property
    def trainable(self) -> nn.Module:
        return self.forward

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self.forward = wrap(self.model)

    @staticmethod
    def build_loader(cfg, *, start_iter: int):
        return build_train_loader(cfg, start_iter=start_iter)

    def losses(self, batch: list[dict], iteration: int) -> dict[str, torch.Tensor]:
        return self.forward(images_to_device(batch, self.device), targets_to_device(batch, self.device))
