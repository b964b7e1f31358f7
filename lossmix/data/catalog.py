"""Named datasets: name -> callable returning a list of detectron2-style dataset dicts, plus metadata.

A dataset dict::

    {"file_name": str, "height": int, "width": int, "image_id": str,
     "annotations": [{"bbox": [x1, y1, x2, y2], "bbox_mode": BoxMode.XYXY_ABS,
                      "category_id": int (0-based), "difficult": 0 | 1}, ...]}

A registered name followed by ``[:N]`` (``synthetic_source_train[:32]``) is the first ``N`` images of
that dataset, in its split file's order, with its metadata: how a data-limited experiment trains on,
and evaluates, exactly the images it trained on.
"""
from __future__ import annotations

import inspect
import re
import types
from typing import Callable, Optional

_SUBSET = re.compile(r"^(?P<base>.+)\[:(?P<count>\d+)\]$")


def split_subset(name: str) -> tuple[str, Optional[int]]:
    """``"name[:N]"`` -> ``("name", N)``; any other name -> ``(name, None)``."""
    match = _SUBSET.match(name)
    if not match:
        return name, None
    return match["base"], int(match["count"])


def _accepts_on_bad(func) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "on_bad" or p.kind is p.VAR_KEYWORD for p in params)


class _DatasetCatalog(dict):
    """Registry of dataset loaders. ``register(name, func)``; ``get(name)`` calls ``func()``."""

    def register(self, name: str, func: Callable[[], list]) -> None:
        if not callable(func):
            raise TypeError(f"dataset {name!r}: the loader must be callable")
        if name in self:
            raise KeyError(f"dataset {name!r} is already registered")
        self[name] = func

    def get(self, name: str, *, on_bad: str = "error", problems: list | None = None) -> list:  # type: ignore[override]
        """The dataset dicts of ``name`` (or of ``name[:N]``, its first N). ``on_bad="skip"`` is passed to
        loaders that take an ``on_bad`` keyword (the VOC reader: bad annotation files are left out, each
        appended to ``problems`` as ``{"file", "kind", "problem"}``); other loaders are called without arguments."""
        base, count = (name, None) if name in self else split_subset(name)
        if base not in self:
            known = ", ".join(sorted(self)) or "none"
            raise KeyError(f"dataset {name!r} is not registered; registered: {known}")
        func = self[base]
        dicts = func(on_bad=on_bad, problems=problems) if on_bad != "error" and _accepts_on_bad(func) else func()
        if not isinstance(dicts, list):
            raise TypeError(f"dataset {base!r}: loader returned {type(dicts).__name__}, expected a list of dicts")
        if count is not None:
            if not 0 < count <= len(dicts):
                from ..config.setup import ConfigError  # a user's name: one error line, not a traceback

                raise ConfigError(f"dataset {name!r}: asks for the first {count} images of {base!r}, "
                                 f"which has {len(dicts)}")
            dicts = dicts[:count]
        return dicts

    def remove(self, name: str) -> None:
        self.pop(name, None)
        MetadataCatalog.pop(name, None)


class Metadata(types.SimpleNamespace):
    """Attributes of a dataset: ``thing_classes``, ``evaluator_type``, ``dirname``, ``split``, ..."""

    def set(self, **kwargs) -> "Metadata":
        for key, value in kwargs.items():
            old = getattr(self, key, None)
            if old is not None and old != value:
                raise ValueError(f"metadata {key!r} is already {old!r}; refusing to change it to {value!r}")
            setattr(self, key, value)
        return self

    def get(self, key, default=None):
        return getattr(self, key, default)


class _MetadataCatalog(dict):
    def get(self, name: str) -> Metadata:  # type: ignore[override]
        base, count = (name, None) if name in self else split_subset(name)
        if count is not None and base in self:  # a subset shares its dataset's metadata
            return self[base]
        if name not in self:
            self[name] = Metadata(name=name)
        return self[name]


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()


def check_num_classes(num_classes: int, dataset_names) -> None:
    """``MODEL.ROI_HEADS.NUM_CLASSES`` against each registered dataset's ``thing_classes`` (when it has them).

    Raises ``ConfigError`` naming both numbers and the dataset: too many classes would train unchecked and fail
    at evaluation, too few fail deep in torch ("Target 3 is out of bounds", a device assert on CUDA).
    """
    from ..config.setup import ConfigError

    for name in dict.fromkeys(dataset_names):
        if name not in DatasetCatalog and split_subset(name)[0] not in DatasetCatalog:
            continue  # DatasetCatalog.get names it when the data is loaded
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != num_classes:
            shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
            raise ConfigError(
                f"MODEL.ROI_HEADS.NUM_CLASSES = {num_classes} but dataset {name!r} has {len(classes)} classes "
                f"({shown}); set MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}")
