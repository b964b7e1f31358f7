"""The package's layering, read from the source with ``ast`` (lazy imports inside functions count too):
``lossmix/utils`` holds leaf helpers that import nothing else of lossmix, and only ``lossmix/d2`` imports detectron2."""
import ast
import os

import pytest

from .helpers import REPO

PACKAGE = os.path.join(REPO, "lossmix")


def _modules(folder: str):
    """``(path, dotted module name)`` of every ``.py`` file under ``folder``."""
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: str, module: str) -> list[str]:
    """Every module ``path`` imports, absolute (``from ..config import x`` in lossmix.utils.y -> lossmix.config.x)."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    names = []
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            # ``from pkg import name``: name may be a module of pkg or an attribute; both are under pkg
            names += [f"{base}.{alias.name}" for alias in node.names] if not node.module else [base]
    return names


def test_imported_names_resolves_relative_imports(tmp_path):
    folder = tmp_path / "lossmix" / "utils"
    folder.mkdir(parents=True)
    path = folder / "x.py"
    path.write_text("import os\nfrom . import comm\nfrom .threads import a\nfrom ..config.setup import b\n"
                    "def f():\n    from ...other import c\n    import lossmix.engine\n")
    assert imported_names(str(path), "lossmix.utils.x") == [
        "os", "lossmix.utils.comm", "lossmix.utils.threads", "lossmix.config.setup", "other", "lossmix.engine"]


def _outside_utils(name: str) -> bool:
    return (name == "lossmix" or name.startswith("lossmix.")) and not (
        name == "lossmix.utils" or name.startswith("lossmix.utils."))


@pytest.mark.parametrize("path, module", list(_modules(os.path.join(PACKAGE, "utils"))),
                         ids=lambda v: os.path.basename(v) if os.sep in str(v) else "")
def test_utils_is_a_leaf(path, module):
    """A helper in utils/ that needs config, data or engine belongs with them (DESIGN: never utils -> lossmix)."""
    found = [name for name in imported_names(path, module) if _outside_utils(name)]
    assert not found, f"{os.path.relpath(path, REPO)} imports {found}"


def test_utils_leaf_check_catches_a_relative_import_of_another_layer(tmp_path):
    path = tmp_path / "lossmix" / "utils" / "bad.py"
    path.parent.mkdir(parents=True)
    path.write_text("def f():\n    from ..config.setup import ConfigError\n")
    assert [n for n in imported_names(str(path), "lossmix.utils.bad") if _outside_utils(n)] == ["lossmix.config.setup"]


def test_only_lossmix_d2_imports_detectron2():
    offenders = []
    for path, module in _modules(PACKAGE):
        if module == "lossmix.d2" or module.startswith("lossmix.d2."):
            continue
        offenders += [f"{module}: {name}" for name in imported_names(path, module)
                      if name == "detectron2" or name.startswith("detectron2.")]
    assert not offenders, offenders
    d2 = [n for path, module in _modules(os.path.join(PACKAGE, "d2")) for n in imported_names(path, module)]
    assert any(n.startswith("detectron2") for n in d2)  # the check sees the plug-in's own imports
