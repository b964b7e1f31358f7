"""The mixing pictures (lossmix.analysis.visualize) show what training used."""
from __future__ import annotations

import numpy as np

from lossmix.analysis.visualize import draw_saliency_panel


def test_saliency_panel_uses_trainings_map_and_paste_mode():
    rng = np.random.default_rng(0)
    partner = rng.integers(0, 60, (40, 120, 3), dtype=np.uint8)
    partner[10:30, 90:115] = 250  # a bright object near the right edge: cropped away by keep_aspect's cover
    kwargs = dict(max_side=32, min_short=0)
    stretch = draw_saliency_panel(partner, 48, 48, None, **kwargs)
    cover = draw_saliency_panel(partner, 48, 48, None, paste="keep_aspect", **kwargs)
    spectral = draw_saliency_panel(partner, 48, 48, None, saliency="spectral_residual", **kwargs)
    assert not np.array_equal(stretch, cover) and not np.array_equal(stretch, spectral)
    # each is deterministic: the difference comes from the map and the resize, not from noise
    assert np.array_equal(cover, draw_saliency_panel(partner, 48, 48, None, paste="keep_aspect", **kwargs))
