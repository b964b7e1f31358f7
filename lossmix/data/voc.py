"""Pascal-VOC-format reader (VOC2007/2012, Clipart1k, Watercolor2k, Comic2k share it) -> dataset dicts.

A VOC-format folder holds ``Annotations/<id>.xml``, ``JPEGImages/<file>`` and
``ImageSets/Main/<split>.txt`` (one image id per line). The XML files are untrusted input: they are
parsed with defusedxml, and DTDs / entity declarations are refused, never expanded.

Bad input raises :class:`BadSampleError` naming the file, with one of these ``kind`` tags:
``missing_file``, ``unreadable_file``, ``malformed_xml``, ``hostile_xml``, ``missing_field``,
``invalid_filename``, ``invalid_size``, ``unknown_class``, ``degenerate_box``, ``box_outside_image``
(and ``malformed_split`` for the split file itself).
"""
from __future__ import annotations

import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from typing import Sequence

import defusedxml
import defusedxml.ElementTree as SafeET

from ..structures import BoxMode
from .catalog import DatasetCatalog, MetadataCatalog
from .errors import BadSampleError

__all__ = ["VOC_CLASSES", "parse_voc_xml", "read_voc_split", "load_voc_instances", "register_voc"]

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")
_FLAGS = {"0": 0, "1": 1}  # <difficult> / <truncated> as written in the common case
_XYXY_ABS = BoxMode.XYXY_ABS


def _class_index(class_names: Sequence[str]) -> dict:
    class_to_id = {name: i for i, name in enumerate(class_names)}
    if len(class_to_id) != len(class_names):
        raise ValueError(f"class_names has duplicates: {list(class_names)}")
    return class_to_id


_ASCII_ENCODINGS = (b"utf-8", b"utf8", b"us-ascii", b"ascii", b"iso-8859-1", b"latin-1", b"latin1")
_ENCODING = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def _plainly_without_dtd(data: bytes) -> bool:
    """True when ``data`` is in an ASCII-compatible encoding (no NUL byte, no byte-order mark other than
    UTF-8's, declared encoding absent or UTF-8 / ASCII / Latin-1) and holds no ``<!DOCTYPE`` nor
    ``<!ENTITY``: then it has no DTD, which is what defusedxml's ``forbid_dtd`` refuses, and expat
    can parse it with the C tree builder (about 3x faster). Anything else goes through defusedxml."""
    if b"\x00" in data or data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return False
    if b"<!" in data and (b"<!DOCTYPE" in data or b"<!ENTITY" in data):  # one scan in the common case
        return False
    if data[:1] in (b"\xef", b"\xbb", b"\xbf"):
        data = data.lstrip(b"\xef\xbb\xbf")
    if not data.startswith(b"<?xml"):  # no declaration: the regex below could not match
        return True
    match = _ENCODING.match(data)
    return match is None or match.group(1).lower() in _ASCII_ENCODINGS


