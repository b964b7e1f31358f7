"""``setup``: the config (file + overrides), the output folder with the merged ``config.yaml``, logging."""
from __future__ import annotations

import logging
import os

from ..config.setup import build_config
from ..utils import comm


def setup(config_file: str = "", opts=None):
    """Config from file + overrides, the output folder (with the merged config.yaml) and logging."""
    from ..data import builtin  # noqa: F401  (registers the standard dataset names)

    cfg = build_config(config_file, opts)
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(cfg.dump())
    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s r{comm.get_rank()}] %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    return cfg
