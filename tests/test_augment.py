"""Weak (geometric) and strong (photometric) augmentation (lossmix/data/augment.py)."""
import numpy as np
import pytest

from lossmix.data import augment as A


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


BOXES = np.array([[1, 2, 4, 6], [0, 0, 10, 8], [3.5, 1.25, 7.75, 7]], dtype=np.float32)


def test_hflip_box_maths_exact():
    img = _image(8, 10)
    out, boxes = A.hflip(img, BOXES)
    np.testing.assert_array_equal(boxes, np.array([[6, 2, 9, 6], [0, 0, 10, 8], [2.25, 1.25, 6.5, 7]],
                                                  dtype=np.float32))
    np.testing.assert_array_equal(out, img[:, ::-1])
    assert out.flags["C_CONTIGUOUS"]
    # pixels under a box move with it: columns 1..3 go to 6..8
    np.testing.assert_array_equal(out[2:6, 6:9], img[2:6, 1:4][:, ::-1])
    back, back_boxes = A.hflip(out, boxes)
    np.testing.assert_array_equal(back, img)
    np.testing.assert_array_equal(back_boxes, BOXES)
    assert BOXES[0, 0] == 1  # input untouched


def test_resize_shortest_edge_scales_boxes_exactly():
    img = _image(100, 200)
    out, boxes, scale = A.resize_shortest_edge(img, BOXES, 50, 1000)
    assert out.shape == (50, 100, 3) and scale == 0.5
    np.testing.assert_array_equal(boxes, BOXES * 0.5)
    # the longer-side cap wins
    out, boxes, scale = A.resize_shortest_edge(_image(100, 400), BOXES, 100, 200)
    assert out.shape == (50, 200, 3) and scale == 0.5
    np.testing.assert_array_equal(boxes, BOXES * 0.5)
    # rounded sizes: boxes follow the actual per-axis factors
    out, boxes, scale = A.resize_shortest_edge(_image(333, 500), BOXES, 600, 2000)
    assert out.shape == (600, 901, 3) and scale == pytest.approx(600 / 333)
    factor = np.array([901 / 500, 600 / 333, 901 / 500, 600 / 333])
    np.testing.assert_array_equal(boxes, (BOXES.astype(np.float64) * factor).astype(np.float32))
    # no change in size: same image object, equal boxes
    out, boxes, scale = A.resize_shortest_edge(img, BOXES, 100, 1000)
    assert out is img and scale == 1.0
    np.testing.assert_array_equal(boxes, BOXES)


def test_choose_short_edge():
    rng = np.random.default_rng(0)
    draws = {A.choose_short_edge((480, 512, 544), rng) for _ in range(100)}
    assert draws == {480, 512, 544}
    assert A.choose_short_edge((600,), rng) == 600
    with pytest.raises(ValueError):
        A.choose_short_edge((), rng)


def test_weak_augment_geometry_shared_by_two_views():
    weak = A.WeakAugment(short_edges=(64, 80, 96), max_size=200, flip_prob=0.5)
    strong = A.StrongAugment()
    img = _image(120, 180)
    rng = np.random.default_rng(3)
    seen_flip = set()
    for _ in range(20):
        geom = weak.draw_geometry(*img.shape[:2], rng)
        assert isinstance(geom, A.Geometry) and min(geom.out_h, geom.out_w) in (64, 80, 96)
        weak_img, weak_boxes = A.apply_geometry(img, BOXES, geom)
        strong_img, strong_boxes = strong(*A.apply_geometry(img, BOXES, geom), rng)
        assert weak_img.shape == strong_img.shape == (geom.out_h, geom.out_w, 3)
        np.testing.assert_array_equal(weak_boxes, strong_boxes)
        seen_flip.add(geom.flip)
    assert seen_flip == {True, False}


def test_apply_geometry_equals_resize_then_flip():
    img = _image(60, 90)
    geom = A.Geometry(out_h=40, out_w=60, flip=True)
    out, boxes = A.apply_geometry(img, BOXES, geom)
    resized, resized_boxes, _ = A.resize_shortest_edge(img, BOXES, 40, 1000)
    ref, ref_boxes = A.hflip(resized, resized_boxes)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(boxes, ref_boxes)


