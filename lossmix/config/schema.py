"""The definition of a config node read back from :mod:`lossmix.config.defaults`: keys, defaults, comments.

``defaults.py`` writes each key once, as ``_C.NODE.KEY = value  # comment``. Other back-ends (the
detectron2 plug-in's ``add_lossmix_config``) build their nodes from :func:`node_entries` instead of
copying keys, defaults and comments, so a key added to the core reaches them without an edit.
"""
from __future__ import annotations

import inspect
import io
import tokenize
from typing import NamedTuple

from . import defaults


class Entry(NamedTuple):
    """One key of a node: its name inside the node, its default (a fresh copy) and its one-line comment."""

    key: str
    default: object
    comment: str


def key_comments() -> dict[str, str]:
    """``{"LOSSMIX.MODE": "none | uniform | ...", ...}``: the trailing comment of every ``_C.X.Y = value`` line."""
    source = inspect.getsource(defaults)
    comments, statement = {}, None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.string == "_C" and tok.start[1] == 0:
            line = tok.line
            target = line.split("=", 1)[0].strip()
            statement = target[len("_C."):] if target.startswith("_C.") else None
        elif tok.type == tokenize.COMMENT and statement is not None:
            comments[statement] = tok.string.lstrip("#").strip()
            statement = None
        elif tok.type == tokenize.NEWLINE:
            statement = None
    return comments


def node_entries(node: str) -> list[Entry]:
    """The keys of ``_C.<node>`` (e.g. ``"LOSSMIX"``) in definition order, each with its default and comment.

    A key without a comment raises ``ValueError`` naming it (every key is documented where it is defined).
    """
    cfg = defaults.get_cfg()
    comments = key_comments()
    entries = []
    for key, value in cfg[node].items():
        comment = comments.get(f"{node}.{key}")
        if not comment:
            raise ValueError(f"lossmix/config/defaults.py: {node}.{key} has no '# comment' on its line")
        entries.append(Entry(key, value, comment))
    return entries


def build_node(node_cls, node: str, overrides: dict | None = None):
    """A ``node_cls`` (any yacs / fvcore ``CfgNode`` class) holding ``_C.<node>``'s keys and defaults.

    ``overrides``: ``{key: Entry}`` for keys whose default or meaning differs on that back-end (e.g. a
    feature name instead of a level index); every override must name an existing key.
    """
    overrides = dict(overrides or {})
    out = node_cls()
    for entry in node_entries(node):
        entry = overrides.pop(entry.key, entry)
        out[entry.key] = entry.default
    if overrides:
        raise KeyError(f"overrides of keys that {node} does not define: {sorted(overrides)}")
    return out


__all__ = ["Entry", "key_comments", "node_entries", "build_node"]
