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


# The plug-in's config module on a plain fvcore CfgNode, detectron2 or not: detectron2.config is stubbed
# and lossmix/d2/config.py loaded on its own (lossmix.d2's __init__ would import the rest of detectron2).
_LOAD_D2_CONFIG = """
    import importlib.util, sys, types
    from fvcore.common.config import CfgNode
    d2 = types.ModuleType("detectron2"); d2.__path__ = []
    d2_config = types.ModuleType("detectron2.config"); d2_config.CfgNode = CfgNode
    sys.modules.update({"detectron2": d2, "detectron2.config": d2_config})
    import lossmix
    pkg = types.ModuleType("lossmix.d2"); pkg.__path__ = [lossmix.__path__[0] + "/d2"]
    sys.modules["lossmix.d2"] = pkg
    spec = importlib.util.spec_from_file_location("lossmix.d2.config", lossmix.__path__[0] + "/d2/config.py")
    plugin = importlib.util.module_from_spec(spec); sys.modules["lossmix.d2.config"] = plugin
    spec.loader.exec_module(plugin)
    from lossmix.config import get_cfg
    from lossmix.config.schema import node_entries

    def d2_cfg():  # what detectron2's get_cfg() has that LossMix reads
        cfg = CfgNode()
        cfg.SEED, cfg.SOLVER, cfg.DATASETS = -1, CfgNode(), CfgNode()
        cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.DATASETS.TRAIN = 90000, 16, ()
        plugin.add_lossmix_config(cfg)
        plugin.add_da_config(cfg)
        return cfg
"""


def test_d2_config_is_built_from_the_core_definition():
    proc = _python(_LOAD_D2_CONFIG + """
    cfg, core = d2_cfg(), get_cfg()
    for node in ("LOSSMIX", "DA"):
        ours, theirs = dict(cfg[node]), dict(core[node])
        assert list(ours) == list(theirs), (node, sorted(set(ours) ^ set(theirs)))
        overridden = set(plugin.D2_OVERRIDES.get(node, {}))
        for k in ours:
            assert k in overridden or ours[k] == theirs[k], (node, k, ours[k], theirs[k])
        assert all(e.comment for e in node_entries(node))
    assert cfg.DATASETS.TRAIN_UNLABELED == core.DATASETS.TRAIN_UNLABELED
    assert cfg.DA.DIS_FEATURE == "p4"
    plugin.validate_lossmix_config(cfg)
    # the core's checks, with the core's messages
    for key, bad in (("LOSSMIX.MODE", "mixed"), ("LOSSMIX.METHOD", "mosaic"), ("LOSSMIX.FORMULATION", "x"),
                     ("LOSSMIX.PROB", 1.5), ("LOSSMIX.ALPHA", 0.0), ("LOSSMIX.NOISE_RANGE", (0.2, 0.1)),
                     ("LOSSMIX.SALIENCY", "itti"), ("LOSSMIX.PASTE", "tile"), ("LOSSMIX.OFF_LAST_ITERS", 10**6),
                     ("DA.EMA_DECAY", 1.5), ("DA.MIX_PAIRS", ("target_source",)), ("DA.DIS_FEATURE", 2)):
        broken = cfg.clone()
        node, k = key.split(".")
        broken[node][k] = bad
        try:
            plugin.validate_lossmix_config(broken)
        except ValueError as e:
            assert key in str(e), (key, e)
        else:
            raise AssertionError(f"{key} = {bad!r} accepted")
    # a key added to the core reaches the plug-in without an edit there
    import lossmix.config.defaults as defaults
    import lossmix.config.schema as schema
    defaults._C.LOSSMIX.NEW_KEY = 3
    comments = schema.key_comments()
    schema.key_comments = lambda: {**comments, "LOSSMIX.NEW_KEY": "a key added to the core"}
    assert d2_cfg().LOSSMIX.NEW_KEY == 3
    print("ok")
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok" in proc.stdout


def test_d2_train_net_help_without_detectron2():
    """``tools/d2_train_net.py -h`` prints its help (and how to install detectron2) where detectron2 is missing;
    a run says how to install it."""
    run_tool = """
        import runpy, sys
        sys.modules["detectron2"] = None  # as if it were not installed
        sys.argv = ["d2_train_net.py", *ARGS]
        runpy.run_path("tools/d2_train_net.py", run_name="__main__")
    """
    proc = _python(run_tool.replace("ARGS", "['-h']"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--config-file" in proc.stdout and "DA.ENABLED" in proc.stdout
    assert "git+https://github.com/facebookresearch/detectron2.git@" in proc.stdout
    proc = _python(run_tool.replace("ARGS", "['--config-file', 'configs/d2/synthetic_at.yaml']"))
    assert proc.returncode != 0 and "detectron2 is not installed" in proc.stderr
