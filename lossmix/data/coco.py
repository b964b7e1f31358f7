"""COCO-json reader -> dataset dicts (same keys as the VOC reader, so the rest of the package sees one format).

Bad input raises :class:`BadSampleError` naming the json file (and the image / annotation id), with
``kind`` one of ``missing_file``, ``malformed_json``, ``missing_field``, ``duplicate_id``,
``unknown_image``, ``unknown_class``, ``invalid_size``, ``degenerate_box``, ``box_outside_image``.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Sequence

from ..structures import BoxMode
from .catalog import DatasetCatalog, MetadataCatalog
from .errors import BadSampleError

__all__ = ["COCO_CLASSES", "load_coco_json", "register_coco"]

# COCO 2017's 80 thing classes in category-id order (ids 1..90 with gaps): label k is the k-th name, as in detectron2.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)

logger = logging.getLogger(__name__)


def _read_json(json_file: str) -> dict:
    try:
        with open(json_file, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise BadSampleError(json_file, "annotation file does not exist", kind="missing_file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadSampleError(json_file, f"malformed JSON: {err}", kind="malformed_json") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise BadSampleError(json_file, "not a COCO file: no 'images' list at the top level", kind="missing_field")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise BadSampleError(json_file, f"'{key}' must be a list", kind="missing_field")
    return data


def _field(json_file, record: dict, key: str, where: str, types):
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, types) or isinstance(value, bool):
        raise BadSampleError(json_file, f"{where}: missing or invalid {key!r}: {value!r}", kind="missing_field")
    return value


def _category_map(json_file, categories, class_names):
    """COCO category id -> contiguous 0-based index, and the class names in index order."""
    id_to_name = {}
    for cat in categories:
        cat_id = _field(json_file, cat, "id", "category", int)
        name = _field(json_file, cat, "name", f"category {cat_id}", str)
        if cat_id in id_to_name:
            raise BadSampleError(json_file, f"category id {cat_id} appears twice", kind="duplicate_id")
        id_to_name[cat_id] = name
    if class_names is None:
        # Sorted id order, as detectron2 does, so the mapping does not depend on the file's list order.
        class_names = [id_to_name[i] for i in sorted(id_to_name)]
    class_names = list(class_names)
    index = {name: i for i, name in enumerate(class_names)}
    if len(index) != len(class_names):
        raise ValueError(f"class names have duplicates: {class_names}")
    # Categories outside class_names are only an error if an annotation uses them (checked per annotation).
    return {cat_id: index.get(name) for cat_id, name in id_to_name.items()}, id_to_name, class_names


def _ann_name(ann) -> str:
    return f"annotation {ann.get('id', '?') if isinstance(ann, dict) else '?'}"


def _annotation(json_file, ann, image, cat_to_index, id_to_name, class_names) -> dict:
    where = f"{_ann_name(ann)} (image {image['image_id']})"
    cat_id = _field(json_file, ann, "category_id", where, int)
    if cat_id not in cat_to_index:
        raise BadSampleError(json_file, f"{where}: category id {cat_id} is not among the file's categories",
                             kind="unknown_class")
    category = cat_to_index[cat_id]
    if category is None:
        raise BadSampleError(json_file, f"{where}: class {id_to_name[cat_id]!r} is not in the class list "
                             f"{', '.join(class_names)}", kind="unknown_class")
    bbox = ann.get("bbox")
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        raise BadSampleError(json_file, f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}",
                             kind="missing_field")
    x1, y1 = float(bbox[0]), float(bbox[1])
    x2, y2 = x1 + float(bbox[2]), y1 + float(bbox[3])
    width, height = image["width"], image["height"]
    if x2 <= x1 or y2 <= y1:
        raise BadSampleError(json_file, f"{where}: degenerate box (x, y, w, h) = {bbox}", kind="degenerate_box")
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise BadSampleError(json_file, f"{where}: box {bbox} lies entirely outside the {width}x{height} image",
                             kind="box_outside_image")
    iscrowd = 1 if ann.get("iscrowd", 0) else 0
    # Crowd regions are marked difficult so VOC-style evaluation neither rewards nor penalises them.
    out = {"bbox": [x1, y1, x2, y2], "bbox_mode": BoxMode.XYXY_ABS, "category_id": category,
           "difficult": iscrowd, "iscrowd": iscrowd}
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        out["bbox"] = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
        out["clipped"] = True
    return out


def load_coco_json(json_file, image_root, class_names: Sequence[str] | None = None, *, on_bad: str = "error",
                   problems: list | None = None) -> tuple[list[dict], list[str]]:
    """Read a COCO instances json into ``(dataset dicts, class names)``.

    Boxes go from COCO's ``[x, y, w, h]`` to ``XYXY_ABS``; category ids map to contiguous 0-based
    indices in sorted-id order (or to positions in ``class_names`` when given, matched by name);
    ``iscrowd`` annotations get ``"difficult": 1``. ``image_id`` is COCO's integer id. Boxes partly
    outside the image are clipped and marked ``"clipped": True``. Images without annotations are kept.
    ``on_bad`` / ``problems`` behave as in :func:`lossmix.data.voc.load_voc_instances`, per image.
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    data = _read_json(json_file)
    cat_to_index, id_to_name, class_names = _category_map(json_file, data.get("categories", []), class_names)

    images, errors = {}, {}
    for record in data["images"]:
        image_id = _field(json_file, record, "id", "image", int)
        where = f"image {image_id}"
        if image_id in images:
            raise BadSampleError(json_file, f"{where} appears twice", kind="duplicate_id")
        try:
            file_name = _field(json_file, record, "file_name", where, str)
            height = _field(json_file, record, "height", where, int)
            width = _field(json_file, record, "width", where, int)
            if height <= 0 or width <= 0:
                raise BadSampleError(json_file, f"{where}: size {width}x{height} is not positive", kind="invalid_size")
        except BadSampleError as err:
            errors[image_id] = err
            height = width = 0
            file_name = ""
        images[image_id] = {"file_name": os.path.join(image_root, file_name), "height": height, "width": width,
                            "image_id": image_id, "annotations": []}

    for ann in data.get("annotations", []):
        image_id = _field(json_file, ann, "image_id", _ann_name(ann), int)
        if image_id not in images:
            raise BadSampleError(json_file, f"{_ann_name(ann)}: image id {image_id} is not in 'images'",
                                 kind="unknown_image")
        if image_id in errors:
            continue
        try:
            images[image_id]["annotations"].append(
                _annotation(json_file, ann, images[image_id], cat_to_index, id_to_name, class_names))
        except BadSampleError as err:
            errors[image_id] = err

    dicts = []
    for image_id, record in images.items():
        err = errors.get(image_id)
        if err is None:
            dicts.append(record)
            continue
        if on_bad == "error":
            raise err
        logger.warning("skipping image %s of %s: %s [%s]", image_id, err.path, err.problem, err.kind)
        if problems is not None:
            problems.append(err.as_record())
    return dicts, class_names


def register_coco(name: str, json_file, image_root, *, class_names: Sequence[str] | None = None) -> None:
    """Register a COCO json as ``name`` (read lazily). ``thing_classes`` is set now when ``class_names``
    is given, else when the dataset is first loaded."""
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    fixed = None if class_names is None else list(class_names)

    def load(on_bad: str = "error", problems: list | None = None):
        dicts, names = load_coco_json(json_file, image_root, fixed, on_bad=on_bad, problems=problems)
        MetadataCatalog.get(name).set(thing_classes=names)
        return dicts

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                  thing_classes=fixed)