def _read_root(xml_path: str) -> ET.Element:
    try:
        with open(xml_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BadSampleError(xml_path, "annotation file does not exist", kind="missing_file") from None
    except OSError as err:
        raise BadSampleError(xml_path, f"cannot read annotation file: {err.strerror or err}",
                             kind="unreadable_file") from None
    try:
        if _plainly_without_dtd(data):  # the C parser: no DTD, so no entity can be declared or expanded
            root = ET.fromstring(data)
        else:  # a DTD, or an encoding in which "<!DOCTYPE" might not be spelled in ASCII: defusedxml decides
            root = SafeET.fromstring(data, forbid_dtd=True)
    except defusedxml.DefusedXmlException as err:
        raise BadSampleError(
            xml_path,
            f"refusing XML with a DTD or entity declaration ({type(err).__name__}); annotations need neither",
            kind="hostile_xml",
        ) from None
    except ET.ParseError as err:
        raise BadSampleError(xml_path, f"malformed XML: {err}", kind="malformed_xml") from None
    except ValueError as err:  # e.g. expat: "multi-byte encodings are not supported" (a declared UTF-16-LE)
        raise BadSampleError(xml_path, f"malformed XML: {err}", kind="malformed_xml") from None
    if root.tag != "annotation":
        raise BadSampleError(xml_path, f"root element is <{root.tag}>, expected <annotation>", kind="malformed_xml")
    return root


def _text(elem: ET.Element, tag: str) -> str | None:
    """Stripped text of ``elem``'s child ``tag``; None when the child is absent or empty."""
    text = elem.findtext(tag)
    return (text.strip() or None) if text else None


def _number(xml_path: str, elem: ET.Element, tag: str, where: str) -> float:
    text = elem.findtext(tag)
    try:
        value = float(text)  # float() strips whitespace itself
    except (TypeError, ValueError):
        if _text(elem, tag) is None:
            raise BadSampleError(xml_path, f"{where}: missing <{tag}>", kind="missing_field") from None
        value = math.nan
    if not math.isfinite(value):
        raise BadSampleError(xml_path, f"{where}: <{tag}> is not a finite number: {text!r}", kind="missing_field")
    return value


def _flag(xml_path: str, elem: ET.Element, tag: str, where: str) -> int | None:
    """A 0/1 flag such as <difficult>; None when the tag is absent or empty."""
    text = _text(elem, tag)
    if text is None:
        return None
    if text not in ("0", "1"):
        raise BadSampleError(xml_path, f"{where}: <{tag}> must be 0 or 1, got {text!r}", kind="missing_field")
    return int(text)


def _image_size(xml_path: str, root: ET.Element) -> tuple[int, int]:
    size = root.find("size")
    if size is None:
        raise BadSampleError(xml_path, "no <size> element (image width and height are required)", kind="missing_field")
    try:  # the common case: two positive integers
        height, width = int(size.findtext("height")), int(size.findtext("width"))
        if height > 0 and width > 0:
            return height, width
    except (TypeError, ValueError):
        pass
    dims = []  # anything else: the checks below say what is wrong (or accept, e.g., "480.0")
    for tag in ("height", "width"):
        value = _number(xml_path, size, tag, "<size>")
        if value <= 0 or value != int(value):
            raise BadSampleError(xml_path, f"<size>: <{tag}> must be a positive integer, got {value:g}",
                                 kind="invalid_size")
        dims.append(int(value))
    return dims[0], dims[1]


def _image_file(xml_path: str, root: ET.Element, image_id: str, image_dir: str) -> str:
    """The image's file name under ``image_dir`` (JPEGImages/).

    ``<id>.jpg`` when it exists, whatever ``<filename>`` says (detectron2's rule: tools such as LabelImg leave a
    stale ``<filename>`` after files are renamed); otherwise ``<filename>`` (e.g. a PNG dataset) when it is a plain
    file name; otherwise ``<id>.jpg`` (reported missing when the image is read).
    """
    by_id = image_id + ".jpg"
    filename = _text(root, "filename")
    if filename is None or filename == by_id or os.path.isfile(os.path.join(image_dir, by_id)):
        if filename is not None and filename != by_id:
            logger.debug("%s: <filename> %r ignored; using %s", xml_path, filename, by_id)
        return by_id
    # The name is joined under JPEGImages/: refuse anything that could point elsewhere.
    if os.path.basename(filename) != filename or "\\" in filename or filename in (".", ".."):
        raise BadSampleError(xml_path, f"<filename> must be a plain file name, got {filename!r}",
                             kind="invalid_filename")
    if not os.path.isfile(os.path.join(image_dir, filename)):
        return by_id
    return filename


def _where(index: int, name) -> str:
    return f"object #{index}" + (f" ({name})" if name else "")


def _object(xml_path, obj, index, width, height, class_to_id, class_names) -> dict:
    # The common case (a known name, four finite numbers, flags "0" / "1") is read inline; anything else
    # takes the per-field helpers, which raise the error naming the field (same checks, same messages).
    name = obj.findtext("name")
    name = (name.strip() or None) if name else None
    if name is None:
        raise BadSampleError(xml_path, f"{_where(index, name)}: missing <name>", kind="missing_field")
    category_id = class_to_id.get(name)
    if category_id is None:
        # No case folding: VOC names are lowercase and a variant such as "Dog" is a labelling error.
        raise BadSampleError(
            xml_path, f"{_where(index, name)}: unknown class {name!r}; known classes: {', '.join(class_names)}",
            kind="unknown_class",
        )
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise BadSampleError(xml_path, f"{_where(index, name)}: missing <bndbox>", kind="missing_field")
    try:
        xmin, ymin = float(bndbox.findtext("xmin")), float(bndbox.findtext("ymin"))
        xmax, ymax = float(bndbox.findtext("xmax")), float(bndbox.findtext("ymax"))
        total = xmin + ymin + xmax + ymax
        finite = total - total == 0.0  # false for any inf / nan (and for a sum overflowing: the checks then decide)
    except (TypeError, ValueError):
        finite = False
    if not finite:
        where = _where(index, name)
        xmin, ymin, xmax, ymax = [_number(xml_path, bndbox, tag, where) for tag in _BOX_TAGS]
    # VOC boxes are 1-based inclusive pixel indices; continuous coordinates (x2/y2 exclusive, origin at
    # the image corner) subtract 1 from the minimum corner only: pixel 1..W spans [0, W]. Same as detectron2.
    x1, y1, x2, y2 = xmin - 1.0, ymin - 1.0, xmax, ymax
    if x2 <= x1 or y2 <= y1:
        box = f"(xmin, ymin, xmax, ymax) = ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})"  # as written in the file
        raise BadSampleError(xml_path, f"{_where(index, name)}: degenerate box {box}: needs xmin <= xmax and "
                             "ymin <= ymax", kind="degenerate_box")
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        box = f"(xmin, ymin, xmax, ymax) = ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})"
        raise BadSampleError(xml_path, f"{_where(index, name)}: box {box} lies entirely outside the {width}x{height} "
                             "image", kind="box_outside_image")
    annotation = {"bbox": [x1, y1, x2, y2], "bbox_mode": _XYXY_ABS, "category_id": category_id}
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        # Partly outside: clipping keeps positive area because the box overlaps the image.
        annotation["bbox"] = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
        annotation["clipped"] = True
    difficult = _FLAGS.get(obj.findtext("difficult"))
    if difficult is None:
        difficult = _flag(xml_path, obj, "difficult", _where(index, name)) or 0  # absent tag: not difficult
    annotation["difficult"] = difficult
    truncated = _FLAGS.get(obj.findtext("truncated"))  # never read by training: an odd value is left out, no error
    if truncated is not None:
        annotation["truncated"] = truncated
    else:
        truncated = _text(obj, "truncated")
        if truncated in ("0", "1"):
            annotation["truncated"] = int(truncated)
        elif truncated is not None:
            logger.debug("%s: %s: <truncated> %r is not 0 or 1; ignored", xml_path, _where(index, name), truncated)
    return annotation


def _parse(xml_path, class_to_id, class_names, dirname=None, object_errors: list | None = None, *,
           image_id: str | None = None, image_dir: str | None = None) -> dict:
    """Parse one annotation file. With ``object_errors`` a list, a bad object is recorded there and left
    out instead of raising (for the dataset checker, which wants every problem); file-level problems
    always raise. ``image_id`` (the file's stem) and ``image_dir`` (``<dirname>/JPEGImages``) may be given
    by a caller that knows them, to save recomputing them per file."""
    xml_path = os.fspath(xml_path)
    root = _read_root(xml_path)
    if image_dir is None:
        if dirname is None:
            dirname = os.path.dirname(os.path.dirname(xml_path))  # <dirname>/Annotations/<id>.xml
        image_dir = os.path.join(os.fspath(dirname), "JPEGImages")
    if image_id is None:
        image_id = os.path.splitext(os.path.basename(xml_path))[0]
    file_name = image_dir + os.sep + _image_file(xml_path, root, image_id, image_dir)  # a plain name: no join needed
    height, width = _image_size(xml_path, root)
    annotations = []
    for index, obj in enumerate(root.findall("object")):  # findall: C's loop over the children
        try:
            annotations.append(_object(xml_path, obj, index, width, height, class_to_id, class_names))
        except BadSampleError as err:
            if object_errors is None:
                raise
            object_errors.append(err)
    return {"file_name": file_name, "height": height, "width": width, "image_id": image_id,
            "annotations": annotations}


def parse_voc_xml(xml_path, class_names: Sequence[str], *, dirname=None) -> dict:
    """Read one VOC annotation file into a dataset dict.

    Returns ``{"file_name": <dirname>/JPEGImages/<id>.jpg (or the XML's <filename> when only that exists), "height", "width" (from
    <size>), "image_id": <xml file stem>, "annotations": [...]}`` where each annotation is
    ``{"bbox": [x1, y1, x2, y2] (float, continuous pixels), "bbox_mode": BoxMode.XYXY_ABS,
    "category_id": class_names.index(name), "difficult": 0 | 1 (0 when the tag is absent),
    "truncated": 0 | 1 (only if present and 0 or 1; other values are ignored), "clipped": True (only for a box clipped to the image)}``.
    An image without objects gets an empty list (a valid negative). ``dirname`` defaults to the
    folder above ``Annotations/``. Raises :class:`BadSampleError` (see the module docstring).
    """
    return _parse(xml_path, _class_index(class_names), tuple(class_names), dirname)


def read_voc_split(dirname, split: str) -> list[str]:
    """Image ids listed in ``<dirname>/ImageSets/Main/<split>.txt``, in file order."""
    split_file = os.path.join(os.fspath(dirname), "ImageSets", "Main", f"{split}.txt")
    try:
        with open(split_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"split file {split_file} not found: a VOC-format folder needs ImageSets/Main/{split}.txt "
            "(see datasets/README.md for the expected layout)"
        ) from None
    ids = []
    for lineno, line in enumerate(lines, 1):
        image_id = line.strip()
        if not image_id:
            continue
        if len(image_id.split()) != 1 or "/" in image_id or "\\" in image_id or image_id in (".", ".."):
            raise BadSampleError(split_file, f"line {lineno}: expected one image id, got {line!r}",
                                 kind="malformed_split")
        ids.append(image_id)
    return ids


def load_voc_instances(dirname, split: str, class_names: Sequence[str], *, on_bad: str = "error",
                       problems: list | None = None) -> list[dict]:
    """Dataset dicts for every image id of ``split`` (see :func:`parse_voc_xml` for their keys).

    ``on_bad="error"`` raises the first :class:`BadSampleError`; ``on_bad="skip"`` leaves that file out,
    logs a warning and appends ``err.as_record()`` to ``problems`` (when a list is given). Images with
    no objects are kept: they are valid negatives (``tools/check_dataset.py`` lists them).
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    dirname = os.fspath(dirname)
    class_to_id = _class_index(class_names)
    class_names = tuple(class_names)
    annotation_dir = os.path.join(dirname, "Annotations")
    image_dir = os.path.join(dirname, "JPEGImages")
    dicts, skipped = [], 0
    for image_id in read_voc_split(dirname, split):
        xml_path = annotation_dir + os.sep + image_id + ".xml"  # ids hold no separator (read_voc_split)
        try:
            dicts.append(_parse(xml_path, class_to_id, class_names, image_id=image_id, image_dir=image_dir))
        except BadSampleError as err:
            if on_bad == "error":
                raise
            skipped += 1
            logger.warning("skipping %s: %s [%s]", err.path, err.problem, err.kind)
            if problems is not None:
                problems.append(err.as_record())
    if skipped:
        logger.warning("%s split %r: skipped %d bad file(s), kept %d", dirname, split, skipped, len(dicts))
    return dicts


def register_voc(name: str, dirname, split: str, class_names: Sequence[str], *, year=None,
                 evaluator_type: str = "voc", eval_classes: Sequence[str] | None = None,
                 use_07_metric: bool = False) -> None:
    """Register a VOC-format split as ``name``; files are read when ``DatasetCatalog.get(name)`` is called.

    ``eval_classes`` restricts evaluation to a subset of ``class_names`` (e.g. Watercolor's 6); None
    evaluates all of them.
    """
    class_names = tuple(class_names)
    _class_index(class_names)
    if eval_classes is not None:
        eval_classes = list(eval_classes)
        unknown = [c for c in eval_classes if c not in class_names]
        if unknown:
            raise ValueError(f"dataset {name!r}: eval_classes {unknown} are not in class_names {list(class_names)}")
    dirname = os.fspath(dirname)

    def load(on_bad: str = "error", problems: list | None = None) -> list[dict]:
        return load_voc_instances(dirname, split, class_names, on_bad=on_bad, problems=problems)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(class_names), dirname=dirname, split=split, year=year,
        evaluator_type=evaluator_type, eval_classes=eval_classes, use_07_metric=use_07_metric,
    )
