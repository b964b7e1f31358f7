"""Dataset checks: every problem of a VOC folder or a list of dataset dicts, as :class:`Problem` records.

The loaders stop at the first bad file; these checks keep going and report everything, including
what the loaders accept but change (clipped boxes, converted images) and valid oddities (no objects).
Levels: ``error`` (the sample cannot be used as it is), ``warning`` (used, but changed or suspicious),
``info`` (an image that is converted on reading).
"""
from __future__ import annotations

import collections
import glob
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..structures import to_xyxy
from .errors import BadSampleError
from .image_io import read_image
from .voc import _class_index, _parse, _read_root, _text, read_voc_split

__all__ = ["Problem", "check_image", "check_voc_folder", "voc_class_counts", "collapse_unknown_classes",
           "format_class_counts", "check_dataset_dicts", "summarize", "format_problem",
           "format_summary", "format_report"]

LEVELS = ("error", "warning", "info")

# read_image's conversion records -> (kind, message) of the info-level problem reporting them.
_CONVERSIONS = {
    "grayscale->rgb": ("converted_grayscale", "grayscale image: its channel is replicated to RGB"),
    "gray+alpha->rgb": ("converted_grayscale", "grayscale image with alpha: alpha dropped, channel replicated"),
    "rgba->rgb": ("converted_alpha", "RGBA image: the alpha channel is dropped (not composited)"),
    "uint16->uint8": ("converted_16bit", "16-bit image: scaled to 8 bits (divided by 257)"),
}


@dataclass(frozen=True)
class Problem:
    """One finding: the offending ``file``, a stable ``kind`` tag, its ``level`` and a human ``message``."""

    file: str
    kind: str
    level: str
    message: str

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")

    @classmethod
    def from_error(cls, err: BadSampleError, level: str = "error") -> "Problem":
        return cls(err.path, err.kind, level, err.problem)


def check_image(file_name: str, height: int | None = None, width: int | None = None) -> list[Problem]:
    """Decode ``file_name`` with :func:`read_image`; report read errors, conversions and a size other
    than the annotated ``height`` x ``width`` (when given)."""
    conversions: list = []
    try:
        image = read_image(file_name, conversions)
    except BadSampleError as err:
        return [Problem.from_error(err)]
    problems = []
    for conversion in conversions:
        kind, message = _CONVERSIONS.get(conversion, ("converted_other", conversion))
        problems.append(Problem(file_name, kind, "info", message))
    h, w = image.shape[:2]
    if height is not None and width is not None and (h, w) != (height, width):
        hint = " (swapped: EXIF rotation or a transposed annotation?)" if (h, w) == (width, height) else ""
        problems.append(Problem(file_name, "size_mismatch", "error",
                                f"image is {w}x{h} (WxH) on disk but annotated as {width}x{height}{hint}"))
    return problems