def test_weak_augment_call_and_flip_probabilities():
    img = _image(50, 100)
    rng = np.random.default_rng(0)
    out, boxes, geom = A.WeakAugment(short_edges=(25,), max_size=1000, flip_prob=0.0)(img, BOXES, rng)
    assert out.shape == (25, 50, 3) and not geom.flip
    np.testing.assert_array_equal(boxes, BOXES * 0.5)
    out, boxes, geom = A.WeakAugment(short_edges=(50,), max_size=1000, flip_prob=1.0)(img, BOXES, rng)
    assert geom.flip and out.shape == img.shape
    np.testing.assert_array_equal(out, img[:, ::-1])
    np.testing.assert_array_equal(boxes[:, [0, 2]], 100 - BOXES[:, [2, 0]])
    with pytest.raises(ValueError):
        A.WeakAugment(short_edges=(), flip_prob=0.5)


def test_weak_augment_deterministic_and_empty_boxes():
    weak = A.WeakAugment(short_edges=(30, 40, 50), max_size=100)
    img = _image(45, 70)
    empty = np.zeros((0, 4), dtype=np.float32)
    runs = [weak(img, empty, np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][2] == runs[1][2]
    assert runs[0][1].shape == (0, 4)
    assert A.hflip(img, empty)[1].shape == (0, 4)
    assert A.resize_shortest_edge(img, empty, 20, 100)[1].shape == (0, 4)


def test_strong_augment_leaves_boxes_and_is_deterministic():
    img = _image(64, 96)
    strong = A.StrongAugment()
    out1, boxes1 = strong(img, BOXES, np.random.default_rng(11))
    out2, boxes2 = strong(img, BOXES, np.random.default_rng(11))
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(boxes1, BOXES)
    assert boxes1 is BOXES
    assert out1.shape == img.shape and out1.dtype == np.uint8
    others = [strong(img, BOXES, np.random.default_rng(s))[0] for s in range(12, 20)]
    assert any(not np.array_equal(o, out1) for o in others)
    assert img.sum() == _image(64, 96).sum()  # input untouched


def test_strong_augment_all_off_is_identity():
    img = _image(32, 48)
    off = A.StrongAugment(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, erasing=())
    np.testing.assert_array_equal(off.apply_image(img, np.random.default_rng(0)), img)


def test_strong_augment_grayscale_and_erasing():
    img = _image(40, 60)
    gray_only = A.StrongAugment(jitter_prob=0.0, grayscale_prob=1.0, blur_prob=0.0, erasing=())
    out = gray_only.apply_image(img, np.random.default_rng(0))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    flat = np.full((40, 60, 3), 7, dtype=np.uint8)
    erase_only = A.StrongAugment(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                                 erasing=((1.0, (0.1, 0.1), (1.0, 1.0)),))
    out = erase_only.apply_image(flat, np.random.default_rng(1))
    changed = np.argwhere((out != 7).any(axis=2))
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
    # one square of ~10% of the area (a few noise pixels may equal 7 by chance)
    assert (y1 - y0 + 1, x1 - x0 + 1) == (15, 15)
    assert len(changed) > 0.9 * 15 * 15


def test_photometric_primitives():
    img = _image(16, 16)
    np.testing.assert_array_equal(A.adjust_brightness(img, 1.0), img)
    np.testing.assert_array_equal(A.adjust_saturation(img, 1.0), img)
    np.testing.assert_array_equal(A.adjust_contrast(img, 1.0), img)
    grey = A.adjust_saturation(img, 0.0)
    assert np.array_equal(grey[..., 0], grey[..., 2])
    flat = A.adjust_contrast(img, 0.0)
    assert flat.min() == flat.max()
    np.testing.assert_array_equal(A.adjust_brightness(img, 0.0), 0)
    # hue: a zero shift round-trips through 8-bit HSV with small error; a pure red turns
    red = np.zeros((2, 2, 3), dtype=np.uint8); red[..., 0] = 255
    assert np.abs(A.adjust_hue(img, 0.0).astype(int) - img).max() <= 8
    shifted = A.adjust_hue(red, 1 / 3)  # a third of a turn: red -> green
    assert shifted[0, 0, 1] == 255 and shifted[0, 0, 0] == 0


def test_geometry_is_frozen():
    geom = A.Geometry(out_h=10, out_w=20, flip=False)
    with pytest.raises(Exception):
        geom.flip = True  # type: ignore[misc]
