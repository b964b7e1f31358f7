"""Logging set-up: the console, ``OUTPUT_DIR/log.txt`` (rank 0, every run appended), and one-line user errors."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback

from . import comm

FORMAT = "[%(asctime)s r{rank}] %(name)s: %(message)s"
_FILE_ONLY = "lossmix_file_only"  # a record with this attribute set skips the console (tracebacks of user errors)


class _ConsoleFilter(logging.Filter):
    def filter(self, record):
        return not getattr(record, _FILE_ONLY, False)


def setup_logging(output_dir: str = "", *, level=logging.INFO) -> None:
    """Console handler on the root logger (every rank, tagged with the rank) and, on rank 0, a file handler
    appending to ``output_dir/log.txt``. Calling again with another folder moves the file handler there."""
    root = logging.getLogger()
    root.setLevel(level)
    fmt = logging.Formatter(FORMAT.format(rank=comm.get_rank()), datefmt="%H:%M:%S")
    for handler in list(root.handlers):
        if getattr(handler, "_lossmix", False):
            root.removeHandler(handler)
            handler.close()
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    console.addFilter(_ConsoleFilter())
    console._lossmix = True
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in root.handlers):
        root.addHandler(console)
    else:  # someone (pytest, basicConfig) owns the console; still keep user-error tracebacks off it
        for h in root.handlers:
            if type(h) is logging.StreamHandler and not any(isinstance(f, _ConsoleFilter) for f in h.filters):
                h.addFilter(_ConsoleFilter())
    if output_dir and comm.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, "log.txt"), encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s",
                                                    datefmt="%Y-%m-%d %H:%M:%S"))
        file_handler._lossmix = True
        root.addHandler(file_handler)


def user_errors() -> tuple:
    """Exception types that are the user's mistakes (config, data, files), shown as one line by the tools."""
    from ..config.setup import ConfigError
    from ..data.errors import BadSampleError
    from ..engine.checkpoint import ResumeError, UnreadableFileError

    return (ConfigError, KeyError, FileNotFoundError, BadSampleError, ResumeError, UnreadableFileError)


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (KeyError's repr quotes removed)."""
    text = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: its last line is the error itself
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith(type(err).__name__) else last
    return f"{type(err).__name__}: " + " ".join(text.split())


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
                                               extra={_FILE_ONLY: True})
        if comm.is_main_process():
            logs = [h.baseFilename for h in logging.getLogger().handlers
                    if getattr(h, "_lossmix", False) and isinstance(h, logging.FileHandler)]
            where = f"the traceback is in {logs[0]}; " if logs else ""
            print(f"error: {one_line(err)}\n({where}rerun with --debug to see it here)", file=sys.stderr)
        raise SystemExit(exit_code) from None
