"""Box conventions shared by the whole package (detectron2's, so its users feel at home)."""
from enum import IntEnum


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
