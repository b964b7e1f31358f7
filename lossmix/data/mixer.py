"""The mixing policy (``LOSSMIX.*``), the one partner rule and the one generator scheme of every mixing draw.

Every path that mixes (the supervised loader, the domain-adaptation loader, the pseudo-label path
of :mod:`lossmix.engine.recipes.adaptive_teacher` and the visualiser) goes through :class:`Mixer`:

- **partner rule** (:func:`partner_of`): sample ``j`` of a batch is mixed with the partner loaded
  for it (batches of one image, or a loader that mixes sample by sample as detectron2's does), else
  with sample ``j + 1`` (wrapping round); a lone sample has none. A loaded partner is drawn
  uniformly from its pool by :func:`partner_index`, on the sample's own stream right after the sample.
- **generators** (:meth:`Mixer.rng`): ``default_rng([seed, position, stream])``. The global sample
  position ``p = iteration * global_batch + rank * local_batch + slot`` names (iteration, rank,
  slot) at once, so a draw depends on neither the number of workers nor the resume point.
  ``stream`` keeps independent draws apart: :data:`MIX_STREAM` for a sample's own mixing,
  :data:`TARGET_MIX_STREAM` for target x target mixing on pseudo-labels. A sample's augmentation
  (and its loaded partner's) draws from :func:`sample_rng` ``= default_rng([seed, p])``.
- **pair kinds** (domain adaptation, :meth:`Mixer.choose_pair`): the first draw of a source sample's
  mixing stream picks ``source_source`` or ``source_target`` among those enabled.
- **schedule**: with ``off_last_iters = N > 0`` nothing is mixed in the last ``N`` of ``max_iter``
  iterations (iteration = position // global batch), as GluonCV and YOLOX stop mixing for the last epochs.

The pixel and weight maths is :func:`lossmix.data.mixing.mix_pair`; this class only decides what
is mixed with what, with which draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .mixing import METHODS, MODES, mix_pair, sample_lambda

MIX_STREAM = 1  # a sample's own mixing draws (supervised loader, DA source side)
TARGET_MIX_STREAM = 2  # target x target mixing on the teacher's pseudo-labels (training process)


def sample_rng(seed: int, position: int) -> np.random.Generator:
    """The generator of the augmentation draws of the sample at global ``position`` (and of its loaded partner)."""
    return np.random.default_rng([int(seed), int(position)])


def global_position(local_position: int, *, rank: int, local_batch: int, world_size: int) -> int:
    """This rank's ``local_position``-th sample -> its global position ``it * global_batch + rank * local_batch + slot``."""
    it, slot = divmod(int(local_position), int(local_batch))
    return it * local_batch * world_size + rank * local_batch + slot


def partner_index(rng: np.random.Generator, pool_size: int) -> int:
    """Index of a sample's loaded partner in a pool of ``pool_size``: uniform, from the sample's own stream."""
    if pool_size <= 0:
        raise ValueError("no partners to mix with: the partner pool is empty")
    return int(rng.integers(pool_size))


@dataclass(frozen=True)
class MixPlan:
    """What :meth:`Mixer.plan` drew for one sample: the mode applied (``"none"``: not mixed), lambda / noise weight."""

    mode: str
    lam: Optional[float] = None
    noise_weight: Optional[float] = None

    @property
    def mixes(self) -> bool:
        return self.mode != "none"


NO_MIX = MixPlan("none")


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
    def from_config(cls, cfg, *, seed: Optional[int] = None) -> "Mixer":
        """From ``LOSSMIX.*``, ``SOLVER.MAX_ITER / IMS_PER_BATCH`` and ``SEED`` (or ``seed``: detectron2's
        ``SEED -1`` asks for one drawn at start)."""
        m = cfg.LOSSMIX
        return cls(mode=m.MODE, method=m.METHOD, alpha=m.ALPHA, prob=m.PROB, noise_range=m.NOISE_RANGE,
                   min_visible=m.MIN_VISIBLE, saliency=m.SALIENCY, paste=m.PASTE, off_last_iters=m.OFF_LAST_ITERS,
                   max_iter=cfg.SOLVER.MAX_ITER, global_batch=cfg.SOLVER.IMS_PER_BATCH,
                   seed=cfg.SEED if seed is None else seed)

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

    def plan(self, rng: Optional[np.random.Generator], position: Optional[int] = None, *,
             has_partner: bool = True) -> MixPlan:
        """Whether (and how) a sample is mixed: the ``prob`` draw, then lambda or the noise weight, from ``rng``.

        :data:`NO_MIX` without drawing when there is no partner, the policy never mixes or ``position``
        lies in the last ``off_last_iters`` iterations. A loader may call this before decoding the partner.
        """
        if not has_partner or not self.mixes or not self.active(position) or rng.random() >= self.prob:
            return NO_MIX
        lam = sample_lambda(self.alpha, rng) if self.mode in ("uniform", "lossmix") else None
        noise = float(rng.uniform(*self.noise_range)) if self.mode == "noise" else None
        return MixPlan(self.mode, lam, noise)

    def apply(self, sample: dict, partner: Optional[dict], plan: MixPlan, rng: Optional[np.random.Generator]) -> dict:
        """``sample`` mixed with ``partner`` per ``plan`` (``rng`` continues the stream ``plan`` drew from)."""
        mode = plan.mode if partner is not None else "none"
        mixed = mix_pair(sample, partner, mode=mode, method=self.method, lam=plan.lam, rng=rng,
                         min_visible=self.min_visible, noise_weight=plan.noise_weight, saliency=self.saliency,
                         paste=self.paste)
        out = {k: sample[k] for k in ("file_name", "image_id", "height", "width") if k in sample}
        out.update(mixed)
        return out

    def mix(self, sample: dict, partner: Optional[dict], rng: Optional[np.random.Generator], *,
            position: Optional[int] = None) -> dict:
        """``sample`` mixed with ``partner`` (numpy samples of :meth:`LossMixDatasetMapper.load`); a numpy sample.

        Unmixed (mode ``none``) when there is no partner, the policy never mixes, ``position`` lies
        in the last ``off_last_iters`` iterations, or the ``prob`` draw says so (:meth:`plan`).
        """
        return self.apply(sample, partner, self.plan(rng, position, has_partner=partner is not None), rng)

    @staticmethod
    def choose_pair(rng: np.random.Generator, pairs: Sequence[str], *, target_available: bool) -> Optional[str]:
        """The pair kind of a source sample: uniform among the enabled ``source_source`` / ``source_target``
        (the latter only with a target view at hand); None when none applies. The first draw of its stream."""
        kinds = [k for k in pairs if k == "source_source" or target_available]
        return kinds[int(rng.integers(len(kinds)))] if kinds else None

    def mix_batch(self, samples: Sequence[dict], stream: int = MIX_STREAM) -> list[tuple[Optional[dict], dict]]:
        """Each sample (with its ``"position"``) mixed with :func:`partner_of` and :meth:`rng`: ``[(partner, mixed)]``."""
        out = []
        for j, sample in enumerate(samples):
            partner = partner_of(samples, j)
            position = sample["position"]
            out.append((partner, self.mix(sample, partner, self.rng(position, stream), position=position)))
        return out


__all__ = ["Mixer", "MixPlan", "NO_MIX", "partner_of", "partner_index", "sample_rng", "global_position",
           "MIX_STREAM", "TARGET_MIX_STREAM"]
