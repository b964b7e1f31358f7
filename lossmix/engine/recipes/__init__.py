"""Training recipes: what differs between training methods (their step and their extra state), registered by name.

:func:`lossmix.engine.run.run` builds everything a recipe shares with the others (optimizer,
scheduler, checkpointer, loader, DDP, resume, evaluation) and asks the recipe for the rest.
A recipe is a class registered with :func:`register_recipe` that implements :class:`Recipe`:

- a keyword-only ``__init__`` taking its modules and settings, and ``from_config(cfg, *, device)``
  building them from a config (so tests construct recipes without a dataset on disk);
- ``checkpoint_modules``: the modules saved in a checkpoint (``"model"``: the one ``--eval-only``
  evaluates); ``trainable``: the module the optimizer updates (its parameters are clipped);
- ``build_loader(cfg, *, start_iter)``: its training loader; ``losses(batch, iteration)``: one
  step's ``{"loss_*": Tensor}``, each weight applied where its family is produced;
  ``after_step(iteration)``: work after the optimizer step, returning extra metrics;
  ``period_metrics()``: metrics pooled since the last call, added to each metrics.jsonl row;
  ``eval_models(iteration)``: ``{role: model or None}`` evaluated after ``iteration`` steps.

``RECIPE`` (config) names the recipe; ``auto`` is ``adaptive_teacher`` when ``DA.ENABLED``, else ``supervised``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

RECIPES: dict[str, type] = {}


def register_recipe(name: str):
    """Class decorator: register a :class:`Recipe` subclass under ``name``."""

    def wrap(cls):
        if name in RECIPES:
            raise KeyError(f"recipe {name!r} is already registered")
        RECIPES[name] = cls
        cls.name = name
        return cls

    return wrap


def recipe_name(cfg) -> str:
    """The recipe ``cfg`` asks for (``RECIPE``; ``auto`` follows ``DA.ENABLED``)."""
    name = cfg.RECIPE
    if name == "auto":
        name = "adaptive_teacher" if cfg.DA.ENABLED else "supervised"
    return name


def get_recipe(name: str) -> type:
    """The registered recipe class; an unknown name raises ``KeyError`` listing the known ones."""
    if name not in RECIPES:
        raise KeyError(f"RECIPE = {name!r} is not a registered training recipe; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


class Recipe:
    """Interface of a training recipe (module docstring); subclasses override what differs."""

    name = ""

    @classmethod
    def from_config(cls, cfg, *, device: torch.device) -> "Recipe":
        raise NotImplementedError

    @property
    def checkpoint_modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    @property
    def trainable(self) -> nn.Module:
        raise NotImplementedError

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Replace the trained modules used in :meth:`losses` by ``wrap(module)`` (DDP)."""

    @staticmethod
    def build_loader(cfg, *, start_iter: int):
        raise NotImplementedError

    def losses(self, batch, iteration: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self, iteration: int) -> dict[str, float]:
        return {}

    def period_metrics(self) -> dict[str, float]:
        """Metrics pooled over the steps since the last call: the trainer adds them to each row it logs
        (every ``LOG_PERIOD`` iterations, every process, the same keys on each)."""
        return {}

    def eval_models(self, iteration: Optional[int]) -> dict[str, Optional[nn.Module]]:
        return {"model": self.checkpoint_modules["model"]}


from . import adaptive_teacher, supervised  # noqa: E402,F401  (register the built-in recipes)

__all__ = ["RECIPES", "Recipe", "register_recipe", "recipe_name", "get_recipe"]
