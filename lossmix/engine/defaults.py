"""``setup``: the config (file + overrides), the output folder with the merged ``config.yaml``, logging, custom
datasets; ``report_user_errors``: the tools' one-line errors for the user's mistakes."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback

from ..config.setup import ConfigError, build_config, for_eval_only
from ..data.builtin import register_custom
from ..data.errors import BadSampleError
from ..utils import comm
from .checkpoint import ResumeError, UnreadableFileError, check_new_run
from ..utils.logger import FILE_ONLY, one_line, setup_logging


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


def user_errors() -> tuple:
    """Exception types that are the user's mistakes (config, data, files), shown as one line by the tools."""
    return (ConfigError, KeyError, FileNotFoundError, BadSampleError, ResumeError, UnreadableFileError)


@contextlib.contextmanager
def report_user_errors(*, debug: bool = False, exit_code: int = 2):
    """Turn a user mistake (:func:`user_errors`) into ``error: <one line>`` on stderr (rank 0) and exit
    ``exit_code``; the traceback goes to ``log.txt`` (and to the console with ``debug``). Other exceptions
    propagate with their traceback."""
    try:
        yield
    except KeyboardInterrupt as err:  # Ctrl-C / SIGTERM (the trainer saved model_interrupted.pth if it was training)
        if comm.is_main_process():
            print(f"interrupted ({err or 'Ctrl-C'}); rerun the same command with --resume to continue",
                  file=sys.stderr)
        raise SystemExit(130) from None
    except user_errors() as err:
        if debug:
            raise
        if logging.getLogger().handlers:  # else logging's last-resort handler would print the traceback
            logging.getLogger("lossmix").error("%s\n%s", one_line(err), traceback.format_exc(),
                                               extra={FILE_ONLY: True})
        if comm.is_main_process():
            logs = [h.baseFilename for h in logging.getLogger().handlers
                    if getattr(h, "_lossmix", False) and isinstance(h, logging.FileHandler)]
            where = f"the traceback is in {logs[0]}; " if logs else ""
            print(f"error: {one_line(err)}\n({where}rerun with --debug to see it here)", file=sys.stderr)
        raise SystemExit(exit_code) from None
