"""lossmix.data.voc: values off the reader's common path (padded, written as floats, infinite) read or refused
exactly as the per-field checks say."""
import pytest

from lossmix.data.voc import parse_voc_xml

from .test_voc import CLASSES, obj_xml, parse_error, voc_xml, write_xml


def test_padded_and_float_written_values_read_like_plain_ones(tmp_path):
    text = voc_xml([obj_xml("dog", (" 11 ", "21.0", "50", " 60"), difficult=" 1 ", truncated=" 0\n")],
                   width="100.0", height=" 80 ")
    record = parse_voc_xml(write_xml(tmp_path, "p", text), CLASSES)
    assert (record["height"], record["width"]) == (80, 100)
    assert record["annotations"] == [{"bbox": [10.0, 20.0, 50.0, 60.0], "bbox_mode": record["annotations"][0]["bbox_mode"],
                                      "category_id": 1, "difficult": 1, "truncated": 0}]
    plain = parse_voc_xml(write_xml(tmp_path, "q", voc_xml([obj_xml("dog", (11, 21, 50, 60), 1, 0)])), CLASSES)
    assert plain["annotations"] == record["annotations"]


@pytest.mark.parametrize("box, fragment", [
    ((1, "inf", 4, 5), "<ymin> is not a finite number: 'inf'"),
    (("-inf", 1, 4, 5), "<xmin> is not a finite number: '-inf'"),
    ((1, 1, 4, ""), "missing <ymax>"),
])
def test_infinite_or_empty_box_values_are_refused(tmp_path, box, fragment):
    err = parse_error(write_xml(tmp_path, "i", voc_xml([obj_xml("cat", box)])))
    assert err.kind == "missing_field" and fragment in err.problem and "object #0 (cat)" in err.problem


@pytest.mark.parametrize("width, fragment", [("abc", "<width> is not a finite number"), ("", "missing <width>")])
def test_unreadable_size_is_refused(tmp_path, width, fragment):
    err = parse_error(write_xml(tmp_path, "s", voc_xml(width=width)))
    assert err.kind == "missing_field" and fragment in err.problem


def test_odd_truncated_is_left_out(tmp_path):
    record = parse_voc_xml(write_xml(tmp_path, "t", voc_xml([obj_xml("cat", (1, 1, 4, 5), truncated="2")])), CLASSES)
    assert "truncated" not in record["annotations"][0]
