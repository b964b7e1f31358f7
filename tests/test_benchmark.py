"""tools/benchmark.py and lossmix.benchmark: protocols, run states, aggregation, on fabricated run folders."""
import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from lossmix.config.setup import build_config
from lossmix import benchmark as bm
from lossmix.benchmark.compare import check_poolable, load_run

from .helpers import REPO, tiny_opts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATASETS = {"source_train": "synthetic_source_train", "source_test": "synthetic_source_test"}


def _config_file(tmp_path, **extra) -> str:
    """A tiny config file (as YAML) training on synthetic_source_train, testing on synthetic_source_test."""
    path = tmp_path / "tiny.yaml"
    cfg = build_config("", tiny_opts(DATASETS, tmp_path / "unused", **extra))
    path.write_text(cfg.dump())
    return str(path)


def _protocol(tmp_path, text: str, name="proto") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace("CONFIG_FILE", _config_file(tmp_path)))
    return str(path)


def _fake_run(spec: bm.RunSpec, ap: dict, *, summary=True, checkpoint=False, curve=None, config_edit=None,
              seconds=10.0) -> None:
    """Write what train_net leaves behind: config.yaml, eval/<dataset>.json, metrics.jsonl (+ last_checkpoint)."""
    os.makedirs(os.path.join(spec.output_dir, "eval"), exist_ok=True)
    cfg = yaml.safe_load(build_config(spec.config_file, spec.opts).dump())
    if config_edit:
        config_edit(cfg)
    with open(os.path.join(spec.output_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f)
    rows = [{"iteration": 1, "total_loss": 1.0}]
    for it, values in (curve or {}).items():
        rows.append({"iteration": it, "eval": {d: {"AP50": v, "per_class": {}} for d, v in values.items()}})
    if summary:
        rows.append({"iteration": spec.max_iter, "summary": {"iterations": spec.max_iter, "seconds": seconds}})
    with open(os.path.join(spec.output_dir, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    for dataset, value in ap.items():
        with open(os.path.join(spec.output_dir, "eval", f"{dataset}.json"), "w") as f:
            json.dump(value if isinstance(value, dict) else
                      {"AP50": value, "per_class": {"circle": value - 10, "star": value + 10}}, f)
    if checkpoint:
        (open(os.path.join(spec.output_dir, "last_checkpoint"), "w")).write("model_0000003.pth")


PROTO = """
DESCRIPTION: two entries
SEEDS: [0, 1, 2]
OVERRIDES: ["SOLVER.MAX_ITER", "4"]
GAP: {SOURCE_ONLY: none, ORACLE: oracle}
ENTRIES:
  - NAME: none
    CONFIG: CONFIG_FILE
  - NAME: lossmix
    CONFIG: CONFIG_FILE
    OVERRIDES: ["LOSSMIX.MODE", "lossmix"]
  - NAME: oracle
    CONFIG: CONFIG_FILE
    OVERRIDES: ["LOSSMIX.ALPHA", 2.0]
    SEEDS: [5]
"""


def test_protocol_parsing(tmp_path):
    proto = bm.load_protocol(_protocol(tmp_path, PROTO))
    assert proto.name == "proto" and [e.name for e in proto.entries] == ["none", "lossmix", "oracle"]
    assert proto.entries[1].overrides == ["SOLVER.MAX_ITER", "4", "LOSSMIX.MODE", "lossmix"]
    assert proto.entries[2].overrides == ["SOLVER.MAX_ITER", "4", "LOSSMIX.ALPHA", "2.0"]
    assert [e.seeds for e in proto.entries] == [[0, 1, 2], [0, 1, 2], [5]]
    assert bm.protocol_path("supervised") == os.path.join("configs", "benchmark", "supervised.yaml")


@pytest.mark.parametrize("text, message", [
    ("SEEDS: [0]\nENTRIES: []\n", "ENTRIES must be a non-empty list"),
    ("SEEDS: [0]\nENTRIES:\n  - {NAME: a, CONFIG: x.yaml, SEED: 1}\n", "ENTRIES[0]: unknown key(s) ['SEED']"),
    ("ENTRIES:\n  - {NAME: a, CONFIG: x.yaml}\n", "ENTRIES[0] (a) has no SEEDS"),
    ("SEEDS: [0, 0]\nENTRIES:\n  - {NAME: a, CONFIG: x.yaml}\n", "SEEDS repeats a seed"),
    ("SEEDS: [0]\nENTRIES:\n  - {NAME: a b, CONFIG: x.yaml}\n", "ENTRIES[0].NAME must be a folder-safe name"),
    ("SEEDS: [0]\nENTRIES:\n  - {NAME: a, CONFIG: x.yaml}\n  - {NAME: a, CONFIG: y.yaml}\n", "(a).NAME repeats"),
    ("SEEDS: [0]\nOVERRIDES: [SOLVER.MAX_ITER]\nENTRIES:\n  - {NAME: a, CONFIG: x.yaml}\n", "OVERRIDES must be a list"),
    ("SEEDS: [0]\nENTRIES:\n  - {NAME: a, CONFIG: x.yaml, OVERRIDES: [SEED, 3]}\n", "ENTRIES[0] (a).OVERRIDES sets SEED"),
    ("SEEDS: [0]\nGAP: {SOURCE_ONLY: a, ORACLE: b}\nENTRIES:\n  - {NAME: a, CONFIG: x.yaml}\n", "GAP.ORACLE = 'b'"),
    ("SEEDS: [0]\nGAP: {SOURCE_ONLY: a, ORACLE: {d: a, e: c}}\nENTRIES:\n  - {NAME: a, CONFIG: x.yaml}\n",
     "GAP.ORACLE = 'c'"),
    ("SEED: [0]\nENTRIES:\n  - {NAME: a, CONFIG: x.yaml}\n", "unknown key(s) ['SEED']"),
    ("SEEDS: [0\n", "not valid YAML"),
])
def test_protocol_errors_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(bm.ProtocolError) as err:
        bm.load_protocol(str(path))
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_unknown_config_key_names_protocol_and_entry(tmp_path):
    path = _protocol(tmp_path, "SEEDS: [0]\nENTRIES:\n  - {NAME: a, CONFIG: CONFIG_FILE, OVERRIDES: [LOSSMIX.ALHPA, 1]}\n")
    with pytest.raises(bm.ProtocolError, match=r"proto.yaml: entry 'a': unknown config key 'LOSSMIX.ALHPA'"):
        bm.plan(bm.load_protocol(path), str(tmp_path / "out"))


def test_plan_skips_complete_resumes_interrupted_and_flags_changed(tmp_path):
    proto = bm.load_protocol(_protocol(tmp_path, PROTO))
    root = str(tmp_path / "out")
    specs = bm.plan(proto, root)
    assert [(s.entry, s.seed, s.state) for s in specs] == [
        ("none", 0, "fresh"), ("none", 1, "fresh"), ("none", 2, "fresh"),
        ("lossmix", 0, "fresh"), ("lossmix", 1, "fresh"), ("lossmix", 2, "fresh"), ("oracle", 5, "fresh")]
    none0, none1, none2, lossmix0 = specs[:4]
    assert none0.output_dir == os.path.join(root, "proto", "none", "seed0")
    assert none0.command("py", "train_net.py") == [
        "py", "train_net.py", "--config-file", none0.config_file, "--overwrite",
        "SOLVER.MAX_ITER", "4", "SEED", "0", "OUTPUT_DIR", none0.output_dir]
    _fake_run(none0, {"synthetic_source_test": 40.0})  # complete
    _fake_run(none1, {}, summary=False, checkpoint=True)  # interrupted after a checkpoint
    _fake_run(none2, {"synthetic_source_test": 40.0}, summary=False)  # an eval written mid-training, no checkpoint
    _fake_run(lossmix0, {"synthetic_source_test": 40.0},  # trained with another alpha
              config_edit=lambda c: c["LOSSMIX"].update(ALPHA=4.0))
    specs = bm.plan(proto, root)
    assert [s.state for s in specs[:4]] == ["complete", "resume", "fresh", "changed"]
    # a mixed folder: a second run started over (its rows moved the first one's summary to metrics.dropped.jsonl)
    # and wrote its first evaluation, beside the first run's model_final.pth: not complete
    open(os.path.join(none2.output_dir, "model_final.pth"), "wb").close()
    assert bm.plan(proto, root)[2].state == "fresh"
    assert specs[1].command("py", "t.py")[:5] == ["py", "t.py", "--config-file", none1.config_file, "--resume"]
    assert specs[3].changed_keys == {"LOSSMIX.ALPHA": (4.0, 1.0)}
    with pytest.raises(RuntimeError, match=r"seed0 \(entry 'lossmix', seed 0\) was trained with another config: "
                                           r"LOSSMIX.ALPHA: 4.0 in its config.yaml, 1.0 now"):
        bm.execute(specs, python="false-python-never-run")


def _complete_protocol(tmp_path):
    """none: AP 40, 42, 47; lossmix: 50, 54, 52; oracle: 60 (one seed) on synthetic_source_test."""
    proto = bm.load_protocol(_protocol(tmp_path, PROTO))
    specs = bm.plan(proto, str(tmp_path / "out"))
    aps = {("none", 0): 40.0, ("none", 1): 42.0, ("none", 2): 47.0, ("lossmix", 0): 50.0, ("lossmix", 1): 54.0,
           ("lossmix", 2): 52.0, ("oracle", 5): 60.0}
    for spec in specs:
        ap = aps[(spec.entry, spec.seed)]
        _fake_run(spec, {"synthetic_source_test": ap, "synthetic_source_train": ap + 30}, seconds=10.0 + spec.seed,
                  curve={2: {"synthetic_source_test": ap / 2}})
    return proto, bm.plan(proto, str(tmp_path / "out"))


def test_report_mean_std_n_gap_and_curves(tmp_path):
    proto, specs = _complete_protocol(tmp_path)
    assert {s.state for s in specs} == {"complete"}
    report = bm.build_report(proto, specs, command="python tools/benchmark.py proto")
    test = report["summary"]["synthetic_source_test"]
    assert test["none"]["mean"] == 43.0 and test["none"]["n"] == 3
    assert test["none"]["std"] == pytest.approx(math.sqrt((9 + 1 + 16) / 2), abs=1e-12)
    assert (test["lossmix"]["mean"], test["lossmix"]["std"], test["lossmix"]["n"]) == (52.0, 2.0, 3)
    assert test["oracle"]["n"] == 1 and math.isnan(test["oracle"]["std"])
    assert test["none"]["per_class"] == {"circle": 33.0, "star": 53.0}
    # share of the gap closed: (52 - 43) / (60 - 43)
    assert report["gap_closed"]["synthetic_source_test"]["lossmix"] == pytest.approx(9 / 17, abs=1e-12)
    assert report["gap_closed"]["synthetic_source_test"]["none"] == 0.0
    assert report["gap_closed"]["synthetic_source_test"]["oracle"] == 1.0
    # curves: the mid-training eval at 2 and the final result at MAX_ITER 4
    curve = report["curves"]["synthetic_source_test"]["lossmix"]
    assert curve["iterations"] == [2, 4] and curve["mean"] == [26.0, 52.0] and curve["n"] == [3, 3]
    assert curve["std"][0] == pytest.approx(1.0, abs=1e-12)
    assert "synthetic_source_train" not in report["curves"]  # never evaluated during training
    assert report["train_seconds"]["total"] == pytest.approx(2 * (10 + 11 + 12) + 15.0)
    assert [r["seed"] for r in report["runs"]["none"]] == [0, 1, 2]

    written = bm.write_report(report, str(tmp_path / "docs"))
    assert [os.path.basename(p) for p in written] == ["proto.md", "proto.png", "proto.json", "proto_curves.png"]
    md = (tmp_path / "docs" / "proto.md").read_text()
    assert ("| entry | synthetic_source_test | synthetic_source_train (train-split AP) | gap closed: synthetic_source_test "
            "| train s / run |") in md
    assert "| none | 43.0 ±3.6 (n=3) | 73.0 ±3.6 (n=3) | 0% | 11 |" in md
    assert "| lossmix | 52.0 ±2.0 (n=3) | 82.0 ±2.0 (n=3) | 53% | 11 |" in md
    assert "| oracle | 60.0 (n=1) | 90.0 (n=1) | 100% | 15 |" in md
    assert "python tools/benchmark.py proto" in md
    saved = json.loads((tmp_path / "docs" / "proto.json").read_text())
    assert saved["summary"]["synthetic_source_test"]["oracle"]["std"] is None  # NaN -> null
    assert saved["runs"]["lossmix"][1]["results"]["synthetic_source_test"]["AP50"] == 54.0
    for png in ("proto.png", "proto_curves.png"):
        assert (tmp_path / "docs" / png).read_bytes()[:8] == PNG_MAGIC


def test_report_refuses_to_pool_runs_with_different_configs(tmp_path):
    proto, specs = _complete_protocol(tmp_path)
    # seed 1 of "none" rewritten as if trained with another alpha: not the same experiment
    path = os.path.join(specs[1].output_dir, "config.yaml")
    cfg = yaml.safe_load(open(path))
    cfg["LOSSMIX"]["ALPHA"] = 0.5
    yaml.safe_dump(cfg, open(path, "w"))
    runs = [load_run(s.output_dir, group_by="parent") for s in specs[:3]]
    with pytest.raises(ValueError, match=r"refusing to pool .*seed0 and .*seed1 into 'none'.*LOSSMIX.ALPHA: 1.0 vs 0.5"):
        check_poolable(runs)
    with pytest.raises(ValueError, match="refusing to pool"):  # the report runs the same check
        bm.build_report(proto, specs)
    assert bm.plan(proto, str(tmp_path / "out"))[1].state == "changed"  # and a new plan would not reuse it


def test_da_results_give_teacher_and_student_tables(tmp_path):
    proto = bm.load_protocol(_protocol(tmp_path, "SEEDS: [0, 1]\nENTRIES:\n  - {NAME: at, CONFIG: CONFIG_FILE}\n"))
    specs = bm.plan(proto, str(tmp_path / "out"))
    for spec, (t, s) in zip(specs, ((30.0, 20.0), (34.0, 22.0))):
        _fake_run(spec, {"synthetic_source_test": {"teacher": {"AP50": t, "per_class": {}},
                                                   "student": {"AP50": s, "per_class": {}}}})
    report = bm.build_report(proto, bm.plan(proto, str(tmp_path / "out")))
    assert report["summary"]["synthetic_source_test"]["at"]["mean"] == 32.0  # the teacher, as compare reads it
    assert report["roles"]["student"]["synthetic_source_test"]["at"]["mean"] == 21.0
    assert report["runs"]["at"][0]["student"]["synthetic_source_test"]["AP50"] == 20.0
    assert "## Student model" in bm.to_markdown(report)


def test_every_shipped_protocol_loads_and_plans(tmp_path, monkeypatch):
    """configs/benchmark/*.yaml parse and each entry's config (with its overrides) builds and validates."""
    monkeypatch.chdir(REPO)  # protocols name configs relative to the repository root
    folder = os.path.join(REPO, "configs", "benchmark")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".yaml"))
    assert "smoke.yaml" in names
    for name in names:
        proto = bm.load_protocol(os.path.join(folder, name))
        specs = bm.plan(proto, str(tmp_path / "out"))
        assert {s.state for s in specs} == {"fresh"} and len(specs) == sum(len(e.seeds) for e in proto.entries)


def test_eta():
    assert bm.eta_seconds([100.0, 200.0], waiting=3, running_fractions=[], jobs=1) == 450.0
    assert bm.eta_seconds([100.0], waiting=2, running_fractions=[(40.0, 0.5)], jobs=2) == (200 + 60) / 2
    # nothing finished yet: a run half done after 40 s is an 80 s run
    assert bm.eta_seconds([], waiting=1, running_fractions=[(40.0, 0.5)], jobs=1) == 80 + 40
    assert bm.eta_seconds([], waiting=1, running_fractions=[(5.0, 0.0)], jobs=1) is None


def test_tool_end_to_end(tmp_path):
    """Two 2-iteration runs through tools/benchmark.py, then a second call that trains nothing."""
    from lossmix.data.synthetic import generate

    generate(str(tmp_path / "datasets" / "synthetic"), seed=0, num_train=4, num_test=2, image_size=64,
             domains=("source",))
    config = _config_file(tmp_path, **{"SOLVER.MAX_ITER": 2, "SOLVER.STEPS": (1,), "SOLVER.WARMUP_ITERS": 1,
                                       "SOLVER.CHECKPOINT_PERIOD": 1, "TEST.EVAL_PERIOD": 1})
    proto = tmp_path / "e2e.yaml"
    proto.write_text(f"SEEDS: [0]\nENTRIES:\n  - {{NAME: none, CONFIG: {config}}}\n"
                     f"  - {{NAME: uniform, CONFIG: {config}, OVERRIDES: [LOSSMIX.MODE, uniform]}}\n")
    env = dict(os.environ, LOSSMIX_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), str(proto), "--output-root",
           str(tmp_path / "out"), "--report-dir", str(tmp_path / "docs"), "--jobs", "2", "--threads", "1"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2/2 runs done" in first.stdout and "ETA" in first.stdout
    report = json.loads((tmp_path / "docs" / "e2e.json").read_text())
    assert set(report["summary"]["synthetic_source_test"]) == {"none", "uniform"}
    assert report["runs"]["none"][0]["iterations"] == 2 and report["machine"]["threads"] == [1]
    assert report["curves"]["synthetic_source_test"]["none"]["iterations"] == [1, 2]
    again = subprocess.run(cmd + ["--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "2 runs (2 complete)" in again.stdout


CHAIN = """
SEEDS: [0, 1]
ENTRIES:
  - {NAME: source_only, CONFIG: CONFIG_FILE, SHARED_WITH: supervised}
  - {NAME: at, CONFIG: CONFIG_FILE, INIT_FROM: source_only}
"""


def test_shared_runs_and_init_from_plan(tmp_path):
    proto = bm.load_protocol(_protocol(tmp_path, CHAIN, name="adaptation"))
    out = str(tmp_path / "out")
    specs = {(s.entry, s.seed): s for s in bm.plan(proto, out)}
    shared = os.path.join(out, "supervised", "source_only", "seed1")
    assert specs["source_only", 1].output_dir == shared and specs["source_only", 1].after is None
    at = specs["at", 1]
    assert at.output_dir == os.path.join(out, "adaptation", "at", "seed1") and at.after == shared
    weights = at.opts[at.opts.index("MODEL.WEIGHTS") + 1]
    assert weights == os.path.join(shared, "model_final.pth")


@pytest.mark.parametrize("text, message", [
    ("SEEDS: [0]\nENTRIES:\n  - {NAME: at, CONFIG: CONFIG_FILE, INIT_FROM: later}\n"
     "  - {NAME: later, CONFIG: CONFIG_FILE}\n", "not the NAME of an earlier entry"),
    ("ENTRIES:\n  - {NAME: a, CONFIG: CONFIG_FILE, SEEDS: [0]}\n"
     "  - {NAME: b, CONFIG: CONFIG_FILE, SEEDS: [0, 1], INIT_FROM: a}\n", r"lacks seeds \[1\]"),
    ("SEEDS: [0]\nENTRIES:\n  - {NAME: a, CONFIG: CONFIG_FILE}\n  - {NAME: b, CONFIG: CONFIG_FILE, INIT_FROM: a,"
     " OVERRIDES: [MODEL.WEIGHTS, x.pth]}\n", "both INIT_FROM and MODEL.WEIGHTS"),
    ("SEEDS: [0]\nENTRIES:\n  - {NAME: a, CONFIG: CONFIG_FILE, SHARED_WITH: ../x}\n", "SHARED_WITH must be"),
])
def test_init_from_and_shared_with_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(bm.ProtocolError, match=message):
        bm.load_protocol(_protocol(tmp_path, text))


def test_a_run_waits_for_the_run_it_starts_from(tmp_path):
    """With two jobs, 'at' must not start before 'source_only' of its seed has finished (a fake train_net)."""
    fake = tmp_path / "fake_train_net.py"
    fake.write_text(
        "import os, sys, time\n"
        "out = sys.argv[sys.argv.index('OUTPUT_DIR') + 1]\n"
        "with open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(out))), 'events'), 'a') as f:\n"
        "    f.write(f'start {out}\\n'); f.flush(); time.sleep(0.5); f.write(f'end {out}\\n')\n")
    proto = bm.load_protocol(_protocol(tmp_path, CHAIN.replace("SEEDS: [0, 1]", "SEEDS: [0]"), name="adaptation"))
    out = str(tmp_path / "out")
    bm.execute(bm.plan(proto, out), jobs=2, train_net=str(fake), log=lambda _: None)
    events = [line.split()[0] + " " + line.split()[1].split(os.sep)[-2]
              for line in (tmp_path / "out" / "events").read_text().splitlines()]
    assert events == ["start source_only", "end source_only", "start at", "end at"]


def test_claim_verdicts_on_hand_computed_spreads():
    # means 33 vs 30, sample stds 1 and 1, n 3 and 3: se = sqrt(1/3 + 1/3) = 0.8165, 2 se = 1.633 < 3
    v = bm.claim_verdict([32.0, 33.0, 34.0], [29.0, 30.0, 31.0])
    assert v["verdict"] == "holds" and v["difference"] == pytest.approx(3.0) and v["se"] == pytest.approx(0.8165, abs=1e-4)
    assert bm.claim_verdict([29.0, 30.0, 31.0], [32.0, 33.0, 34.0])["verdict"] == "does not hold"
    assert bm.claim_verdict([30.0, 32.0, 34.0], [29.0, 30.0, 31.0])["verdict"] == "within the spread"  # 1 < 2 * 1.29
    assert bm.claim_verdict([35.0], [30.0, 31.0])["verdict"] == "not judged (n = 1)"
    assert bm.claim_verdict([], [30.0])["verdict"] == "missing runs"


def test_claims_are_judged_in_the_report(tmp_path):
    text = PROTO.replace("ENTRIES:", 'CLAIMS:\n  - {CLAIM: "LossMix > none", BETTER: lossmix, THAN: none, '
                                     'DATASET: synthetic_source_test}\nENTRIES:')
    proto = bm.load_protocol(_protocol(tmp_path, text))
    specs = bm.plan(proto, str(tmp_path / "out"))
    for spec in specs:
        ap = {"none": 30.0, "lossmix": 33.0, "oracle": 50.0}[spec.entry] + spec.seed - 1
        _fake_run(spec, {"synthetic_source_test": ap})
    report = bm.build_report(proto, bm.plan(proto, str(tmp_path / "out")))
    (claim,) = report["claims"]
    assert claim["verdict"] == "holds" and claim["better_mean"] == 33.0 and claim["than_mean"] == 30.0
    assert "| LossMix > none | synthetic_source_test | 33.0 vs 30.0 | +3.0 ± 0.8 | 3 vs 3 | **holds** |" in bm.to_markdown(report)
    with pytest.raises(bm.ProtocolError, match=r"CLAIMS\[0\].THAN = 'nope' is not an entry NAME"):
        bm.load_protocol(_protocol(tmp_path, text.replace("THAN: none", "THAN: nope")))


def test_init_from_runs_pool_over_their_per_seed_weights(tmp_path):
    proto = bm.load_protocol(_protocol(tmp_path, CHAIN, name="adaptation"))
    out = str(tmp_path / "out")
    for spec in bm.plan(proto, out):
        _fake_run(spec, {"synthetic_source_test": 30.0 + spec.seed + (5 if spec.entry == "at" else 0)})
    report = bm.build_report(proto, bm.plan(proto, out))
    assert report["summary"]["synthetic_source_test"]["at"]["values"] == [35.0, 36.0]


def test_report_with_only_changed_runs_points_at_rerun_changed(tmp_path):
    proto = bm.load_protocol(_protocol(tmp_path, PROTO))
    root = str(tmp_path / "out")
    lossmix0 = next(s for s in bm.plan(proto, root) if s.entry == "lossmix" and s.seed == 0)
    _fake_run(lossmix0, {"synthetic_source_test": 40.0}, config_edit=lambda c: c["LOSSMIX"].update(ALPHA=4.0))
    specs = bm.plan(proto, root)
    with pytest.raises(FileNotFoundError, match=r"\(6 to train, 1 trained with another config: rerun with "
                                                r"--rerun-changed to retrain them"):
        bm.build_report(proto, specs)


def test_adaptation_runs_are_drawn_over_adaptation_iterations_with_their_pseudo_labels(tmp_path):
    """An Adaptive-Teacher entry started from a supervised one: its teacher / student curves start at adaptation
    iteration 0 with the starting model's result, apart from the supervised curves; pseudo-label metrics from
    metrics.jsonl pooled over seeds, tabled at the first and last row."""
    da = '["DA.ENABLED", "True", "DATASETS.TRAIN_UNLABELED", "(\'synthetic_source_train\',)", "DA.BURN_IN_ITERS", "0"]'
    proto = bm.load_protocol(_protocol(tmp_path, f"""
SEEDS: [0, 1]
OVERRIDES: ["SOLVER.MAX_ITER", "4"]
ENTRIES:
  - {{NAME: src, CONFIG: CONFIG_FILE}}
  - {{NAME: at, CONFIG: CONFIG_FILE, INIT_FROM: src, OVERRIDES: {da}}}
"""))
    specs = bm.plan(proto, str(tmp_path / "out"))
    test = "synthetic_source_test"
    for spec in specs:
        k = spec.seed
        if spec.entry == "src":
            _fake_run(spec, {test: 10.0 + k}, curve={2: {test: 5.0}})
            continue
        _fake_run(spec, {test: {"teacher": {"AP50": 20.0 + k, "per_class": {}},
                                "student": {"AP50": 16.0 + k, "per_class": {}}}})
        rows = [{"iteration": 2, "total_loss": 1.0, "pseudo_labels_per_image": 1.0 + k, "pseudo_precision": 0.5,
                 "pseudo_precision_box": 0.6, "pseudo_recall": 0.2 + 0.1 * k, "pseudo_images_without_labels": 0.5},
                {"iteration": 2, "eval": {test: {"teacher": {"AP50": 12.0 + 2 * k}, "student": {"AP50": 11.0}}}},
                {"iteration": 4, "total_loss": 1.0, "pseudo_labels_per_image": 2.0, "pseudo_precision": 0.75,
                 "pseudo_precision_box": 0.9, "pseudo_recall": 0.4, "pseudo_images_without_labels": 0.0},
                {"iteration": 4, "summary": {"iterations": 4, "seconds": 3.0}}]
        with open(os.path.join(spec.output_dir, "metrics.jsonl"), "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
    report = bm.build_report(proto, bm.plan(proto, str(tmp_path / "out")))
    assert set(report["curves"][test]) == {"src"}  # no adaptation run on the supervised axis
    teacher, student = report["adaptation_curves"][test]["at/teacher"], report["adaptation_curves"][test]["at/student"]
    # 0: the src run each started from (10, 11); 2: the evaluation during adaptation; 4: the final result
    assert teacher["iterations"] == [0, 2, 4] and teacher["mean"] == [10.5, 13.0, 20.5]
    assert student["iterations"] == [0, 2, 4] and student["mean"] == [10.5, 11.0, 16.5]
    assert teacher["n"] == [2, 2, 2]
    pseudo = report["pseudo_label_curves"]
    assert pseudo["pseudo_recall"]["at"]["iterations"] == [2, 4]
    assert pseudo["pseudo_recall"]["at"]["mean"] == pytest.approx([0.25, 0.4])
    assert pseudo["pseudo_labels_per_image"]["at"]["mean"] == [1.5, 2.0] and "src" not in pseudo["pseudo_recall"]
    md = bm.to_markdown(report)
    assert "| at | 2 (2–4) | 1.50 → 2.00 | 50% → 0% | 50% → 75% | 60% → 90% | 25% → 40% |" in md
    written = bm.write_report(report, str(tmp_path / "docs"))
    assert os.path.basename(written[-1]) == "proto_adaptation.png"
    assert open(written[-1], "rb").read()[:8] == PNG_MAGIC


def test_gap_closed_with_an_oracle_per_target_domain():
    """GAP.ORACLE may name each dataset's own oracle: the share is taken against it, and a dataset it does not
    name gets NaN (never the other domain's oracle)."""
    from lossmix.benchmark.compare import MethodSummary

    def rows(dataset, means):
        return [MethodSummary(method=m, dataset=dataset, ap_values=[v], ap_mean=v, ap_std=float("nan"),
                              per_class={}, evaluated="model", runs=[]) for m, v in means.items()]

    summary = {"clip": rows("clip", {"src": 20.0, "at": 30.0, "oracle_clip": 60.0}),
               "water": rows("water", {"src": 10.0, "at": 12.0, "oracle_water": 50.0}),
               "other": rows("other", {"src": 10.0, "at": 12.0})}
    gap = bm.gap_closed(summary, "src", {"clip": "oracle_clip", "water": "oracle_water"})
    assert gap["clip"]["at"] == pytest.approx(10 / 40) and gap["water"]["at"] == pytest.approx(2 / 40)
    assert math.isnan(gap["other"]["at"])
    assert bm.gap_closed(summary, "src", "oracle_clip")["clip"]["at"] == pytest.approx(10 / 40)
