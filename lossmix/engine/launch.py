"""Process launching: ``--num-gpus N`` spawns N local processes (NCCL on GPUs, gloo on CPU);
under ``torchrun`` the environment's RANK / WORLD_SIZE are used."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, backend: str, init_method: str) -> None:
    dist.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world)
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())


def _worker(rank, main_fn, world, backend, init_method, args):
    _init(rank, world, backend, init_method)
    try:
        main_fn(*args)
    finally:
        dist.destroy_process_group()


def launch(main_fn, num_gpus: int = 1, args: tuple = ()):
    """Run ``main_fn(*args)`` in one process, under torchrun's environment, or in ``num_gpus`` spawned processes."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        try:
            return main_fn(*args)
        finally:
            dist.destroy_process_group()
    if num_gpus <= 1:
        return main_fn(*args)
    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= num_gpus else "gloo"
    mp.spawn(_worker, nprocs=num_gpus, args=(main_fn, num_gpus, backend, f"tcp://127.0.0.1:{_free_port()}", args))
