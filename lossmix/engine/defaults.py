"""``setup``: the config (file + overrides), the output folder with the merged ``config.yaml``, logging, custom datasets."""
from __future__ import annotations

import os

from ..config.setup import build_config, for_eval_only
from ..data.builtin import register_custom
from ..utils import comm
from .checkpoint import check_new_run
from ..utils.logger import setup_logging


def setup(config_file: str = "", opts=None, *, eval_only: bool = False, resume: bool | None = None):
    """Config from file + overrides, the output folder (with the merged config.yaml), logging (console and
    OUTPUT_DIR/log.txt) and the DATASETS.CUSTOM_VOC folders. ``eval_only``: OUTPUT_DIR/eval_only/<weights>.
    ``resume=False`` (a new training run): a folder holding another run is refused before its config.yaml is
    replaced (``run(..., overwrite=True)`` deletes that run's outputs instead)."""
    cfg = build_config(config_file, opts)
    if eval_only:
        cfg = for_eval_only(cfg)
    elif resume is False:
        check_new_run(cfg.OUTPUT_DIR)
    register_custom(cfg)
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(cfg.dump())
    setup_logging(cfg.OUTPUT_DIR)
    return cfg
