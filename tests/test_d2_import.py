"""lossmix stays detectron2-free; lossmix.d2 says how to get detectron2 when it is missing.

These run with or without detectron2 installed (each check runs in a fresh interpreter)."""
import subprocess
import sys
import textwrap

from .helpers import REPO


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_importing_lossmix_never_imports_detectron2():
    proc = _python("""
        import importlib, pkgutil, sys
        import lossmix

        names, todo = [], [lossmix]
        while todo:  # every module of the package but lossmix.d2 (pkgutil.walk_packages would import that too)
            package = todo.pop()
            for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
                if info.name == "lossmix.d2":
                    continue
                module = importlib.import_module(info.name)
                names.append(info.name)
                if info.ispkg:
                    todo.append(module)
        assert "lossmix.data.mixing" in names and "lossmix.modeling.losses" in names, names
        loaded = sorted(m for m in sys.modules if m == "detectron2" or m.startswith("detectron2."))
        print(len(names), "modules;", "detectron2 modules loaded:", loaded)
        assert not loaded, loaded
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lossmix_d2_without_detectron2_says_how_to_install():
    proc = _python("""
        import sys
        sys.modules["detectron2"] = None  # as if it were not installed, whether it is or not
        try:
            import lossmix.d2
        except ImportError as e:
            print(e)
        else:
            raise SystemExit("lossmix.d2 imported without detectron2")
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lossmix.d2 needs detectron2" in proc.stdout
    assert "pip install" in proc.stdout and "facebookresearch/detectron2" in proc.stdout
