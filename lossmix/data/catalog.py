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


class _DatasetCatalog(dict):
    """Registry of dataset loaders. ``register(name, func)``; ``get(name)`` calls ``func()``."""

    def register(self, name: str, func: Callable[[], list]) -> None:
        if not callable(func):
            raise TypeError(f"dataset {name!r}: the loader must be callable")
        if name in self:
            raise KeyError(f"dataset {name!r} is already registered")
        self[name] = func

    def get(self, name: str) -> list:  # type: ignore[override]
        base, count = (name, None) if name in self else split_subset(name)
        if base not in self:
            known = ", ".join(sorted(self)) or "none"
            raise KeyError(f"dataset {name!r} is not registered; registered: {known}")
        dicts = self[base]()
        if not isinstance(dicts, list):
            raise TypeError(f"dataset {base!r}: loader returned {type(dicts).__name__}, expected a list of dicts")
        if count is not None:
            if not 0 < count <= len(dicts):
                raise ValueError(f"dataset {name!r}: asks for the first {count} images of {base!r}, "
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
