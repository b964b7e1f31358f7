"""lossmix.benchmark.compare (tables over seeds) and lossmix.analysis.visualize (drawing), on hand-made inputs."""
import json
import math
import os

import numpy as np
import pytest

from lossmix.benchmark.compare import format_ap, load_runs, method_of, plot, summarize, to_markdown
from lossmix.analysis.visualize import draw_dashed_rectangle, draw_instances, weight_colour

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(folder, mode, results, method="mixup"):
    os.makedirs(os.path.join(folder, "eval"))
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        f.write(f"LOSSMIX:\n  MODE: {mode}\n  METHOD: {method}\nSEED: 0\n")
    for dataset, result in results.items():
        with open(os.path.join(folder, "eval", f"{dataset}.json"), "w") as f:
            json.dump(result, f)
    return str(folder)


def _voc(ap, per_class):
    return {"AP50": ap, "per_class": per_class, "metric": "area", "num_images": 5}


@pytest.fixture
def runs(tmp_path):
    """baseline: 3 seeds (AP 40, 42, 47), lossmix: 2 seeds, a lone uniform run; a DA-style file for lossmix."""
    for seed, ap in enumerate((40.0, 42.0, 47.0)):
        _run(tmp_path / "baseline" / f"seed{seed}", "none",
             {"src": _voc(ap, {"circle": ap - 10, "star": ap + 10}),
              "tgt": _voc(ap / 2, {"circle": float("nan"), "star": ap})})
    for seed, ap in enumerate((50.0, 54.0)):
        _run(tmp_path / "lossmix" / f"seed{seed}", "lossmix",
             {"src": _voc(ap, {"circle": ap, "star": ap}),
              "tgt": {"teacher": _voc(ap - 20, {"circle": 1.0, "star": 2.0}),
                      "student": _voc(0.0, {"circle": 0.0, "star": 0.0})}})
    _run(tmp_path / "uniform_run", "uniform", {"src": _voc(45.0, {"circle": 40.0, "star": 50.0})}, method="cutmix")
    return tmp_path


def test_summarize_exact_mean_and_std(runs):
    loaded = load_runs([str(runs / "baseline"), str(runs / "lossmix"), str(runs / "uniform_run")])
    assert [r.method for r in loaded] == ["baseline"] * 3 + ["lossmix"] * 2 + ["uniform+cutmix"]
    summary = summarize(loaded)
    assert list(summary) == ["src", "tgt"]
    base, lossmix, uniform = summary["src"]
    assert (base.method, base.n, base.ap_mean) == ("baseline", 3, 43.0)
    assert base.ap_std == pytest.approx(math.sqrt(((40 - 43) ** 2 + (42 - 43) ** 2 + (47 - 43) ** 2) / 2), abs=1e-12)
    assert base.per_class == {"circle": 33.0, "star": 53.0}
    assert (lossmix.n, lossmix.ap_mean, lossmix.ap_std) == (2, 52.0, pytest.approx(math.sqrt(8.0)))
    assert uniform.n == 1 and uniform.ap_mean == 45.0 and math.isnan(uniform.ap_std)
    # a class with no ground truth (NaN) stays undefined; the DA file is read from its teacher
    tgt_base, tgt_lossmix = summary["tgt"]
    assert math.isnan(tgt_base.per_class["circle"]) and tgt_base.evaluated == "model"
    assert tgt_lossmix.evaluated == "teacher"
    assert tgt_lossmix.ap_mean == 32.0 and tgt_lossmix.per_class == {"circle": 1.0, "star": 2.0}


