#!/usr/bin/env python
"""Check datasets before training: list every problem with its file, then a summary table.

    python tools/check_dataset.py voc_2007_trainval               # a registered dataset
    python tools/check_dataset.py datasets/clipart --split train  # a VOC-format folder
    python tools/check_dataset.py my_voc --classes dog,cat,person # folder, own class list
    python tools/check_dataset.py --config-file my.yaml           # DATASETS.* of a config (DATASETS.CUSTOM_VOC too)

Exit status: 1 if any error-level problem was found, 2 for bad arguments, else 0.
"""
from __future__ import annotations

import argparse
import os
import sys

try:
    import lossmix  # noqa: F401
except ImportError:  # runnable from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lossmix.data.catalog import DatasetCatalog, MetadataCatalog  # noqa: E402
from lossmix.data.errors import BadSampleError  # noqa: E402
from lossmix.data.validate import (  # noqa: E402
    Problem, check_dataset_dicts, check_voc_folder, collapse_unknown_classes, format_class_counts, format_problem,
    format_summary, voc_class_counts,
)
from lossmix.data.voc import VOC_CLASSES  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=type(
        "HelpFormatter", (argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter), {}))
    parser.add_argument("datasets", nargs="*", metavar="NAME_OR_FOLDER",
                        help="registered dataset names or VOC-format folders (with --config-file: default its "
                             "DATASETS.TRAIN, TRAIN_UNLABELED and TEST)")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class list for folders (None: the 20 VOC classes)")
    parser.add_argument("--split", default=None,
                        help="for folders: check ImageSets/Main/SPLIT.txt (None: every annotation)")
    parser.add_argument("--no-images", action="store_true", help="skip decoding the images")
    parser.add_argument("--config-file", "--config", dest="config_file", default=None, metavar="FILE",
                        help="a training config: its DATASETS.CUSTOM_VOC folders are registered as training does")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides for --config-file, e.g. DATASETS.CUSTOM_VOC \"('pets_train:/data/pets:train',)\"")
    args = parser.parse_args(argv)
    if not args.datasets and not args.config_file and not args.opts:
        parser.error("name a dataset or folder, or give --config-file")
    return args


def config_datasets(config_file, opts) -> list[str]:
    """Register a config's DATASETS.CUSTOM_VOC (as training does) and return its dataset names."""
    from lossmix.config.setup import build_config
    from lossmix.data.builtin import register_custom

    cfg = build_config(config_file or "", opts)
    register_custom(cfg)
    return list(dict.fromkeys([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TRAIN_UNLABELED, *cfg.DATASETS.TEST]))


def _register_builtin() -> None:
    try:
        import lossmix.data.builtin  # noqa: F401  (registers the standard dataset names)
    except ImportError as err:
        if err.name not in ("lossmix.data.builtin",):  # a real import failure inside it must show
            raise


def check_target(target: str, classes, split, check_images: bool, *, classes_given: bool = True,
                 counts: dict | None = None) -> list[Problem]:
    """Problems of one folder or registered dataset; raises KeyError for an unknown name. ``counts`` (a dict)
    receives ``{"classes": [...], "counts": {class: (images, instances)}}`` for VOC-format targets."""
    if os.path.isdir(target):
        found = check_voc_folder(target, split, classes, check_images=check_images)
        per_class = voc_class_counts(target, split)
        if counts is not None:
            counts.update(classes=list(classes) if classes_given else None, counts=per_class)
        if not classes_given:  # the VOC default: one line for the folder's own classes, not one per object
            found = collapse_unknown_classes(found, per_class, classes, target, what="the 20 VOC classes")
        return found
    _register_builtin()
    if target not in DatasetCatalog:
        known = ", ".join(sorted(DatasetCatalog)) or "none"
        raise KeyError(f"{target!r} is neither a folder nor a registered dataset (registered: {known})")
    meta = MetadataCatalog.get(target)
    if meta.get("dirname") and meta.get("split") and meta.get("thing_classes"):
        # A VOC-format registration: check the folder itself, which reports every bad file.
        if counts is not None:
            counts.update(classes=list(meta.thing_classes), counts=voc_class_counts(meta.dirname, meta.split))
        return check_voc_folder(meta.dirname, meta.split, meta.thing_classes, check_images=check_images)
    try:
        dicts = DatasetCatalog.get(target)
    except BadSampleError as err:  # the loader stops at its first bad file
        return [Problem.from_error(err)]
    return check_dataset_dicts(dicts, meta.get("thing_classes"), check_images=check_images)


def main(argv=None) -> int:
    args = parse_args(argv)
    classes = list(VOC_CLASSES)
    if args.classes is not None:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not classes or len(set(classes)) != len(classes):
        print(f"--classes: need distinct class names, got {classes}", file=sys.stderr)
        return 2
    problems: list[Problem] = []
    targets = list(args.datasets)
    if args.config_file or args.opts:
        try:
            names = config_datasets(args.config_file, args.opts)
        except (KeyError, ValueError, FileNotFoundError) as err:
            print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
            return 2
        targets = targets or names
    for target in targets:
        counts: dict = {}
        try:
            found = check_target(target, classes, args.split, not args.no_images,
                                 classes_given=args.classes is not None, counts=counts)
        except KeyError as err:
            print(f"error: {err.args[0]}", file=sys.stderr)
            return 2
        print(f"== {target}: {len(found)} problem(s)")
        for problem in found:
            print(format_problem(problem))
        if counts.get("counts") is not None:
            print(format_class_counts(counts["counts"], counts["classes"]))
        problems.extend(found)
    print()
    print(format_summary(problems))
    return 1 if any(p.level == "error" for p in problems) else 0

if __name__ == "__main__":
    sys.exit(main())