def _check_images(jobs: list[tuple], workers: int) -> list[Problem]:
    """``check_image`` over ``(file, height, width)`` jobs; threads help because decoding releases the GIL."""
    if workers <= 1 or len(jobs) < 2:
        results = [check_image(*job) for job in jobs]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda job: check_image(*job), jobs))
    return [p for found in results for p in found]


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def check_voc_folder(dirname, split: str | None, class_names: Sequence[str], *, check_images: bool = True,
                     workers: int | None = None) -> list[Problem]:
    """Every problem of a VOC-format folder.

    ``split`` names ``ImageSets/Main/<split>.txt``; ``None`` checks every ``Annotations/*.xml``. Each
    annotation file is parsed the way :func:`lossmix.data.voc.load_voc_instances` parses it, but all of
    its bad objects are reported; each image is decoded with :func:`read_image` (unless
    ``check_images=False``) and its size compared with the XML's.
    """
    dirname = os.fspath(dirname)
    class_to_id = _class_index(class_names)
    class_names = tuple(class_names)
    annotation_dir = os.path.join(dirname, "Annotations")
    if not os.path.isdir(annotation_dir):
        what = "no Annotations/ folder" if os.path.isdir(dirname) else "the dataset folder does not exist"
        return [Problem(annotation_dir, "missing_file", "error",
                        f"{what}: expected a VOC-format folder (see datasets/README.md)")]

    problems: list[Problem] = []
    if split is None:
        xml_files = sorted(glob.glob(os.path.join(glob.escape(annotation_dir), "*.xml")))
    else:
        try:
            ids = read_voc_split(dirname, split)
        except FileNotFoundError as err:
            return [Problem(os.path.join(dirname, "ImageSets", "Main", f"{split}.txt"), "missing_file", "error",
                            str(err))]
        except BadSampleError as err:
            return [Problem.from_error(err)]
        counts = collections.Counter(ids)
        for image_id, n in counts.items():
            if n > 1:
                problems.append(Problem(os.path.join(dirname, "ImageSets", "Main", f"{split}.txt"), "duplicate_id",
                                        "warning", f"image id {image_id} is listed {n} times"))
        xml_files = []
        for image_id in counts:
            xml_path = os.path.join(annotation_dir, image_id + ".xml")
            if os.path.isfile(xml_path):
                xml_files.append(xml_path)
            else:
                problems.append(Problem(xml_path, "missing_file", "error",
                                        f"image id {image_id} is listed in {split}.txt but has no annotation file"))

    image_jobs = []
    for xml_path in xml_files:
        object_errors: list = []
        try:
            record = _parse(xml_path, class_to_id, class_names, dirname, object_errors)
        except BadSampleError as err:
            problems.append(Problem.from_error(err))
            continue
        problems.extend(Problem.from_error(err) for err in object_errors)
        problems.extend(_annotation_warnings(xml_path, record["annotations"]))
        if not record["annotations"] and not object_errors:
            problems.append(Problem(xml_path, "no_objects", "warning", "no objects (kept as a negative image)"))
        if not os.path.isfile(record["file_name"]):
            problems.append(Problem(record["file_name"], "missing_file", "error",
                                    f"image file named by {os.path.basename(xml_path)} does not exist"))
        elif check_images:
            image_jobs.append((record["file_name"], record["height"], record["width"]))
    problems.extend(_check_images(image_jobs, workers or _default_workers()))
    return problems


def _box_text(box) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


def _annotation_warnings(file: str, annotations: Iterable[dict]) -> list[Problem]:
    return [
        Problem(file, "box_clipped", "warning",
                f"annotation #{i}: box partly outside the image, clipped to {_box_text(ann['bbox'])}")
        for i, ann in enumerate(annotations) if ann.get("clipped")
    ]


def check_dataset_dicts(dicts: Sequence[dict], class_names: Sequence[str] | None = None, *,
                        check_images: bool = True, workers: int | None = None) -> list[Problem]:
    """Every problem of already-loaded dataset dicts (from any registered loader).

    Checks the required keys, each box (mode, degenerate, outside / partly outside the image), the
    category ids against ``class_names`` when given, images without objects, and (unless
    ``check_images=False``) each image file with :func:`read_image` against its ``height``/``width``.
    """
    problems: list[Problem] = []
    image_jobs = []
    for index, record in enumerate(dicts):
        file = str(record.get("file_name") or f"<dataset dict #{index}>")
        missing = [k for k in ("file_name", "height", "width", "annotations") if k not in record]
        if missing:
            problems.append(Problem(file, "missing_field", "error", f"dataset dict lacks {', '.join(missing)}"))
            continue
        height, width = record["height"], record["width"]
        for i, ann in enumerate(record["annotations"]):
            problems.extend(_check_annotation(file, i, ann, height, width, class_names))
        problems.extend(_annotation_warnings(file, record["annotations"]))
        if not record["annotations"]:
            problems.append(Problem(file, "no_objects", "warning", "no objects (kept as a negative image)"))
        if check_images:
            image_jobs.append((record["file_name"], height, width))
    problems.extend(_check_images(image_jobs, workers or _default_workers()))
    return problems


def _check_annotation(file, index, ann, height, width, class_names) -> list[Problem]:
    where = f"annotation #{index}"
    try:
        x1, y1, x2, y2 = to_xyxy(ann["bbox"], ann["bbox_mode"])
    except (KeyError, TypeError, ValueError) as err:
        return [Problem(file, "missing_field", "error", f"{where}: unreadable bbox / bbox_mode ({err})")]
    box = _box_text((x1, y1, x2, y2))
    if not x1 < x2 or not y1 < y2:  # also catches NaN
        return [Problem(file, "degenerate_box", "error", f"{where}: degenerate box {box}")]
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return [Problem(file, "box_outside_image", "error", f"{where}: box {box} lies entirely outside the "
                        f"{width}x{height} image")]
    problems = []
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        problems.append(Problem(file, "box_partly_outside", "warning",
                                f"{where}: box {box} extends past the {width}x{height} image (not clipped)"))
    category = ann.get("category_id")
    if not isinstance(category, int) or isinstance(category, bool):
        problems.append(Problem(file, "missing_field", "error", f"{where}: category_id {category!r} is not an int"))
    elif class_names is not None and not 0 <= category < len(class_names):
        problems.append(Problem(file, "unknown_class", "error",
                                f"{where}: category_id {category} is outside 0..{len(class_names) - 1}"))
    return problems


