"""Sharing a machine's cores between runs side by side: how many threads each gets, and how a run follows a change.

The benchmark runner gives each running run a share of the cores (:func:`thread_shares`) and writes it to a
small file in the run's folder (:func:`write_thread_count`); the run names that file in the environment variable
:data:`THREADS_FILE_ENV` and calls :func:`follow_thread_count` once per training iteration and per evaluated
batch, which applies a changed count with ``torch.set_num_threads`` (in the main thread, between operations).
So a run that is left alone, or starts when fewer runs remain than cores, uses the idle cores.

Numerics: torch's CPU kernels split reductions by thread count, so a run whose thread count changes is
equal to a one-thread run up to float reduction order only (the first step's loss agrees to ~1e-7; training
then amplifies the difference like any other rounding change). A fixed ``--threads`` keeps a run bit-exact.
"""
from __future__ import annotations

import os
from typing import Optional

THREADS_FILE_ENV = "LOSSMIX_THREADS_FILE"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells, else ``os.cpu_count()``)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def thread_shares(cores: int, running: int) -> list[int]:
    """Threads for each of ``running`` runs side by side on ``cores`` cores, in start order.

    Every core is used and no run gets fewer than one thread: ``cores // running`` each, the
    remainder going one by one to the runs started first (``(3, 2) -> [2, 1]``, ``(2, 1) -> [2]``,
    ``(2, 3) -> [1, 1, 1]``).
    """
    if cores < 1 or running < 0:
        raise ValueError(f"thread_shares: need cores >= 1 and running >= 0, got cores={cores}, running={running}")
    if running == 0:
        return []
    base, extra = divmod(cores, running)
    return [max(base + (i < extra), 1) for i in range(running)]


def write_thread_count(path: str, threads: int) -> None:
    """Write ``threads`` to ``path`` atomically (a reader never sees a half-written number)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{int(threads)}\n")
    os.replace(tmp, path)


class ThreadCountFollower:
    """Applies the count written in ``path`` with ``torch.set_num_threads`` whenever the file changes.

    Checking costs one ``os.stat`` when nothing changed. A missing, unreadable or non-positive count is
    ignored (the run keeps its threads): the file is advice from the runner, never a reason to fail.
    """

    def __init__(self, path: str):
        self.path = path
        self._stamp = None

    def poll(self) -> Optional[int]:
        """The thread count now in force when it was just changed, else ``None``."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            with open(self.path, encoding="utf-8") as f:
                threads = int(f.read().strip())
        except (OSError, ValueError):
            return None
        if threads < 1:
            return None
        import torch

        if torch.get_num_threads() == threads:
            return None
        torch.set_num_threads(threads)
        return threads


_followers: dict[str, ThreadCountFollower] = {}


def follow_thread_count() -> Optional[int]:
    """:meth:`ThreadCountFollower.poll` on the file named by ``$LOSSMIX_THREADS_FILE`` (nothing when unset).

    Call it from the main thread (OpenMP thread counts are per calling thread)."""
    path = os.environ.get(THREADS_FILE_ENV)
    if not path:
        return None
    follower = _followers.get(path)
    if follower is None:
        follower = _followers[path] = ThreadCountFollower(path)
    return follower.poll()
