"""tools/train_net.py as a user meets it: options, one-line errors, Ctrl-C."""
from __future__ import annotations

import json

import pytest

from lossmix.config.setup import ConfigError, build_config
from lossmix.engine.checkpoint import Checkpointer

from .helpers import load_tool, make_tiny_dataset, tiny_cfg, tiny_opts


@pytest.fixture(scope="module")
def tool():
    return load_tool("train_net")


def _one_error_line(tool, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool.main(tool.parse_args(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    return err.splitlines()[0]


@pytest.mark.parametrize("opts, line", [
    (["SOLVER.MAX_ITER", "abc"], "error: ConfigError: SOLVER.MAX_ITER = 'abc' (from the command line): expected an "
                                 "integer, like 18000"),
    (["LOSSMIX.ALPHA", "high"], "error: ConfigError: LOSSMIX.ALPHA = 'high' (from the command line): expected a "
                                "number, like 1.0"),
    (["DATASETS.TRAIN", "fruit_train"], "error: ConfigError: DATASETS.TRAIN = 'fruit_train' (from the command line): "
                                        "expected a tuple, like (), e.g. \"('fruit_train',)\" for one entry"),
    (["SOLVER.MAX_ITER", "10", "LOSSMIX.ALPHA"], "error: ConfigError: overrides must be KEY VALUE pairs, got 5 "
                                                 "word(s): the last key 'LOSSMIX.ALPHA' has no value"),
    (["SOLVER.MAX_ITR", "3"], "error: KeyError: unknown config key 'SOLVER.MAX_ITR' (from the command line); did you "
                              "mean SOLVER.MAX_ITER"),
])
def test_wrong_overrides_are_one_line_naming_the_key_and_the_type(tool, tmp_path, capsys, opts, line):
    assert _one_error_line(tool, ["OUTPUT_DIR", str(tmp_path), *opts], capsys).startswith(line)


def test_yaml_type_error_and_key_typo_are_one_line(tool, tmp_path, capsys):
    (tmp_path / "three.yaml").write_text('MODEL:\n  ROI_HEADS:\n    NUM_CLASSES: "three"\n')
    (tmp_path / "typo.yaml").write_text("SOLVER:\n  BASE_RL: 0.1\n")
    assert _one_error_line(tool, ["--config-file", str(tmp_path / "three.yaml"), "OUTPUT_DIR", str(tmp_path)],
                           capsys) == (f"error: ConfigError: {tmp_path / 'three.yaml'}: MODEL.ROI_HEADS.NUM_CLASSES = "
                                       "'three' (in a YAML file): expected an integer, like 20")
    assert _one_error_line(tool, ["--config-file", str(tmp_path / "typo.yaml"), "OUTPUT_DIR", str(tmp_path)],
                           capsys).startswith(f"error: KeyError: {tmp_path / 'typo.yaml'}: unknown config key "
                                              "'SOLVER.BASE_RL' (in a YAML file); did you mean SOLVER.BASE_LR")


def test_ctrl_c_is_one_line_with_resume_and_exit_130(tool, tmp_path, monkeypatch, capsys):
    import lossmix.engine.run
    from lossmix.engine.trainer import TrainingInterrupted

    def interrupted(cfg, **kwargs):
        raise TrainingInterrupted("signal 2 at iteration 3; checkpoint saved")

    monkeypatch.setattr(lossmix.engine.run, "run", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        tool.main(tool.parse_args(["OUTPUT_DIR", str(tmp_path)]))
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert err == ("interrupted (signal 2 at iteration 3; checkpoint saved); rerun the same command with --resume "
                   "to continue\n")


@pytest.mark.parametrize("name", ["train_net", "attribution", "compare", "visualize_mixing"])
def test_help_shows_every_default(name, monkeypatch, capsys):
    import argparse

    parsers = []
    original = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args",
                        lambda self, *a, **k: (parsers.append(self), original(self, ["-h"]))[1])
    with pytest.raises(SystemExit):
        load_tool(name).parse_args([])
    parser = parsers[0]
    assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert options and all(a.help for a in options), [a.dest for a in options if not a.help]  # help=None hides it
    text = " ".join(capsys.readouterr().out.split())
    assert text.split("options:")[-1].count("(default: ") == len(options)


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("train_net") / "data", num_train=4, num_test=2)


def test_eval_only_has_its_own_folder_a_bar_and_a_log(names, tmp_path, capsys):
    from lossmix.evaluation import format_table
    from lossmix.modeling.build import build_detector

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text("training config\n")
    (run / "eval" / f"{names['source_test']}.json").write_text('{"AP50": 12.5}')
    cfg = tiny_cfg(names, run)
    Checkpointer(str(run), model=build_detector(cfg)).save("model_final", 6)
    tool = load_tool("train_net")
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


def test_trailing_options_are_not_swallowed_as_overrides():
    tool = load_tool("train_net")
    args = tool.parse_args(["--config-file", "x.yaml", "SOLVER.MAX_ITER", "10", "--resume", "--num-gpus", "2",
                            "LOSSMIX.ALPHA", "-1"])
    assert args.resume and args.num_gpus == 2 and args.config_file == "x.yaml"
    assert args.opts == ["SOLVER.MAX_ITER", "10", "LOSSMIX.ALPHA", "-1"]
    with pytest.raises(ConfigError, match="'--resum' among the KEY VALUE overrides is not a config key"):
        build_config("", ["SOLVER.MAX_ITER", "10", "--resum", "x"])


def test_user_mistakes_print_one_line(tmp_path, capsys):
    tool = load_tool("train_net")
    args = tool.parse_args(["OUTPUT_DIR", str(tmp_path), "SOLVER.NOPE", "1"])
    with pytest.raises(SystemExit) as exit_info:
        tool.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: KeyError: unknown config key 'SOLVER.NOPE' (from the command line)")
    assert "Traceback" not in err
    with pytest.raises(KeyError):
        tool.main(tool.parse_args(["--debug", "SOLVER.NOPE", "1"]))