def test_markdown_rows(runs):
    summary = summarize(load_runs([str(runs / "baseline"), str(runs / "lossmix"), str(runs / "uniform_run")]))
    md = to_markdown(summary)
    assert "### src" in md and "### tgt" in md
    src = md.split("### tgt")[0]
    rows = [line for line in src.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert rows == [
        "| baseline | 43.0 ±3.6 (n=3) | model | 33.0 | 53.0 |",
        "| lossmix | 52.0 ±2.8 (n=2) | model | 52.0 | 52.0 |",
        "| uniform+cutmix | 45.0 | model | 40.0 | 50.0 |",
    ]
    assert "| baseline | 21.5 ±1.8 (n=3) | model | n/a | 43.0 |" in md
    assert "| lossmix | 32.0 ±2.8 (n=2) | teacher | 1.0 | 2.0 |" in md


def test_plot_writes_png(runs, tmp_path):
    summary = summarize(load_runs([str(runs / "baseline"), str(runs / "uniform_run")]))
    path = plot(summary, str(tmp_path / "compare.png"))
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_grouping_and_formatting(tmp_path):
    assert method_of(str(tmp_path / "lossmix_r50" / "seed3"), {"LOSSMIX": {"MODE": "none"}}) == "lossmix_r50"
    assert method_of(str(tmp_path / "x"), {"LOSSMIX": {"MODE": "noise", "METHOD": "cutmix"}}) == "noise"
    assert method_of(str(tmp_path / "x"), {}) == "x"
    assert method_of(str(tmp_path / "x"), {"LOSSMIX": {"MODE": "lossmix"}, "DA": {"ENABLED": True}}) == "da:lossmix"
    assert method_of(str(tmp_path / "a" / "seed0"), {"LOSSMIX": {"MODE": "none"}}, group_by="config") == "none"
    assert format_ap(48.26, 1.04, 3) == "48.3 ±1.0 (n=3)"
    assert format_ap(48.0, float("nan"), 1) == "48.0"
    with pytest.raises(FileNotFoundError):
        load_runs([str(tmp_path / "missing")])


def test_compare_tool_on_runs(runs, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "compare_tool", os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "compare.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "out"
    md = tool.main(["--runs", str(runs / "baseline"), str(runs / "lossmix"), "--output", str(out)])
    assert md == (out / "compare.md").read_text() and "| lossmix |" in capsys.readouterr().out
    assert (out / "compare.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(SystemExit):  # overrides without --configs
        tool.parse_args(["--runs", "a", "SOLVER.MAX_ITER", "10"])
    args = tool.parse_args(["--configs", "a.yaml", "b.yaml", "--seeds", "0", "1", "SOLVER.MAX_ITER", "10"])
    assert (args.configs, args.seeds, args.opts) == (["a.yaml", "b.yaml"], [0, 1], ["SOLVER.MAX_ITER", "10"])


def test_draw_instances_colours_boxes_by_weight():
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    boxes = np.array([[5, 20, 35, 50], [40, 25, 75, 55]], dtype=np.float32)
    out = draw_instances(image, boxes, [1.0, 0.25], from_partner=[False, True], classes=[0, 1],
                         class_names=["circle", "star"], min_short=120, thickness=2)
    assert out.shape == (120, 160, 3) and out.dtype == np.uint8
    assert image.max() == 0  # input untouched
    for weight, box in ((1.0, boxes[0]), (0.25, boxes[1])):
        colour = np.array(weight_colour(weight))
        x1, y1, x2, y2 = (int(v) * 2 for v in box)
        # the left edge is drawn (solid or dashed) in the weight's colour; the box interior stays black
        edge = out[y1 + 10:y2 - 2, x1 - 1:x1 + 2].reshape(-1, 3)
        assert np.any(np.all(edge == colour, axis=1))
        assert out[(y1 + y2) // 2, (x1 + x2) // 2].max() == 0
    assert not np.array_equal(weight_colour(0.0), weight_colour(1.0))


def test_dashed_rectangle_has_gaps():
    img = np.zeros((40, 100, 3), dtype=np.uint8)
    draw_dashed_rectangle(img, (10, 10, 90, 30), (255, 0, 0), thickness=1, dash=5)
    top = img[10, 12:88, 0] > 0
    assert top.any() and not top.all()


def test_da_eval_without_teacher_uses_student(tmp_path):
    """Burn-in never ended: the teacher's entry is null and the student's result is read (and said so)."""
    _run(tmp_path / "run", "lossmix", {"tgt": {"teacher": None, "student": _voc(12.0, {"circle": 12.0})}})
    (row,) = summarize(load_runs([str(tmp_path / "run")]))["tgt"]
    assert (row.ap_mean, row.evaluated) == (12.0, "student")


@pytest.fixture
def grid(tmp_path, monkeypatch):
    """tools/compare.py's trainer over a tiny config and seeds 0-2, with training recorded instead of run.

    seed0 is complete; seed1 has its eval/ results but no final summary row (a run started over in the folder);
    seed2 is empty."""
    import yaml

    import lossmix.engine.defaults
    import lossmix.engine.run
    from lossmix.config.setup import build_config

    from .helpers import load_tool, tiny_opts

    names = {"source_train": "synthetic_source_train", "source_test": "synthetic_source_test"}
    config = tmp_path / "tiny.yaml"
    config.write_text(build_config("", tiny_opts(names, tmp_path / "unused")).dump())
    root = tmp_path / "grid"
    opts = ["SOLVER.MAX_ITER", "4"]
    for seed, summary in ((0, True), (1, False)):
        out = root / "tiny" / f"seed{seed}"
        (out / "eval").mkdir(parents=True)
        cfg = build_config(str(config), opts + ["SEED", str(seed), "OUTPUT_DIR", str(out)])
        (out / "config.yaml").write_text(cfg.dump())
        (out / "eval" / "synthetic_source_test.json").write_text(json.dumps({"model": _voc(40.0, {})}))
        rows = [{"iteration": 4, "total_loss": 1.0}] + ([{"iteration": 4, "summary": {"iterations": 4}}] if summary
                                                         else [])
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trained = []
    monkeypatch.setattr(lossmix.engine.defaults, "setup",
                        lambda config_file, opts, resume=None: (yaml.safe_load(
                            build_config(config_file, opts).dump()), resume))
    monkeypatch.setattr(lossmix.engine.run, "run", lambda cfg_resume, overwrite=False: trained.append(
        (os.path.basename(cfg_resume[0]["OUTPUT_DIR"]), cfg_resume[1], overwrite)))
    tool = load_tool("compare")
    return lambda **kw: tool.train_runs([str(config)], [0, 1, 2], str(root), opts, **kw), trained, root


def test_compare_grid_skips_only_runs_complete_by_the_benchmark_rule(grid):
    train, trained, root = grid
    # results in eval/ without the final summary row are not a complete run: seed1 is not skipped, and its folder
    # holds a run, so nothing trains until --overwrite says it may be deleted
    with pytest.raises(SystemExit, match=r"1 run folder\(s\) already hold a run: \S+seed1 \(not complete\); "
                                         r"add --overwrite"):
        train(skip_existing=True)
    assert trained == []
    dirs = train(skip_existing=True, overwrite=True)
    assert [os.path.basename(d) for d in dirs] == ["seed0", "seed1", "seed2"]
    assert trained == [("seed1", None, True), ("seed2", None, True)]


def test_compare_grid_refuses_to_retrain_over_runs_unless_overwrite(grid):
    train, trained, root = grid
    with pytest.raises(SystemExit, match=r"2 run folder\(s\) already hold a run: \S+seed0 \(complete\), \S+seed1 "
                                         r"\(not complete\); add --skip-existing to keep the complete ones, --overwrite"):
        train()
    assert trained == []
    train(overwrite=True)
    assert trained == [("seed0", None, True), ("seed1", None, True), ("seed2", None, True)]


def test_compare_grid_retrains_a_run_of_another_config(grid):
    train, trained, root = grid
    import yaml

    config = root / "tiny" / "seed0" / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["LOSSMIX"]["ALPHA"] = 0.25
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit, match=r"\S+seed0 \(trained with another config\), \S+seed1 \(not complete\)"):
        train(skip_existing=True)
    train(skip_existing=True, overwrite=True)
    assert [t[0] for t in trained] == ["seed0", "seed1", "seed2"]
