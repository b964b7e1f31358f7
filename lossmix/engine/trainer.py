"""The training loop: steps of a recipe's losses, non-finite-step policy, signals, periodic logging / checkpoints / evaluation."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from typing import Callable, Iterable, Optional

import torch

from ..utils import comm
from ..utils.threads import follow_thread_count
from .checkpoint import Checkpointer, rng_state
from .events import EventWriter, JSONWriter, default_writers, drop_rows_after  # noqa: F401  (drop_rows_after: re-export)

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a NaN / inf loss."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM arrived; a checkpoint was saved first."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        torch.set_flush_denormal(True)  # freshly initialised nets run up to 8x slower on denormals
    return torch.device(name)


MetricsWriter = JSONWriter  # metrics.jsonl (lossmix.engine.events)


@contextlib.contextmanager
def signals_received():
    """Record SIGINT / SIGTERM in the yielded list instead of dying mid-step (main thread only).

    The loop checks the list after each step, saves a checkpoint and raises :class:`TrainingInterrupted`.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    received = []

    def handler(signum, _frame):
        received.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class Trainer:
    """Runs steps ``start_iter .. max_iter - 1`` of ``loss = sum(recipe.losses(batch, it).values())``.

    Non-finite losses: the step is not applied, the event is logged with its loss components;
    after ``max_bad_steps`` consecutive ones training stops (:class:`NonFiniteLossError`), leaving
    the last good checkpoint intact. SIGINT / SIGTERM save ``model_interrupted.pth`` then stop.
    Every ``log_period`` iterations (and the last) a row of losses, ``time`` / ``data_time`` (seconds per
    iteration since the previous row) and ``lr`` goes to each of ``writers`` (default: a detectron2-style line
    on the console and in log.txt, ``metrics.jsonl`` and TensorBoard: :mod:`lossmix.engine.events`); nothing
    per iteration is kept in memory.

    Args:
        recipe: a :class:`lossmix.engine.recipes.Recipe` (its ``trainable`` module is put in train
            mode and clipped; ``after_step`` runs after each optimizer step).
        optimizer / scheduler / data_loader / checkpointer / device: the shared pieces.
        max_iter / start_iter: the schedule (``SOLVER.MAX_ITER``; the resumed iteration).
        output_dir / log_period / checkpoint_period / eval_period: ``OUTPUT_DIR``, ``LOG_PERIOD``,
            ``SOLVER.CHECKPOINT_PERIOD``, ``TEST.EVAL_PERIOD`` (0 = off).
        evaluate: ``fn(iteration) -> results`` for periodic evaluation.
        amp / clip_gradients / max_bad_steps: ``SOLVER.AMP`` (CUDA only), ``SOLVER.CLIP_GRADIENTS``, ``SOLVER.MAX_BAD_STEPS``.
        writers: :class:`~lossmix.engine.events.EventWriter` list (None: :func:`default_writers`).
    """

    def __init__(self, *, recipe, optimizer, scheduler, data_loader: Iterable, checkpointer: Checkpointer, device,
                 max_iter: int, start_iter: int = 0, output_dir: str = "", log_period: int = 20,
                 checkpoint_period: int = 0, eval_period: int = 0, evaluate: Optional[Callable[[int], dict]] = None,
                 amp: bool = False, clip_gradients: float = 0.0, max_bad_steps: int = 5,
                 writers: Optional[list[EventWriter]] = None):
        self.recipe, self.optimizer, self.scheduler = recipe, optimizer, scheduler
        self.data_loader, self.device, self.checkpointer = data_loader, device, checkpointer
        self.start_iter, self.iter, self.max_iter = start_iter, start_iter, max_iter
        self.output_dir = output_dir
        self.log_period, self.checkpoint_period, self.eval_period = log_period, checkpoint_period, eval_period
        self.evaluate_fn = evaluate
        self.writers = default_writers(output_dir, max_iter=max_iter, start_iter=start_iter) if writers is None \
            else writers
        self._timing = {"time": 0.0, "data_time": 0.0, "iters": 0}  # summed since the last periodic row
        self.use_amp = bool(amp) and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.clip_gradients, self.max_bad_steps = clip_gradients, max_bad_steps
        self.bad_steps = 0
        self.skipped_steps = 0

    @classmethod
    def from_config(cls, cfg, **kwargs) -> "Trainer":
        """``kwargs``: recipe, optimizer, scheduler, data_loader, checkpointer, device, start_iter, evaluate."""
        s = cfg.SOLVER
        return cls(max_iter=s.MAX_ITER, output_dir=cfg.OUTPUT_DIR, log_period=cfg.LOG_PERIOD,
                   checkpoint_period=s.CHECKPOINT_PERIOD, eval_period=cfg.TEST.EVAL_PERIOD, amp=s.AMP,
                   clip_gradients=s.CLIP_GRADIENTS, max_bad_steps=s.MAX_BAD_STEPS, **kwargs)

    # -- one step -------------------------------------------------------------------------------
    def run_step(self, batch) -> dict[str, float]:
        with torch.autocast("cuda", enabled=self.use_amp):
            losses = self.recipe.losses(batch, self.iter)
        total = sum(losses.values())
        values = {k: float(v.detach()) for k, v in losses.items()}
        values["total_loss"] = float(total.detach())
        finite = torch.isfinite(total.detach())
        if comm.get_world_size() > 1:  # every rank must agree to skip, or DDP would hang
            flag = finite.float().to(self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            finite = flag > 0
        self.optimizer.zero_grad(set_to_none=True)
        if not bool(finite):
            self._bad_step(values)
        else:
            self.bad_steps = 0
            self.scaler.scale(total).backward()
            if self.clip_gradients > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.recipe.trainable.parameters(), self.clip_gradients)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        values.update(self.recipe.after_step(self.iter))
        return values

    def _bad_step(self, values: dict) -> None:
        self.bad_steps += 1
        self.skipped_steps += 1
        logger.warning("iteration %d: non-finite loss, step not applied: %s", self.iter, values)
        self.write_extra({"iteration": self.iter, "non_finite_loss": values})
        if self.bad_steps >= self.max_bad_steps:
            raise NonFiniteLossError(
                f"{self.bad_steps} consecutive non-finite losses (SOLVER.MAX_BAD_STEPS = {self.max_bad_steps}) "
                f"at iteration {self.iter}; last components {values}. Training stopped; the last good checkpoint "
                f"is kept in {self.output_dir}. Lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS."
            )

    # -- the loop -------------------------------------------------------------------------------
    def save(self, name: str, iteration: int, *, every_rank: bool = True) -> None:
        """Checkpoint on the main process, with every rank's RNG state (``every_rank``: all ranks call this)."""
        per_rank = comm.all_gather(rng_state()) if every_rank and comm.get_world_size() > 1 else None
        if comm.is_main_process():
            self.checkpointer.save(name, iteration, rng_per_rank=per_rank)

    def after_step(self, values: dict) -> None:
        it = self.iter + 1
        if self.log_period and (it % self.log_period == 0 or it == self.max_iter):  # every rank gets here: the logged losses are the mean over ranks
            values = comm.mean_over_ranks({**values, **self.recipe.period_metrics()}, self.device)
            n = max(self._timing["iters"], 1)
            row = {"iteration": it, "lr": self.optimizer.param_groups[0]["lr"], **values,
                   "time": self._timing["time"] / n, "data_time": self._timing["data_time"] / n}
            self._timing = {"time": 0.0, "data_time": 0.0, "iters": 0}
            for writer in self.writers:
                writer.write(row)
        if self.checkpoint_period and it % self.checkpoint_period == 0 and it < self.max_iter:
            self.save(f"model_{it:07d}", it)
        if self.evaluate_fn and self.eval_period and it % self.eval_period == 0 and it < self.max_iter:
            self.write_extra({"iteration": it, **{"eval": self.evaluate_fn(it)}})

    def write_extra(self, row: dict) -> None:
        """An evaluation, non-finite-step or summary row to every writer."""
        for writer in self.writers:
            writer.write_extra(row)

    def train(self) -> dict:
        from tqdm import tqdm

        self.recipe.trainable.train()
        bar = tqdm(total=self.max_iter, initial=self.start_iter, desc="train", dynamic_ncols=True,
                   disable=not comm.is_main_process() or self.max_iter == self.start_iter)
        start = time.perf_counter()
        with signals_received() as received:
            data_iter = iter(self.data_loader)
            for self.iter in range(self.start_iter, self.max_iter):
                follow_thread_count()  # a benchmark runner may hand this run idle cores
                t0 = time.perf_counter()
                batch = next(data_iter)
                t1 = time.perf_counter()
                values = self.run_step(batch)
                self.scheduler.step()
                self._timing = {"time": self._timing["time"] + time.perf_counter() - t0,
                                "data_time": self._timing["data_time"] + t1 - t0, "iters": self._timing["iters"] + 1}
                self.after_step(values)
                bar.set_postfix(loss=f"{values['total_loss']:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2g}")
                bar.update(1)
                if received:
                    self.save("model_interrupted", self.iter + 1, every_rank=False)  # the signal may reach one rank only
                    raise TrainingInterrupted(f"signal {received[0]} at iteration {self.iter + 1}; checkpoint saved")
        bar.close()
        self.save("model_final", self.max_iter)
        seconds = time.perf_counter() - start
        summary = {"iterations": self.max_iter, "seconds": round(seconds, 1),
                   "skipped_non_finite_steps": self.skipped_steps}
        if self.start_iter:  # a resumed run: the whole run's iterations, and what this session did
            summary.update(resumed_at=self.start_iter, iterations_this_session=self.max_iter - self.start_iter)
        self.write_extra({"iteration": self.max_iter, "summary": summary})
        for writer in self.writers:
            writer.close()
        logger.info("training done: %d iterations%s in %.1f s", self.max_iter,
                    f" ({self.max_iter - self.start_iter} after resuming at {self.start_iter})" if self.start_iter
                    else "", seconds)
        return summary
