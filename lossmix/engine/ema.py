"""The EMA teacher's weights: a frozen copy of the student, updated as an exponential moving average."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .checkpoint import unwrap


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of the (unwrapped) student: eval mode, ``requires_grad`` False everywhere."""
    teacher = copy.deepcopy(unwrap(student))
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def _paired(teacher: nn.Module, student: nn.Module):
    """(teacher tensor, student tensor) for every parameter and buffer, matched by name."""
    teacher, student = unwrap(teacher), unwrap(student)
    for kind, t_named, s_named in (("parameter", teacher.named_parameters(), student.named_parameters()),
                                   ("buffer", teacher.named_buffers(), student.named_buffers())):
        t_named, s_named = dict(t_named), dict(s_named)
        if t_named.keys() != s_named.keys():
            diff = sorted(set(t_named) ^ set(s_named))[:5]
            raise KeyError(f"teacher and student {kind}s differ by name: {diff}")
        for name, t in t_named.items():
            yield t, s_named[name].detach()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher = decay * teacher + (1 - decay) * student`` for every parameter and floating buffer
    (BatchNorm statistics included), matched by name; integer buffers (``num_batches_tracked``) are copied."""
    for t, s in _paired(teacher, student):
        if t.is_floating_point():
            t.mul_(decay).add_(s.to(t.dtype), alpha=1.0 - decay)
        else:
            t.copy_(s)


@torch.no_grad()
def copy_weights(teacher: nn.Module, student: nn.Module) -> None:
    """Every parameter and buffer of the student into the teacher, matched by name."""
    for t, s in _paired(teacher, student):
        t.copy_(s)


__all__ = ["make_teacher", "ema_update", "copy_weights"]
