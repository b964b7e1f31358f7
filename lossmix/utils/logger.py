"""Logging set-up: the console and ``OUTPUT_DIR/log.txt`` (rank 0, every run appended); an error as one line."""
from __future__ import annotations

import logging
import os

from . import comm

FORMAT = "[%(asctime)s r{rank}] %(name)s: %(message)s"
FILE_ONLY = "lossmix_file_only"  # a record with this attribute set skips the console (tracebacks of user errors)


class _ConsoleFilter(logging.Filter):
    def filter(self, record):
        return not getattr(record, FILE_ONLY, False)


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


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (KeyError's repr quotes removed)."""
    text = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: its last line is the error itself
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith(type(err).__name__) else last
    return f"{type(err).__name__}: " + " ".join(text.split())
