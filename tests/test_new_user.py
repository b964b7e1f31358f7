"""Issue 11: what a new user hit. Each test names the issue's item number (item1 ... item12)."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from lossmix.config.setup import ConfigError, build_config
from lossmix.data.catalog import DatasetCatalog
from lossmix.data.errors import BadSampleError
from lossmix.data.image_io import read_image
from lossmix.data.synthetic import SYNTHETIC_CLASSES, generate
from lossmix.data.voc import parse_voc_xml
from lossmix.engine import checkpoint
from lossmix.engine.checkpoint import Checkpointer
from lossmix.engine.defaults import setup
from lossmix.engine.run import run as train
from lossmix.engine.checkpoint import load_weights

# Names added by issue 11 are looked up inside the tests, so that on the old code each test fails on its own.

from .helpers import REPO, make_tiny_dataset, tiny_cfg, tiny_opts


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_tool_issue11", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("issue11") / "data", num_train=4, num_test=2)


def _rows(path):
    return [json.loads(line) for line in open(path)]


# ------------------------------------------------------------------ item 1: resume


def _checkpointer(folder, **modules):
    model = torch.nn.Linear(2, 2)
    return Checkpointer(str(folder), keep=5, model=model, **modules), model


def test_item1_resume_skips_a_missing_last_checkpoint(tmp_path):
    ckpt, _ = _checkpointer(tmp_path)
    ckpt.save("model_0000003", 3)
    ckpt.save("model_final", 6)
    os.remove(tmp_path / "model_final.pth")  # the user deleted the broken newest checkpoint
    assert ckpt.resume() == 3  # was: silently iteration 0


def test_item1_damaged_newest_checkpoint_is_moved_aside_and_named(tmp_path, caplog):
    ckpt, _ = _checkpointer(tmp_path)
    ckpt.save("model_0000003", 3)
    ckpt.save("model_0000006", 6)
    data = (tmp_path / "model_0000006.pth").read_bytes()
    (tmp_path / "model_0000006.pth").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        assert ckpt.resume() == 3
    assert (tmp_path / "model_0000006.pth.damaged").read_bytes() == data[: len(data) // 2]  # kept, renamed
    assert not (tmp_path / "model_0000006.pth").exists()
    assert any("model_0000006.pth does not load" in r.getMessage() and "truncated or corrupt" in r.getMessage()
               for r in caplog.records)


def test_item1_no_loadable_checkpoint_in_a_run_folder_stops(tmp_path):
    ckpt, _ = _checkpointer(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\n')
    (tmp_path / "model_final.pth").write_text("garbage")
    with pytest.raises(checkpoint.ResumeError, match="no loadable checkpoint in .*--allow-fresh"):
        ckpt.resume()
    assert ckpt.resume(allow_fresh=True) == 0
    empty, _ = _checkpointer(tmp_path / "new")
    assert empty.resume() == 0  # a new run folder: --resume simply starts


def test_item1_metrics_rows_never_go_backwards(tmp_path):
    from lossmix.engine.trainer import drop_rows_after

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iteration": i, "total_loss": i}) + "\n" for i in (1, 2, 3, 4)) + '{"itera')
    assert drop_rows_after(str(path), 2) == 3  # rows 3, 4 and the line cut by a kill
    assert [r["iteration"] for r in _rows(path)] == [1, 2]
    assert [json.loads(line).get("iteration") for line in open(tmp_path / "metrics.dropped.jsonl")
            if line.startswith('{"iteration": ')] == [3, 4]


def test_item1_train_resumes_from_the_previous_checkpoint(names, tmp_path):
    out = tmp_path / "run"
    opts = {"SOLVER.MAX_ITER": 4, "SOLVER.CHECKPOINT_PERIOD": 2, "DATASETS.TEST": ()}
    train(tiny_cfg(names, out, **opts))
    os.remove(out / "model_final.pth")
    result = train(tiny_cfg(names, out, **opts), resume=True)
    assert result["summary"]["iterations"] == 2  # from model_0000002, not from 0
    iterations = [r["iteration"] for r in _rows(out / "metrics.jsonl")]
    assert iterations == sorted(iterations) and iterations.count(3) == 1


# ------------------------------------------------------------------ item 2: weights


@pytest.mark.parametrize("config", ["faster_rcnn_r50_baseline.yaml", "faster_rcnn_r50_lossmix.yaml",
                                    "voc2clipart/faster_rcnn_r101_at_lossmix.yaml",
                                    "voc2watercolor/faster_rcnn_r50_at.yaml"])
def test_item2_configs_that_need_pretrained_weights_say_so(config):
    from lossmix.engine.checkpoint import require_weights

    cfg = build_config(os.path.join(REPO, "configs", config))
    arch = "resnet101" if "r101" in config else "resnet50"
    with pytest.raises(ConfigError, match=rf"MODEL.WEIGHTS is empty.*torchvision.models.{arch}\(weights='IMAGENET1K_V1'\)"):
        require_weights(cfg)
    with pytest.raises(ConfigError, match="MODEL.WEIGHTS is empty"):
        train(cfg)  # before anything is built or written


def test_item2_eval_only_without_weights_is_an_error(names, tmp_path):
    from lossmix.engine.checkpoint import require_weights

    cfg = tiny_cfg(names, tmp_path)
    require_weights(cfg)  # BN, every stage trained: from scratch is fine
    with pytest.raises(ConfigError, match="--eval-only needs MODEL.WEIGHTS"):
        require_weights(cfg, eval_only=True)
    require_weights(build_config(os.path.join(REPO, "configs", "quickstart", "synthetic_lossmix.yaml")))


# ------------------------------------------------------------------ item 3: classes


def test_item3_num_classes_checked_against_the_dataset(names, tmp_path):
    from lossmix.data.catalog import check_num_classes

    for wrong in (3, 9):
        cfg = tiny_cfg(names, tmp_path, **{"MODEL.ROI_HEADS.NUM_CLASSES": wrong})
        message = (f"MODEL.ROI_HEADS.NUM_CLASSES = {wrong} but dataset '{names['source_train']}' has 6 classes "
                   f"\\({', '.join(SYNTHETIC_CLASSES)}\\); set MODEL.ROI_HEADS.NUM_CLASSES 6")
        with pytest.raises(ConfigError, match=message):
            train(cfg)
    check_num_classes(6, [names["source_train"], names["source_test"]])


# ------------------------------------------------------------------ item 4: skip covers annotations


def _break_xml(root, image_id, text):
    (root / "Annotations" / f"{image_id}.xml").write_text(text)
    return str(root / "Annotations" / f"{image_id}.xml")


def test_item4_skip_leaves_bad_annotation_files_out_and_logs_them(tmp_path):
    generate(str(tmp_path / "d"), seed=0, num_train=4, num_test=2, image_size=96, domains=("source",))
    root = tmp_path / "d" / "source"
    ids = (root / "ImageSets" / "Main" / "train.txt").read_text().split()
    xml = (root / "Annotations" / f"{ids[0]}.xml").read_text()
    typo = _break_xml(root, ids[0], xml.replace("<name>", "<name>Kat", 1))
    hostile = _break_xml(root, ids[1], '<!DOCTYPE a [<!ENTITY x "y">]><annotation>&x;</annotation>')
    names = {"source_train": "issue11_skip_train", "source_test": "issue11_skip_test"}
    from lossmix.data.voc import register_voc

    for split in ("train", "test"):
        if f"issue11_skip_{split}" not in DatasetCatalog:
            register_voc(f"issue11_skip_{split}", str(root), split, SYNTHETIC_CLASSES)
    with pytest.raises(BadSampleError, match="unknown class"):
        train(tiny_cfg(names, tmp_path / "err", **{"SOLVER.MAX_ITER": 1, "DATASETS.TEST": ()}))
    out = tmp_path / "skip"
    result = train(tiny_cfg(names, out, **{"SOLVER.MAX_ITER": 1, "DATASETS.TEST": (),
                                           "DATALOADER.ON_BAD_SAMPLE": "skip"}))
    rows = _rows(out / "bad_samples.jsonl")
    assert {(r["file"], r["kind"], r["stage"]) for r in rows} == {(typo, "unknown_class", "train"),
                                                                  (hostile, "hostile_xml", "train")}
    assert result["summary"]["skipped_bad_samples"] == 2  # files


def test_item4_test_time_bad_image_policy(names, tmp_path):
    from lossmix.data.catalog import MetadataCatalog
    from lossmix.engine.inference import evaluate_dataset
    from lossmix.modeling.build import build_detector

    meta = MetadataCatalog.get(names["source_test"])
    dicts = DatasetCatalog.get(names["source_test"])
    jpg = dicts[0]["file_name"]
    backup = open(jpg, "rb").read()
    try:
        open(jpg, "wb").write(backup[: len(backup) // 2])
        cfg = tiny_cfg(names, tmp_path)
        model = build_detector(cfg)
        with pytest.raises(BadSampleError, match="truncated JPEG"):
            evaluate_dataset(cfg, model, names["source_test"], torch.device("cpu"))
        cfg = tiny_cfg(names, tmp_path, **{"TEST.ON_BAD_SAMPLE": "skip"})
        result = evaluate_dataset(cfg, model, names["source_test"], torch.device("cpu"))
        assert result["num_images"] == len(dicts)  # still scored: the bad image's boxes count as misses
        assert [(r["file"], r["stage"]) for r in _rows(tmp_path / "bad_samples.jsonl")] == [(jpg, "test")]
    finally:
        open(jpg, "wb").write(backup)
    assert meta.thing_classes == list(SYNTHETIC_CLASSES)


# ------------------------------------------------------------------ items 5, 6: eval-only records, visibility


def test_item5_item6_eval_only_has_its_own_folder_a_bar_and_a_log(names, tmp_path, capsys):
    from lossmix.evaluation import format_table
    from lossmix.modeling.build import build_detector

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text("training config\n")
    (run / "eval" / f"{names['source_test']}.json").write_text('{"AP50": 12.5}')
    cfg = tiny_cfg(names, run)
    Checkpointer(str(run), model=build_detector(cfg)).save("model_final", 6)
    tool = _load_tool("train_net")
    args = tool.parse_args(tiny_opts(names, run) + ["--eval-only", "MODEL.WEIGHTS", str(run / "model_final.pth")])
    results = tool.main(args)
    assert (run / "config.yaml").read_text() == "training config\n"
    assert json.load(open(run / "eval" / f"{names['source_test']}.json")) == {"AP50": 12.5}
    own = run / "eval_only" / "model_final"
    assert json.load(open(own / "eval" / f"{names['source_test']}.json")) == results[names["source_test"]]
    assert "model_final.pth" in (own / "config.yaml").read_text()
    log = (own / "log.txt").read_text()
    assert f"evaluating {names['source_test']}: 2 images" in log and f"{names['source_test']}: AP50" in log
    assert f"eval {names['source_test']}" in capsys.readouterr().err  # the tqdm bar
    assert "AP50 (%, area)" in format_table(results[names["source_test"]]["model"])


# ------------------------------------------------------------------ item 7: your own dataset


def test_item7_custom_voc_folder_from_the_config(tmp_path, capsys):
    generate(str(tmp_path / "mine"), seed=1, num_train=2, num_test=2, image_size=96, domains=("source",))
    folder = tmp_path / "mine" / "source"
    opts = ["DATASETS.CUSTOM_VOC", f"('pets_train:{folder}:train', 'pets_test:{folder}:test')",
            "DATASETS.CUSTOM_CLASSES", repr(tuple(SYNTHETIC_CLASSES)), "DATASETS.CUSTOM_METRIC", "voc07"]
    (tmp_path / "mine.yaml").write_text(
        "DATASETS:\n  CUSTOM_VOC: ['pets_train:%s:train', 'pets_test:%s:test']\n  CUSTOM_CLASSES: %s\n"
        "  TRAIN: ('pets_train',)\n  TEST: ('pets_test',)\n" % (folder, folder, json.dumps(list(SYNTHETIC_CLASSES))))
    assert _load_tool("check_dataset").main(["--config-file", str(tmp_path / "mine.yaml"), "--no-images"]) == 0
    printed = capsys.readouterr().out
    assert "== pets_train" in printed and "== pets_test" in printed
    names = {"source_train": "pets_train", "source_test": "pets_test"}
    cfg = setup("", tiny_opts(names, tmp_path / "out", **{"SOLVER.MAX_ITER": 1}) + opts)
    result = train(cfg)
    assert result["results"]["pets_test"]["model"]["metric"] == "voc07_11point"
    assert len(DatasetCatalog.get("pets_train")) == 2


# ------------------------------------------------------------------ item 8: bad weights files


def test_item8_bad_weights_files_get_one_line_naming_the_file(tmp_path):
    text, listed, cut = tmp_path / "w.txt", tmp_path / "list.pth", tmp_path / "cut.pth"
    text.write_text("these are not weights\n")
    torch.save([1, 2, 3], listed)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, cut)
    cut.write_bytes(cut.read_bytes()[:2000])
    model = torch.nn.Linear(1, 1)
    for path, what in ((text, "not a PyTorch file"), (listed, "holds a list, expected a state dict"),
                       (cut, "truncated or corrupt PyTorch archive")):
        with pytest.raises(ValueError) as err:
            load_weights(model, str(path))
        assert str(err.value).startswith(f"MODEL.WEIGHTS '{path}': ") and what in str(err.value)
        assert "\n" not in str(err.value) and type(err.value).__name__ == "UnreadableFileError"


# ------------------------------------------------------------------ item 9: config values and --resume


def test_item9_ints_for_float_keys_and_the_range_check(tmp_path):
    cfg = build_config("", ["LOSSMIX.ALPHA", "2", "SOLVER.BASE_LR", "1", "LOSSMIX.NOISE_RANGE", "(0, 1)"])
    assert cfg.LOSSMIX.ALPHA == 2.0 and isinstance(cfg.LOSSMIX.ALPHA, float) and cfg.SOLVER.BASE_LR == 1.0
    assert cfg.LOSSMIX.NOISE_RANGE == (0.0, 1.0)
    (tmp_path / "a.yaml").write_text("LOSSMIX:\n  ALPHA: 2\nSOLVER:\n  BASE_LR: 1\n")
    cfg = build_config(str(tmp_path / "a.yaml"))
    assert isinstance(cfg.LOSSMIX.ALPHA, float) and cfg.LOSSMIX.ALPHA == 2.0
    with pytest.raises(ConfigError, match=r"LOSSMIX.ALPHA = -1.0; allowed: > 0"):
        build_config("", ["LOSSMIX.ALPHA", "-1"])
    with pytest.raises(ValueError, match="Type mismatch"):
        build_config("", ["SOLVER.MAX_ITER", "1.5"])  # floats for int keys stay refused


def test_item9_trailing_options_are_not_swallowed_as_overrides():
    tool = _load_tool("train_net")
    args = tool.parse_args(["--config-file", "x.yaml", "SOLVER.MAX_ITER", "10", "--resume", "--num-gpus", "2",
                            "LOSSMIX.ALPHA", "-1"])
    assert args.resume and args.num_gpus == 2 and args.config_file == "x.yaml"
    assert args.opts == ["SOLVER.MAX_ITER", "10", "LOSSMIX.ALPHA", "-1"]
    with pytest.raises(ConfigError, match="'--resum' among the KEY VALUE overrides is not a config key"):
        build_config("", ["SOLVER.MAX_ITER", "10", "--resum", "x"])


# ------------------------------------------------------------------ item 10: bare config names


def test_item10_bare_config_names_resolve_under_configs():
    from lossmix.config.setup import resolve_config_path

    assert resolve_config_path("faster_rcnn_r50_lossmix.yaml") == os.path.join(REPO, "configs",
                                                                                "faster_rcnn_r50_lossmix.yaml")
    assert resolve_config_path("synthetic_lossmix").endswith(os.path.join("configs", "quickstart",
                                                                          "synthetic_lossmix.yaml"))
    with pytest.raises(FileNotFoundError, match=r"did you mean configs/faster_rcnn_r50_lossmix.yaml"):
        resolve_config_path("faster_rcnn_r50_losmix.yaml")
    with pytest.raises(FileNotFoundError, match="could be any of .*voc2clipart/faster_rcnn_r50_at.yaml.*voc2watercolor"):
        resolve_config_path("faster_rcnn_r50_at.yaml")
    assert build_config("faster_rcnn_r50_lossmix.yaml").LOSSMIX.MODE == "lossmix"


# ------------------------------------------------------------------ item 11: VOC quirks (AP levels: test_evaluation)


def _jpeg(tmp_path, name, tail=b""):
    ok, encoded = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    (tmp_path / name).write_bytes(encoded.tobytes() + tail)
    return tmp_path / name, encoded.tobytes()


def test_item11_jpeg_with_a_trailer_is_read_and_truncation_still_refused(tmp_path):
    path, data = _jpeg(tmp_path, "motion.jpg", b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    assert read_image(path).shape == (32, 48, 3)
    for cut in (len(data) - 2, len(data) * 2 // 3):
        (tmp_path / "cut.jpg").write_bytes(data[:cut] + b"\x00" * 50)
        with pytest.raises(BadSampleError, match="truncated JPEG"):
            read_image(tmp_path / "cut.jpg")


def test_item11_image_path_from_the_id_and_odd_truncated_flags(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    _jpeg(tmp_path / "JPEGImages", "000001.jpg")
    xml = tmp_path / "Annotations" / "000001.xml"
    xml.write_text("<annotation><filename>IMG_1234.JPG</filename><size><width>48</width><height>32</height></size>"
                   "<object><name>cat</name><truncated>2</truncated><bndbox><xmin>1</xmin><ymin>1</ymin>"
                   "<xmax>10</xmax><ymax>10</ymax></bndbox></object></annotation>")
    record = parse_voc_xml(xml, ["cat"])
    assert record["file_name"] == str(tmp_path / "JPEGImages" / "000001.jpg")  # not the stale IMG_1234.JPG
    assert record["annotations"][0]["bbox"] == [0.0, 0.0, 10.0, 10.0] and "truncated" not in record["annotations"][0]
    os.remove(tmp_path / "JPEGImages" / "000001.jpg")
    _jpeg(tmp_path / "JPEGImages", "IMG_1234.JPG")
    assert parse_voc_xml(xml, ["cat"])["file_name"] == str(tmp_path / "JPEGImages" / "IMG_1234.JPG")


def test_item11_recall_levels_key_reaches_the_evaluator(names, tmp_path):
    from lossmix.engine.inference import build_evaluator

    assert not build_evaluator(tiny_cfg(names, tmp_path), names["source_test"])._exact_recall_levels
    cfg = tiny_cfg(names, tmp_path, **{"TEST.VOC07_RECALL_LEVELS": "exact"})
    assert build_evaluator(cfg, names["source_test"])._exact_recall_levels


# ------------------------------------------------------------------ item 12: one-line errors, -h, DDP loss mean


def test_item12_user_mistakes_print_one_line(tmp_path, capsys):
    tool = _load_tool("train_net")
    args = tool.parse_args(["OUTPUT_DIR", str(tmp_path), "SOLVER.NOPE", "1"])
    with pytest.raises(SystemExit) as exit_info:
        tool.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: KeyError: unknown config key 'SOLVER.NOPE' (from the command line)\n")
    assert "Traceback" not in err
    with pytest.raises(KeyError):
        tool.main(tool.parse_args(["--debug", "SOLVER.NOPE", "1"]))


def test_item12_help_shows_defaults_for_every_option(capsys):
    tool = _load_tool("train_net")
    with pytest.raises(SystemExit):
        tool.parse_args(["-h"])
    options = " ".join(capsys.readouterr().out.split()).split("options:")[1]
    for option in ("--config-file", "--eval-only", "--resume", "--allow-fresh", "--num-gpus", "--debug"):
        assert option in options
    assert options.count("(default: ") == 6  # every option but -h has a help text, which shows its default


def _mean_worker(rank, out):
    import torch.distributed as dist

    from lossmix.utils import comm

    dist.init_process_group("gloo", init_method=f"file://{out}.init", rank=rank, world_size=2)
    try:
        mean = comm.mean_over_ranks({"total_loss": 1.0 + rank, "loss_a": 10.0 * rank}, torch.device("cpu"))
        with open(f"{out}.{rank}", "w") as f:
            json.dump(mean, f)
    finally:
        dist.destroy_process_group()


def test_item12_logged_losses_are_the_mean_over_ranks(tmp_path):
    torch.multiprocessing.spawn(_mean_worker, args=(str(tmp_path / "mean"),), nprocs=2)
    for rank in (0, 1):
        assert json.load(open(tmp_path / f"mean.{rank}")) == {"loss_a": 5.0, "total_loss": 1.5}


def test_item12_bad_sample_from_a_loader_worker_is_still_one_line(tmp_path):
    # torch re-raises a worker's error as type(err)(message); BadSampleError used to refuse one argument, which
    # turned it into a RuntimeError carrying the worker's whole traceback
    from torch.utils.data import DataLoader, Dataset

    from lossmix.utils.logger import one_line

    class Bad(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise BadSampleError("/data/x.jpg", "truncated JPEG", kind="corrupt_image")

    with pytest.raises(BadSampleError) as err:
        next(iter(DataLoader(Bad(), num_workers=1, collate_fn=list)))
    assert one_line(err.value) == "BadSampleError: /data/x.jpg: truncated JPEG"
