"""Bad samples during training, SIGKILL / SIGTERM and resume, same-seed determinism."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lossmix.data.catalog import DatasetCatalog
from lossmix.data.errors import BadSampleError
from lossmix.data.synthetic import SYNTHETIC_CLASSES, generate
from lossmix.engine.run import run as train

from .helpers import REPO, jsonl_rows, make_tiny_dataset, tiny_cfg, tiny_opts


@pytest.fixture()
def names(tmp_path):
    return make_tiny_dataset(tmp_path / "data", num_train=6, num_test=2)


def _losses(folder):
    rows = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]
    return {r["iteration"]: r["total_loss"] for r in rows if "total_loss" in r}


def _corrupt_one(tmp_path):
    jpg = sorted((tmp_path / "data" / "source" / "JPEGImages").glob("source_train_*.jpg"))[1]
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])  # truncated JPEG
    return jpg


def test_bad_sample_error_policy_names_the_file(names, tmp_path):
    jpg = _corrupt_one(tmp_path)
    with pytest.raises(BadSampleError, match=f"{jpg.name}.*"):
        train(tiny_cfg(names, tmp_path / "out", **{"SOLVER.MAX_ITER": 6, "DATASETS.TEST": ()}))


def test_bad_sample_skip_policy_logs_and_counts(names, tmp_path):
    jpg = _corrupt_one(tmp_path)
    out = tmp_path / "out"
    result = train(tiny_cfg(names, out, **{"SOLVER.MAX_ITER": 6, "DATASETS.TEST": (),
                                           "DATALOADER.ON_BAD_SAMPLE": "skip"}))
    rows = [json.loads(line) for line in open(out / "bad_samples.jsonl")]
    assert rows and all(r["file"] == str(jpg) and r["kind"] == "corrupt_image" for r in rows)
    # 6 iterations x 2 images = 12 positions over 6 images: the bad one is met twice, read and logged once (then
    # dropped: its draws take the next image without reading it again)
    assert len(rows) == 1 and result["summary"]["skipped_bad_samples"] == 1


def test_bad_sample_error_suggests_skip_and_check_dataset(names, tmp_path):
    _corrupt_one(tmp_path)
    with pytest.raises(BadSampleError, match=r"truncated JPEG.* \(DATALOADER.ON_BAD_SAMPLE skip leaves bad files out; "
                                             r"tools/check_dataset.py lists every bad file\)"):
        train(tiny_cfg(names, tmp_path / "out", **{"SOLVER.MAX_ITER": 6, "DATASETS.TEST": ()}))


def test_bad_sample_skip_drops_a_file_once_and_logs_it_once_across_a_resume(names, tmp_path):
    import numpy as np

    from lossmix.data.catalog import DatasetCatalog
    from lossmix.data.loader import TrainDataset
    from lossmix.data.mapper import LossMixDatasetMapper

    jpg = _corrupt_one(tmp_path)
    xml = tmp_path / "data" / "source" / "Annotations" / "source_train_00000.xml"
    xml.write_text("<annotation>")  # malformed: left out when the dataset is built
    out = tmp_path / "out"
    opts = {"SOLVER.MAX_ITER": 2, "DATASETS.TEST": (), "DATALOADER.ON_BAD_SAMPLE": "skip", "SOLVER.CHECKPOINT_PERIOD": 0}
    train(tiny_cfg(names, out, **opts))
    train(tiny_cfg(names, out, **{**opts, "SOLVER.MAX_ITER": 3}), resume=True)  # builds the dataset again
    rows = [json.loads(line) for line in open(out / "bad_samples.jsonl")]
    assert sorted((r["file"], r["kind"]) for r in rows) == [(str(xml), "malformed_xml"), (str(jpg), "corrupt_image")]

    cfg = tiny_cfg(names, tmp_path / "direct", **opts)
    dicts = DatasetCatalog.get(names["source_train"], on_bad="skip")
    reads = []
    mapper = LossMixDatasetMapper.from_config(cfg, is_train=True)
    load = mapper.load
    mapper.load = lambda d, rng: (reads.append(d["file_name"]), load(d, rng))[1]
    dataset = TrainDataset(dicts, mapper, seed=0, on_bad="skip")
    bad = next(i for i, d in enumerate(dicts) if d["file_name"] == str(jpg))
    first = dataset.load_index(bad, np.random.default_rng(0), 0)
    again = dataset.load_index(bad, np.random.default_rng(0), 1)
    assert reads.count(str(jpg)) == 1 and first["file_name"] == again["file_name"] == dicts[bad + 1]["file_name"]


def test_same_seed_runs_match_exactly(names, tmp_path):
    for run in ("a", "b"):
        train(tiny_cfg(names, tmp_path / run, **{"SOLVER.MAX_ITER": 4, "DATASETS.TEST": (),
                                                 "LOSSMIX.MODE": "lossmix", "LOSSMIX.METHOD": "cutmix"}))
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert a == b and len(a) == 4
    train(tiny_cfg(names, tmp_path / "c", **{"SOLVER.MAX_ITER": 4, "DATASETS.TEST": (), "SEED": 1,
                                             "LOSSMIX.MODE": "lossmix", "LOSSMIX.METHOD": "cutmix"}))
    assert _losses(tmp_path / "c") != a


def _train_cmd(names, out, **extra):
    # Evaluates at iteration 4, right after the checkpoint the kill lands behind: the resumed run must not see
    # whether the uninterrupted one evaluated there.
    opts = tiny_opts(names, out, **{"SOLVER.MAX_ITER": 8, "SOLVER.CHECKPOINT_PERIOD": 2, "TEST.EVAL_PERIOD": 4,
                                    "SOLVER.KEEP_CHECKPOINTS": 2, **extra})
    return [sys.executable, os.path.join(REPO, "tools", "train_net.py"), *opts]


def _wait_for(path, proc, timeout=180):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted subprocess run, shared by every signal: ``(env, names, its losses)``."""
    from lossmix.data.synthetic import generate

    root = tmp_path_factory.mktemp("reference")
    generate(str(root / "ds" / "synthetic"), num_train=6, num_test=2, image_size=96, domains=("source",))
    names = {"source_train": "synthetic_source_train", "source_test": "synthetic_source_test"}
    env = {**os.environ, "PYTHONPATH": REPO, "LOSSMIX_DATASETS": str(root / "ds")}
    ref = subprocess.run(_train_cmd(names, root / "ref"), env=env, capture_output=True, cwd=REPO)
    assert ref.returncode == 0, ref.stderr.decode()[-3000:]
    return env, names, _losses(root / "ref")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_with_the_same_losses(tmp_path, sig, reference):
    """Kill a training process mid-run, right after the checkpoint of an evaluation iteration; --resume continues
    from the last complete checkpoint and its next losses equal those of an uninterrupted run with the same seed."""
    env, names, ref_losses = reference

    def run(out, *flags):
        return subprocess.run(_train_cmd(names, out)[:2] + list(flags) + _train_cmd(names, out)[2:], env=env,
                              capture_output=True, cwd=REPO)

    out = tmp_path / "cut"
    proc = subprocess.Popen(_train_cmd(names, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=REPO)
    _wait_for(str(out / "model_0000004.pth"), proc)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    if sig == signal.SIGTERM:
        assert (out / "model_interrupted.pth").exists()  # saved on the way out
        err = proc.stderr.read()
        assert b"checkpoint saved" in err and b"rerun the same command with --resume" in err
        assert proc.returncode == 130 and b"Traceback" not in err
    resumed = run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    cut_losses = _losses(out)
    for it in range(5, 9):
        assert cut_losses[it] == ref_losses[it], it


def _break_xml(root, image_id, text):
    (root / "Annotations" / f"{image_id}.xml").write_text(text)
    return str(root / "Annotations" / f"{image_id}.xml")


def test_skip_leaves_bad_annotation_files_out_and_logs_them(tmp_path):
    generate(str(tmp_path / "d"), seed=0, num_train=4, num_test=2, image_size=96, domains=("source",))
    root = tmp_path / "d" / "source"
    ids = (root / "ImageSets" / "Main" / "train.txt").read_text().split()
    xml = (root / "Annotations" / f"{ids[0]}.xml").read_text()
    typo = _break_xml(root, ids[0], xml.replace("<name>", "<name>Kat", 1))
    hostile = _break_xml(root, ids[1], '<!DOCTYPE a [<!ENTITY x "y">]><annotation>&x;</annotation>')
    names = {"source_train": "skipann_train", "source_test": "skipann_test"}
    from lossmix.data.voc import register_voc

    for split in ("train", "test"):
        if f"skipann_{split}" not in DatasetCatalog:
            register_voc(f"skipann_{split}", str(root), split, SYNTHETIC_CLASSES)
    with pytest.raises(BadSampleError, match="unknown class"):
        train(tiny_cfg(names, tmp_path / "err", **{"SOLVER.MAX_ITER": 1, "DATASETS.TEST": ()}))
    out = tmp_path / "skip"
    result = train(tiny_cfg(names, out, **{"SOLVER.MAX_ITER": 1, "DATASETS.TEST": (),
                                           "DATALOADER.ON_BAD_SAMPLE": "skip"}))
    rows = jsonl_rows(out / "bad_samples.jsonl")
    assert {(r["file"], r["kind"], r["stage"]) for r in rows} == {(typo, "unknown_class", "train"),
                                                                  (hostile, "hostile_xml", "train")}
    assert result["summary"]["skipped_bad_samples"] == 2  # files


def test_bad_sample_from_a_loader_worker_is_still_one_line(tmp_path):
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
