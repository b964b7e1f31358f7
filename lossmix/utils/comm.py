"""torch.distributed helpers that are no-ops in a single process."""
from __future__ import annotations

import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    if is_dist() and get_world_size() > 1:
        dist.barrier()


def all_gather(obj) -> list:
    """Gather a picklable object from every rank; returns a list with one entry per rank."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: dict, device=None) -> dict:
    """Every process's float ``values`` averaged over the processes (all of them must call it, with the same
    keys); the dict itself in a single process. For logging only: one all_reduce of a small tensor."""
    if get_world_size() == 1:
        return dict(values)
    import torch

    keys = sorted(values)
    if device is None or (dist.get_backend() == "gloo" and torch.device(device).type != "cpu"):
        device = "cpu"
    if dist.get_backend() == "nccl":
        device = device if torch.device(device).type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return dict(zip(keys, (packed / get_world_size()).tolist()))
