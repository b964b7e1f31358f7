"""The mixing policy (``LOSSMIX.*``), the one partner rule and the one generator scheme of every mixing draw.

Every path that mixes (the supervised loader, the domain-adaptation loader, the pseudo-label path
of :mod:`lossmix.engine.recipes.adaptive_teacher` and the visualiser) goes through :class:`Mixer`:

- **partner rule** (:func:`partner_of`): sample ``j`` of a batch is mixed with the partner loaded
  for it (batches of one image), else with sample ``j + 1`` (wrapping round); a lone sample has none.
- **generators** (:meth:`Mixer.rng`): ``default_rng([seed, position, stream])``. The global sample
  position ``p = iteration * global_batch + rank * local_batch + slot`` names (iteration, rank,
  slot) at once, so a draw depends on neither the number of workers nor the resume point.
  ``stream`` keeps independent draws apart: :data:`MIX_STREAM` for a sample's own mixing,
  :data:`TARGET_MIX_STREAM` for target x target mixing on pseudo-labels. (A sample's augmentation
  draws from ``default_rng([seed, p])``, in :class:`lossmix.data.loader.TrainDataset`.)
- **schedule**: with ``off_last_iters = N > 0`` nothing is mixed in the last ``N`` of ``max_iter``
  iterations (iteration = position // global batch), as GluonCV and YOLOX stop mixing for the last epochs.

The pixel and weight maths is :func:`lossmix.data.mixing.mix_pair`; this class only decides what
is mixed with what, with which draws.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .mixing import METHODS, MODES, mix_pair, sample_lambda

MIX_STREAM = 1  # a sample's own mixing draws (supervised loader, DA source side)
TARGET_MIX_STREAM = 2  # target x target mixing on the teacher's pseudo-labels (training process)


def partner_of(samples: Sequence[dict], j: int) -> Optional[dict]:
    """The partner of ``samples[j]``: its attached ``"partner"``, else ``samples[j + 1]`` (cyclic), else None."""
    attached = samples[j].get("partner")
    if attached is not None:
        return attached
    return samples[(j + 1) % len(samples)] if len(samples) > 1 else None


class Mixer:
    """Mixes a sample with its partner per the LossMix policy.

    Args:
        mode: ``none`` | ``uniform`` | ``noise`` | ``lossmix`` (``LOSSMIX.MODE``).
        method: ``mixup`` | ``cutmix`` | ``saliencymix`` (``LOSSMIX.METHOD``).
        alpha: lambda ~ Beta(alpha, alpha).
        prob: probability that a sample is mixed.
        noise_range: (low, high) of the partner's blend weight in ``noise`` mode.
        min_visible: patch methods drop instances whose visible fraction is below this.
        saliency: saliencymix's map, ``fine_grained`` | ``spectral_residual`` (``LOSSMIX.SALIENCY``).
        paste: how patch methods bring the partner to the base's size, ``stretch`` | ``keep_aspect`` (``LOSSMIX.PASTE``).
        off_last_iters: no mixing in the last this many iterations (0: mix to the end); needs
            ``max_iter`` and ``global_batch`` to place a position in the schedule.
        max_iter: training iterations (``SOLVER.MAX_ITER``).
        global_batch: samples per iteration over all processes (``SOLVER.IMS_PER_BATCH``).
        seed: ``SEED``, the root of :meth:`rng`.
    """

    def __init__(self, *, mode: str = "none", method: str = "mixup", alpha: float = 1.0, prob: float = 1.0,
                 noise_range: Sequence[float] = (0.0, 0.1), min_visible: float = 0.0,
                 saliency: str = "fine_grained", paste: str = "stretch", off_last_iters: int = 0,
                 max_iter: int = 0, global_batch: int = 1, seed: int = 0):
        if mode not in MODES:
            raise ValueError(f"LOSSMIX.MODE must be one of {MODES}, got {mode!r}")
        if method not in METHODS:
            raise ValueError(f"LOSSMIX.METHOD must be one of {METHODS}, got {method!r}")
        if off_last_iters < 0 or (off_last_iters and max_iter <= 0):
            raise ValueError(f"off_last_iters = {off_last_iters} needs off_last_iters >= 0 and max_iter > 0")
        self.mode, self.method, self.alpha, self.prob = mode, method, alpha, prob
        self.noise_range = tuple(noise_range)
        self.min_visible = min_visible
        self.saliency, self.paste = saliency, paste
        self.off_last_iters, self.max_iter, self.global_batch = int(off_last_iters), int(max_iter), int(global_batch)
        self.seed = int(seed)

    @classmethod
    def from_config(cls, cfg) -> "Mixer":
        m = cfg.LOSSMIX
        return cls(mode=m.MODE, method=m.METHOD, alpha=m.ALPHA, prob=m.PROB, noise_range=m.NOISE_RANGE,
                   min_visible=m.MIN_VISIBLE, saliency=m.SALIENCY, paste=m.PASTE, off_last_iters=m.OFF_LAST_ITERS,
                   max_iter=cfg.SOLVER.MAX_ITER, global_batch=cfg.SOLVER.IMS_PER_BATCH, seed=cfg.SEED)

    @property
    def mixes(self) -> bool:
        """Whether this policy ever mixes."""
        return self.mode != "none" and self.prob > 0

    def active(self, position: Optional[int]) -> bool:
        """Whether the sample at global ``position`` may be mixed (False in the last ``off_last_iters`` iterations)."""
        if not self.off_last_iters or position is None:
            return True
        return position // self.global_batch < self.max_iter - self.off_last_iters

    def rng(self, position: int, stream: int = MIX_STREAM) -> np.random.Generator:
        """The generator of the mixing draws of the sample at global ``position`` (module docstring)."""
        return np.random.default_rng([self.seed, int(position), int(stream)])

    def mix(self, sample: dict, partner: Optional[dict], rng: np.random.Generator, *,
            position: Optional[int] = None) -> dict:
        """``sample`` mixed with ``partner`` (numpy samples of :meth:`LossMixDatasetMapper.load`); a numpy sample.

        Unmixed (mode ``none``) when there is no partner, the policy never mixes, ``position`` lies
        in the last ``off_last_iters`` iterations, or the ``prob`` draw says so.
        """
        mode = self.mode
        if partner is None or not self.mixes or not self.active(position) or rng.random() >= self.prob:
            mode = "none"
        lam = sample_lambda(self.alpha, rng) if mode in ("uniform", "lossmix") else None
        noise = float(rng.uniform(*self.noise_range)) if mode == "noise" else None
        mixed = mix_pair(sample, partner, mode=mode, method=self.method, lam=lam, rng=rng,
                         min_visible=self.min_visible, noise_weight=noise, saliency=self.saliency, paste=self.paste)
        out = {k: sample[k] for k in ("file_name", "image_id", "height", "width") if k in sample}
        out.update(mixed)
        return out

    def mix_batch(self, samples: Sequence[dict], stream: int = MIX_STREAM) -> list[tuple[Optional[dict], dict]]:
        """Each sample (with its ``"position"``) mixed with :func:`partner_of` and :meth:`rng`: ``[(partner, mixed)]``."""
        out = []
        for j, sample in enumerate(samples):
            partner = partner_of(samples, j)
            position = sample["position"]
            out.append((partner, self.mix(sample, partner, self.rng(position, stream), position=position)))
        return out


__all__ = ["Mixer", "partner_of", "MIX_STREAM", "TARGET_MIX_STREAM"]