def summarize(problems: Iterable[Problem]) -> list[tuple[str, str, int]]:
    """``(kind, level, count)`` rows, errors first, then warnings, then info; kinds alphabetical."""
    counts = collections.Counter((p.kind, p.level) for p in problems)
    return sorted(((k, lvl, n) for (k, lvl), n in counts.items()), key=lambda r: (LEVELS.index(r[1]), r[0]))


def format_problem(problem: Problem) -> str:
    return f"{problem.level.upper():7} {problem.kind:20} {problem.file}: {problem.message}"


def format_summary(problems: Sequence[Problem]) -> str:
    """The summary table: one ``kind level count`` row per kind, then the totals."""
    rows = summarize(problems)
    width = max([len("kind")] + [len(kind) for kind, _, _ in rows])
    lines = [f"{'kind':{width}}  {'level':7}  count"]
    lines.extend(f"{kind:{width}}  {level:7}  {n:5d}" for kind, level, n in rows)
    n_errors = sum(n for _, level, n in rows if level == "error")
    lines.append(f"{len(problems)} problem(s), {n_errors} error(s)")
    return "\n".join(lines)


def format_report(problems: Sequence[Problem]) -> str:
    """Every problem on its own line, then the summary table."""
    lines = [format_problem(p) for p in problems]
    return "\n".join(lines + ([""] if lines else []) + [format_summary(problems)])


def _annotation_files(dirname: str, split: str | None) -> list[str]:
    annotation_dir = os.path.join(dirname, "Annotations")
    if split is None:
        return sorted(glob.glob(os.path.join(glob.escape(annotation_dir), "*.xml")))
    try:
        ids = read_voc_split(dirname, split)
    except (FileNotFoundError, BadSampleError):
        return []
    return [os.path.join(annotation_dir, i + ".xml") for i in dict.fromkeys(ids)]


def voc_class_counts(dirname, split: str | None = None) -> dict[str, tuple[int, int]]:
    """``{class name: (images, instances)}`` over a VOC folder's annotation files (of ``split``, or all),
    whatever the class list; files that do not parse are skipped (the checks report them)."""
    images: collections.Counter = collections.Counter()
    instances: collections.Counter = collections.Counter()
    for xml_path in _annotation_files(os.fspath(dirname), split):
        try:
            root = _read_root(xml_path)
        except BadSampleError:
            continue
        names = [_text(obj, "name") or "" for obj in root.iter("object")]
        instances.update(names)
        images.update(set(names))
    return {name: (images[name], instances[name]) for name in sorted(instances, key=lambda n: (-instances[n], n))}


def collapse_unknown_classes(problems: list[Problem], counts: dict, class_names: Sequence[str], folder: str,
                             *, what: str = "the class list") -> list[Problem]:
    """``problems`` with the per-object ``unknown_class`` errors replaced by one error for the folder, naming
    each unknown class with its counts and the option that fixes it."""
    unknown = {name: n for name, n in counts.items() if name and name not in set(class_names)}
    kept = [p for p in problems if p.kind != "unknown_class"]
    if not unknown:
        return problems
    listed = ", ".join(f"{name} ({inst} objects in {img} images)" for name, (img, inst) in unknown.items())
    every = ",".join(counts)
    return kept + [Problem(folder, "unknown_class", "error",
                           f"{sum(n for _, n in unknown.values())} object(s) of classes not in {what}: {listed}; "
                           f"give the folder's class list, e.g. --classes {every} "
                           "(training: DATASETS.CUSTOM_CLASSES)")]


def format_class_counts(counts: dict, class_names: Sequence[str] | None = None) -> str:
    """A table of images and instances per class (``class_names`` first, in label order, zeros included)."""
    order = list(class_names or []) + [n for n in counts if n not in set(class_names or [])]
    width = max([len("class")] + [len(n) for n in order])
    lines = [f"{'class':{width}}  images  instances"]
    for name in order:
        img, inst = counts.get(name, (0, 0))
        mark = "" if class_names is None or name in set(class_names) else "  (not in the class list)"
        lines.append(f"{name:{width}}  {img:6d}  {inst:9d}{mark}")
    return "\n".join(lines)
