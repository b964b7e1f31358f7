"""Box conventions shared by the whole package (detectron2's, so its users feel at home)."""
from enum import IntEnum

import numpy as np


class BoxMode(IntEnum):
    """How an annotation's ``bbox`` is written. Values match detectron2's ``BoxMode``."""

    XYXY_ABS = 0  # (x1, y1, x2, y2) in absolute pixels, x2/y2 exclusive (continuous coordinates)
    XYWH_ABS = 1  # (x, y, width, height) in absolute pixels


def to_xyxy(bbox, mode) -> list:
    """Return ``bbox`` as ``[x1, y1, x2, y2]`` floats given its ``BoxMode``."""
    mode = BoxMode(mode)
    x, y, a, b = (float(v) for v in bbox)
    if mode == BoxMode.XYXY_ABS:
        return [x, y, a, b]
    return [x, y, x + a, y + b]


def as_boxes(boxes, name: str = "boxes") -> np.ndarray:
    """``boxes`` as a float32 ``[N, 4]`` array (an empty input becomes ``[0, 4]``); other shapes raise."""
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4], got {arr.shape}")
    return arr
