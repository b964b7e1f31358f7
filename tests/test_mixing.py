"""Mixing maths and the weight contract (lossmix/data/mixing.py)."""
import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lossmix.data import mixing as M


def _sample(img, boxes, classes=None, weights=None):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if classes is None:
        classes = np.arange(len(boxes), dtype=np.int64)
    out = {"image": img, "boxes": boxes, "classes": np.asarray(classes, dtype=np.int64)}
    if weights is not None:
        out["weights"] = np.asarray(weights, dtype=np.float32)
    return out


def _const(h, w, value):
    return np.full((h, w, 3), value, dtype=np.uint8)


def _random_image(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- lambda
def test_sample_lambda_range_and_determinism():
    a = [M.sample_lambda(0.5, np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    draws = [M.sample_lambda(1.5, rng) for _ in range(200)]
    assert all(isinstance(d, float) and 0.0 <= d <= 1.0 for d in draws)
    assert abs(np.mean(draws) - 0.5) < 0.08  # symmetric Beta


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_sample_lambda_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError):
        M.sample_lambda(alpha, np.random.default_rng(0))


# ---------------------------------------------------------------------------- mixup
def test_mixup_canvas_and_exact_pixels_different_sizes():
    a = _const(2, 3, 200)  # 2 rows, 3 cols
    b = _const(3, 2, 100)  # 3 rows, 2 cols
    out = M.mixup_images(a, b, 0.25)
    assert out.shape == (3, 3, 3) and out.dtype == np.uint8
    expected = np.array([[125, 125, 50],
                         [125, 125, 50],
                         [75, 75, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 1], expected)
    np.testing.assert_array_equal(out[..., 2], expected)


@pytest.mark.parametrize("shape_a,shape_b", [((5, 7), (5, 7)), ((5, 7), (3, 9)), ((3, 4), (6, 8)),
                                             ((6, 8), (3, 4)), ((4, 4), (7, 4)), ((1, 1), (2, 3))])
def test_mixup_matches_reference(shape_a, shape_b):
    rng = np.random.default_rng(1)
    a = _random_image(rng, *shape_a)
    b = _random_image(rng, *shape_b)
    lam = 0.3
    h, w = max(shape_a[0], shape_b[0]), max(shape_a[1], shape_b[1])
    pa = np.zeros((h, w, 3)); pa[:shape_a[0], :shape_a[1]] = a
    pb = np.zeros((h, w, 3)); pb[:shape_b[0], :shape_b[1]] = b
    ref = lam * pa + (1 - lam) * pb
    out = M.mixup_images(a, b, lam)
    assert out.shape == (h, w, 3)
    not_tie = np.abs(ref - np.floor(ref) - 0.5) > 1e-3  # OpenCV rounds ties to even
    np.testing.assert_array_equal(out[not_tie], np.rint(ref[not_tie]).astype(np.uint8))
    assert np.abs(out.astype(float) - ref).max() <= 0.5 + 1e-6


def test_mixup_extreme_lambdas_return_one_image_exactly():
    rng = np.random.default_rng(2)
    a, b = _random_image(rng, 4, 6), _random_image(rng, 7, 3)
    out1 = M.mixup_images(a, b, 1.0)
    out0 = M.mixup_images(a, b, 0.0)
    np.testing.assert_array_equal(out1, a)
    np.testing.assert_array_equal(out0, b)
    assert not np.shares_memory(out1, a)


def test_mixup_rejects_bad_input():
    a = _const(2, 2, 1)
    with pytest.raises(ValueError):
        M.mixup_images(a, a, 1.5)
    with pytest.raises(ValueError):
        M.mixup_images(a.astype(np.float32), a, 0.5)


# ---------------------------------------------------------------------------- patches
def test_rand_patch_inside_and_area():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        lam = float(rng.uniform())
        x1, y1, x2, y2 = M.rand_patch(h, w, lam, rng)
        assert all(isinstance(v, int) for v in (x1, y1, x2, y2))
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        # clipping can only shrink the patch below the target area
        assert (x2 - x1) * (y2 - y1) <= (1 - lam) * h * w + 1e-6
        assert M.patch_lambda((x1, y1, x2, y2), h, w) >= lam - 1e-9


def test_rand_patch_unclipped_size():
    # a centred patch (no clipping) has timm's side lengths
    h, w, lam = 100, 200, 0.75
    for seed in range(50):
        x1, y1, x2, y2 = M.rand_patch(h, w, lam, np.random.default_rng(seed))
        if 0 < x1 and x2 < w and 0 < y1 and y2 < h:
            assert (x2 - x1, y2 - y1) == (100, 50)
            assert M.patch_lambda((x1, y1, x2, y2), h, w) == pytest.approx(0.75)
            break
    else:
        pytest.fail("no unclipped patch drawn in 50 seeds")


def test_patch_lambda_hand_values():
    assert M.patch_lambda((0, 0, 10, 10), 20, 20) == pytest.approx(0.75)
    assert M.patch_lambda((3, 3, 3, 9), 20, 20) == 1.0
    assert M.patch_lambda((0, 0, 20, 20), 20, 20) == 0.0


def test_box_visible_fraction_hand_cases():
    boxes = np.array([[0, 0, 10, 10],     # right half covered
                      [6, 6, 8, 8],       # fully inside the patch
                      [30, 30, 40, 40],   # untouched
                      [0, 0, 10, 10],
                      [2, 2, 2, 8]],      # zero area
                     dtype=np.float32)
    vis = M.box_visible_fraction(boxes, (5, 0, 20, 20))
    assert vis.dtype == np.float32 and vis.shape == (5,)
    np.testing.assert_allclose(vis, [0.5, 0.0, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(M.box_visible_fraction(boxes[:1], (5, 5, 20, 20)), [0.75])
    np.testing.assert_allclose(M.box_visible_fraction(boxes[:1], (2, 2, 4, 7)), [1 - 10 / 100])


def test_clip_boxes_to_patch_exact():
    boxes = np.array([[0, 0, 10, 10], [6, 6, 8, 8], [30, 30, 40, 40], [2.5, 4, 7.5, 30]], dtype=np.float32)
    clipped, kept = M.clip_boxes_to_patch(boxes, (5, 5, 20, 20))
    np.testing.assert_array_equal(clipped, np.array(
        [[5, 5, 10, 10], [6, 6, 8, 8], [20, 20, 20, 20], [5, 5, 7.5, 20]], dtype=np.float32))
    np.testing.assert_allclose(kept, [0.25, 1.0, 0.0, (2.5 * 15) / (5 * 26)], rtol=1e-6)
    assert clipped.dtype == np.float32 and kept.dtype == np.float32


def test_paste_patch_and_size_check():
    a, b = _const(4, 5, 10), _const(4, 5, 200)
    out = M.paste_patch(a, b, (1, 2, 4, 3))
    expected = np.full((4, 5), 10, dtype=np.uint8)
    expected[2:3, 1:4] = 200
    np.testing.assert_array_equal(out[..., 1], expected)
    assert a[2, 1, 0] == 10  # input untouched
    with pytest.raises(ValueError):
        M.paste_patch(a, _const(5, 5, 0), (0, 0, 1, 1))
    with pytest.raises(ValueError):
        M.paste_patch(a, b, (0, 0, 6, 1))


def test_resize_to_scales_boxes():
    img = _const(10, 20, 7)
    boxes = np.array([[0, 0, 20, 10], [5, 2, 10, 4]], dtype=np.float32)
    out, out_boxes = M.resize_to(img, boxes, 30, 10)
    assert out.shape == (30, 10, 3)
    np.testing.assert_allclose(out_boxes, [[0, 0, 10, 30], [2.5, 6, 5, 12]])
    same, same_boxes = M.resize_to(img, boxes, 10, 20)
    assert same is img
    np.testing.assert_array_equal(same_boxes, boxes)


# ---------------------------------------------------------------------------- saliency
def _blob_image(h, w, cx, cy, half, background=80):
    img = _const(h, w, background)
    img[cy - half:cy + half, cx - half:cx + half] = 255
    return img


def test_saliency_map_range_and_size():
    rng = np.random.default_rng(0)
    sal = M.saliency_map(_random_image(rng, 600, 1000), max_side=64)
    assert sal.dtype == np.float32 and max(sal.shape) <= 64
    assert sal.min() == 0.0 and sal.max() == 1.0
    assert M.saliency_map(_const(30, 40, 9)).max() <= 1.0


@pytest.mark.parametrize("cx,cy", [(40, 30), (120, 70), (100, 20)])
def test_saliency_patch_centred_on_blob(cx, cy):
    h, w = 96, 160  # downscale factor 3 at max_side 64: one saliency cell is 3 px
    img = _blob_image(h, w, cx, cy, half=4)
    x1, y1, x2, y2 = M.saliency_patch(img, h, w, 0.9)
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    assert abs((x1 + x2) / 2 - cx) <= 3 and abs((y1 + y2) / 2 - cy) <= 3
    cut_h, cut_w = int(h * np.sqrt(0.1)), int(w * np.sqrt(0.1))
    assert (x2 - x1, y2 - y1) == (cut_w, cut_h)


def test_saliency_patch_full_size_image_and_rescaled_partner():
    # At 600x1000 one saliency cell is ~16 px and spectral residual localises a blob to within
    # about two cells (it responds to the blob's edges), so the tolerance here is 40 px.
    h, w = 600, 1000
    for cx, cy in [(640, 360), (150, 100), (880, 520)]:
        img = _blob_image(h, w, cx, cy, half=20)
        x1, y1, x2, y2 = M.saliency_patch(img, h, w, 0.95)
        assert abs((x1 + x2) / 2 - cx) <= 40 and abs((y1 + y2) / 2 - cy) <= 40
        # the partner may come at another size: the peak is mapped into the (h, w) frame
        small = cv2.resize(img, (500, 300), interpolation=cv2.INTER_AREA)
        x1, y1, x2, y2 = M.saliency_patch(small, h, w, 0.95)
        assert abs((x1 + x2) / 2 - cx) <= 40 and abs((y1 + y2) / 2 - cy) <= 40


def test_saliency_patch_shifted_inside_near_corner():
    h, w = 96, 160
    img = _blob_image(h, w, 6, 6, half=3)
    x1, y1, x2, y2 = M.saliency_patch(img, h, w, 0.5)
    assert (x1, y1) == (0, 0)  # shifted, not clipped: the full size is kept
    assert (x2, y2) == (int(w * np.sqrt(0.5)), int(h * np.sqrt(0.5)))
    img = _blob_image(h, w, 154, 90, half=3)
    x1, y1, x2, y2 = M.saliency_patch(img, h, w, 0.5)
    assert (x2, y2) == (w, h)


@pytest.mark.parametrize("method", M.SALIENCY_METHODS)
@pytest.mark.parametrize("cx,cy,r", [(700, 200, 40), (300, 400, 60), (100, 100, 30), (950, 550, 30)])
def test_saliency_peak_inside_a_bright_object(method, cx, cy, r):
    """One bright disc on a flat 600x1000 background: at the 64-px working size the map's peak lies inside it.

    (700, 200, 40) is the case where fine-grained without reflect padding peaked 160 px away, on the border.
    """
    img = _const(600, 1000, 90)
    cv2.circle(img, (cx, cy), r, (250, 250, 250), -1)
    sal = M.saliency_map(img, max_side=64, method=method)
    k = 600 / sal.shape[0]  # integer downscale factor (16)
    iy, ix = divmod(int(np.argmax(sal)), sal.shape[1])
    py, px = (iy + 0.5) * k, (ix + 0.5) * k
    assert (px - cx) ** 2 + (py - cy) ** 2 <= r ** 2, (method, px, py)


def test_saliency_method_reaches_mix_pair_and_is_checked():
    img = _const(96, 160, 80)
    a = {"image": img, "boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int64)}
    b = {"image": _blob_image(96, 160, 120, 30, half=6), "boxes": np.zeros((0, 4), np.float32),
         "classes": np.zeros(0, np.int64)}
    for method in M.SALIENCY_METHODS:
        out = M.mix_pair(a, b, mode="lossmix", method="saliencymix", lam=0.9, rng=None, saliency=method)
        assert out["patch"] == M.saliency_patch(b["image"], 96, 160, 0.9, method=method)
    with pytest.raises(ValueError, match="unknown saliency method 'itti'"):
        M.mix_pair(a, b, mode="lossmix", method="saliencymix", lam=0.9, rng=None, saliency="itti")
    with pytest.raises(ValueError, match="unknown paste 'fit'"):
        M.mix_pair(a, b, mode="lossmix", method="cutmix", lam=0.9, rng=np.random.default_rng(0), paste="fit")


# ---------------------------------------------------------------------------- aspect-preserving paste
def test_resize_cover_exact_cases():
    # a wide partner onto a square: factor 1, 50 px cropped from each side
    img = np.zeros((100, 200, 3), np.uint8)
    out, boxes = M.resize_cover(img, np.array([[60, 10, 90, 40], [0, 0, 40, 30]], np.float32), 100, 100)
    assert out.shape == (100, 100, 3)
    np.testing.assert_array_equal(boxes, np.array([[10, 10, 40, 40], [0, 0, 0, 30]], np.float32))  # 2nd: cropped away
    # a small wide partner: factor 2 (height decides), then the same crop
    img = np.zeros((50, 100, 3), np.uint8)
    out, boxes = M.resize_cover(img, np.array([[30, 5, 45, 20]], np.float32), 100, 100)
    np.testing.assert_array_equal(boxes, np.array([[10, 10, 40, 40]], np.float32))
    # stretch would have distorted the same box 2:1
    _, stretched = M.resize_to(img, np.array([[30, 5, 45, 20]], np.float32), 100, 100)
    np.testing.assert_array_equal(stretched, np.array([[30, 10, 45, 40]], np.float32))


@settings(max_examples=60, deadline=None)
@given(hb=st.integers(20, 120), wb=st.integers(20, 120), h=st.integers(20, 120), w=st.integers(20, 120),
       px1=st.integers(0, 60), py1=st.integers(0, 60), pw=st.integers(25, 40), ph=st.integers(25, 40))
def test_resize_cover_box_lands_on_its_pixels_with_its_aspect(hb, wb, h, w, px1, py1, pw, ph):
    """A box painted in the partner is where resize_cover says after the resize (to ~1 px), with its aspect.

    (Integer percentages, not floats: torch's flush-denormal setting upsets hypothesis' float strategies.)
    """
    x1, y1 = px1 * wb // 100, py1 * hb // 100
    x2, y2 = x1 + max(4, pw * wb // 100), y1 + max(4, ph * hb // 100)
    img = np.zeros((hb, wb, 3), np.uint8)
    img[y1:y2, x1:x2] = 255
    out, (box,) = M.resize_cover(img, np.array([[x1, y1, x2, y2]], np.float32), h, w)
    assert out.shape == (h, w, 3)
    assert 0 <= box[0] <= box[2] <= w and 0 <= box[1] <= box[3] <= h
    ys, xs = np.nonzero(out[..., 0] >= 128)
    if len(xs) == 0:  # cropped away: the box must be (nearly) empty
        assert (box[2] - box[0]) * (box[3] - box[1]) <= 2.0 * max(h, w)
        return
    assert abs(xs.min() - box[0]) <= 1.0 and abs(xs.max() + 1 - box[2]) <= 1.0
    assert abs(ys.min() - box[1]) <= 1.0 and abs(ys.max() + 1 - box[3]) <= 1.0
    sy, sx = (box[3] - box[1]) / (y2 - y1), (box[2] - box[0]) / (x2 - x1)
    inside = box[0] > 0 and box[1] > 0 and box[2] < w and box[3] < h  # not clipped by the crop
    if inside:  # one factor on both axes, up to the rounding of the scaled size
        assert abs(sx - sy) <= 1.0 / min(hb, wb) + 1e-6
        assert min(sx, sy) >= max(h / hb, w / wb) - 1.0 / min(hb, wb) - 1e-6


def test_mix_pair_keep_aspect_pastes_the_cover_resized_partner():
    a = {"image": _const(100, 100, 10), "boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int64)}
    b_img = np.zeros((50, 100, 3), np.uint8)
    b_img[5:20, 30:45] = 200
    b = {"image": b_img, "boxes": np.array([[30, 5, 45, 20]], np.float32), "classes": np.array([3])}
    rng = np.random.default_rng(0)
    out = M.mix_pair(a, b, mode="lossmix", method="saliencymix", lam=0.0, rng=rng, paste="keep_aspect")
    assert out["patch"] == (0, 0, 100, 100)  # lam 0: the whole partner
    np.testing.assert_array_equal(out["boxes"], np.array([[10, 10, 40, 40]], np.float32))
    assert out["weights"].tolist() == [1.0]
    assert out["image"][25, 25].tolist() == [200, 200, 200] and out["image"][60, 60].tolist() == [0, 0, 0]


def test_saliency_patch_empty_when_lambda_one():
    img = _blob_image(96, 160, 40, 40, half=4)
    x1, y1, x2, y2 = M.saliency_patch(img, 96, 160, 1.0)
    assert (x2 - x1) * (y2 - y1) == 0


# ---------------------------------------------------------------------------- mix_pair
@pytest.fixture
def pair():
    rng = np.random.default_rng(5)
    a = _sample(_random_image(rng, 40, 60), [[0, 0, 10, 10], [20, 5, 50, 35]], [1, 2])
    b = _sample(_random_image(rng, 50, 30), [[2, 2, 12, 22], [0, 30, 30, 50], [5, 5, 6, 6]], [3, 4, 5])
    return a, b


@pytest.mark.parametrize("method", M.METHODS)
@pytest.mark.parametrize("mode", ["lossmix", "uniform"])
def test_lambda_one_equals_no_mixing(pair, mode, method):
    a, b = pair
    a["weights"] = np.array([0.7, 0.0], dtype=np.float32)  # incoming zeros are carried, not dropped
    none = M.mix_pair(a, b, mode="none", method=method, lam=None, rng=None)
    mixed = M.mix_pair(a, b, mode=mode, method=method, lam=1.0, rng=np.random.default_rng(0))
    for key in ("image", "boxes", "classes", "weights", "from_partner"):
        np.testing.assert_array_equal(mixed[key], none[key], err_msg=key)
        assert mixed[key].dtype == none[key].dtype
    assert mixed["lam"] == none["lam"] == 1.0


def test_mixup_weights_and_incoming_weights_multiply(pair):
    a, b = pair
    a["weights"] = np.array([0.5, 0.8], dtype=np.float32)
    b["weights"] = np.array([1.0, 0.25, 0.5], dtype=np.float32)
    out = M.mix_pair(a, b, mode="lossmix", method="mixup", lam=0.6, rng=None)
    np.testing.assert_allclose(out["weights"], [0.3, 0.48, 0.4, 0.1, 0.2], rtol=1e-6)
    np.testing.assert_array_equal(out["classes"], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(out["from_partner"], [False, False, True, True, True])
    np.testing.assert_array_equal(out["boxes"], np.concatenate([a["boxes"], b["boxes"]]))
    np.testing.assert_array_equal(out["image"], M.mixup_images(a["image"], b["image"], 0.6))
    assert out["image"].shape == (50, 60, 3) and out["lam"] == 0.6 and out["patch"] is None


def test_mixup_lambda_zero_keeps_partner_only(pair):
    a, b = pair
    out = M.mix_pair(a, b, mode="lossmix", method="mixup", lam=0.0, rng=None)
    np.testing.assert_array_equal(out["image"], b["image"])
    np.testing.assert_array_equal(out["classes"], [3, 4, 5])
    np.testing.assert_array_equal(out["weights"], [1, 1, 1])


def test_uniform_gives_incoming_weights(pair):
    a, b = pair
    for method in M.METHODS:
        out = M.mix_pair(a, b, mode="uniform", method=method, lam=0.5, rng=np.random.default_rng(1))
        np.testing.assert_array_equal(out["weights"], np.ones(len(out["boxes"]), dtype=np.float32))
        lossmix = M.mix_pair(a, b, mode="lossmix", method=method, lam=0.5, rng=np.random.default_rng(1))
        np.testing.assert_array_equal(out["image"], lossmix["image"])
        np.testing.assert_array_equal(out["boxes"], lossmix["boxes"])
    a["weights"] = np.array([0.9, 0.4], dtype=np.float32)
    out = M.mix_pair(a, b, mode="uniform", method="mixup", lam=0.3, rng=None)
    np.testing.assert_allclose(out["weights"], [0.9, 0.4, 1, 1, 1])


def test_cutmix_weights_are_visible_fractions_hand_computed():
    # A: 40x40; B: 20x20, resized x2 to A's size. A seeded patch is read back from the output and
    # every weight is recomputed by hand from the geometry.
    a = _sample(_const(40, 40, 10), [[0, 0, 10, 10], [0, 0, 40, 40]], [0, 1], [1.0, 0.5])
    b = _sample(_const(20, 20, 250), [[0, 0, 5, 5], [10, 10, 20, 20]], [2, 3])
    out = M.mix_pair(a, b, mode="lossmix", method="cutmix", lam=0.75, rng=np.random.default_rng(4))
    x1, y1, x2, y2 = out["patch"]
    patch_area = (x2 - x1) * (y2 - y1)
    assert out["lam"] == pytest.approx(1 - patch_area / 1600)

    def inter(box):
        return max(0, min(box[2], x2) - max(box[0], x1)) * max(0, min(box[3], y2) - max(box[1], y1))

    b_resized = [[0, 0, 10, 10], [20, 20, 40, 40]]
    expected_w, expected_boxes = [], []
    for box, w in zip(a["boxes"].tolist(), [1.0, 0.5]):
        vis = 1 - inter(box) / ((box[2] - box[0]) * (box[3] - box[1]))
        if vis > 0:
            expected_w.append(w * vis)
            expected_boxes.append(box)
    for box in b_resized:
        kept = inter(box) / ((box[2] - box[0]) * (box[3] - box[1]))
        if kept > 0:
            expected_w.append(kept)
            expected_boxes.append([max(box[0], x1), max(box[1], y1), min(box[2], x2), min(box[3], y2)])
    np.testing.assert_allclose(out["weights"], expected_w, rtol=1e-6)
    np.testing.assert_array_equal(out["boxes"], np.array(expected_boxes, dtype=np.float32).reshape(-1, 4))
    # the pixels: B inside the patch, A elsewhere
    np.testing.assert_array_equal(out["image"][y1:y2, x1:x2], 250)
    assert (out["image"] == 10).sum() == 3 * (1600 - patch_area)
    # the whole-image box of A weighs exactly (incoming 0.5) * (1 - patch share)
    assert out["weights"][1] == pytest.approx(0.5 * out["lam"])


def test_cutmix_known_patch_case(monkeypatch):
    # box (0,0,10,10) with patch (5,0,20,20) -> weight 0.5; partner box clipped exactly
    monkeypatch.setattr(M, "rand_patch", lambda h, w, lam, rng: (5, 0, 20, 20))
    a = _sample(_const(20, 20, 0), [[0, 0, 10, 10], [6, 2, 9, 9]], [0, 1])
    b = _sample(_const(20, 20, 99), [[0, 0, 10, 10], [15, 15, 20, 20]], [2, 3])
    out = M.mix_pair(a, b, mode="lossmix", method="cutmix", lam=0.5, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out["classes"], [0, 2, 3])  # A's box 1 is fully covered: dropped
    np.testing.assert_allclose(out["weights"], [0.5, 0.5, 1.0])
    np.testing.assert_array_equal(out["boxes"], np.array([[0, 0, 10, 10], [5, 0, 10, 10], [15, 15, 20, 20]],
                                                         dtype=np.float32))
    assert out["lam"] == pytest.approx(1 - 300 / 400)
    out = M.mix_pair(a, b, mode="lossmix", method="cutmix", lam=0.5, rng=np.random.default_rng(0),
                     min_visible=0.6)
    np.testing.assert_array_equal(out["classes"], [3])
    out = M.mix_pair(a, b, mode="uniform", method="cutmix", lam=0.5, rng=np.random.default_rng(0),
                     min_visible=0.5)
    np.testing.assert_array_equal(out["classes"], [0, 2, 3])
    np.testing.assert_array_equal(out["weights"], [1, 1, 1])


def test_min_visible_drops(pair):
    a, b = pair
    kwargs = dict(mode="lossmix", method="cutmix", lam=0.4)
    dropped_any = False
    for seed in range(40):
        loose = M.mix_pair(a, b, rng=np.random.default_rng(seed), min_visible=0.0, **kwargs)
        strict = M.mix_pair(a, b, rng=np.random.default_rng(seed), min_visible=0.6, **kwargs)
        assert loose["patch"] == strict["patch"]
        assert np.all(strict["weights"] >= 0.6)  # incoming weights are 1 here
        np.testing.assert_array_equal(strict["classes"], loose["classes"][loose["weights"] >= 0.6])
        dropped_any |= len(strict["classes"]) < len(loose["classes"])
    assert dropped_any


def test_noise_mode(pair):
    a, b = pair
    a["weights"] = np.array([0.9, 0.6], dtype=np.float32)
    out = M.mix_pair(a, b, mode="noise", method="cutmix", lam=0.5, rng=None, noise_weight=0.1)
    np.testing.assert_array_equal(out["image"], M.mixup_images(a["image"], b["image"], 0.9))
    np.testing.assert_array_equal(out["boxes"], a["boxes"])
    np.testing.assert_array_equal(out["classes"], a["classes"])
    np.testing.assert_array_equal(out["weights"], a["weights"])
    assert not out["from_partner"].any()
    assert out["lam"] == pytest.approx(0.9)
    with pytest.raises(ValueError):
        M.mix_pair(a, b, mode="noise", method="mixup", lam=0.5, rng=None)


def test_none_mode_returns_a(pair):
    a, b = pair
    out = M.mix_pair(a, b, mode="none", method="cutmix", lam=0.3, rng=None)
    assert out["image"] is a["image"]
    np.testing.assert_array_equal(out["boxes"], a["boxes"])
    np.testing.assert_array_equal(out["weights"], [1, 1])
    assert out["lam"] == 1.0
    out = M.mix_pair(a, None, mode="none", method="mixup", lam=None, rng=None)  # no partner needed
    np.testing.assert_array_equal(out["classes"], a["classes"])


def test_bad_arguments(pair):
    a, b = pair
    with pytest.raises(ValueError):
        M.mix_pair(a, b, mode="mosaic", method="mixup", lam=0.5, rng=None)
    with pytest.raises(ValueError):
        M.mix_pair(a, b, mode="lossmix", method="mosaic", lam=0.5, rng=None)
    with pytest.raises(ValueError):
        M.mix_pair(a, b, mode="lossmix", method="cutmix", lam=0.5, rng=None)
    with pytest.raises(ValueError):
        M.mix_pair(a, b, mode="lossmix", method="mixup", lam=None, rng=None)
    bad = dict(a, weights=np.array([1.5, 1.0], dtype=np.float32))
    with pytest.raises(ValueError):
        M.mix_pair(bad, b, mode="lossmix", method="mixup", lam=0.5, rng=None)
    with pytest.raises(ValueError):
        M.mix_pair(dict(a, classes=np.array([1])), b, mode="lossmix", method="mixup", lam=0.5, rng=None)


def test_cutmix_patch_follows_the_generator(pair):
    a, b = pair

    def patch(seed):
        return M.mix_pair(a, b, mode="lossmix", method="cutmix", lam=0.55, rng=np.random.default_rng(seed))["patch"]

    assert patch(9) == patch(9)  # same seed, same patch
    assert len({patch(seed) for seed in range(6)}) > 1  # and the generator is what places it


def test_saliencymix_breaks_ties_with_the_generator(pair):
    a, _ = pair
    flat = dict(a, image=_const(a["image"].shape[0], a["image"].shape[1], 90))  # every cell is a peak

    def patch(seed):
        return M.mix_pair(a, flat, mode="lossmix", method="saliencymix", lam=0.55,
                          rng=np.random.default_rng(seed))["patch"]

    assert patch(3) == patch(3) and len({patch(seed) for seed in range(6)}) > 1


def test_mixup_with_a_given_lambda_draws_nothing(pair):
    a, b = pair
    rng = np.random.default_rng(9)
    before = rng.bit_generator.state
    M.mix_pair(a, b, mode="lossmix", method="mixup", lam=0.55, rng=rng)
    assert rng.bit_generator.state == before  # deterministic given lambda: nothing to seed


@pytest.mark.parametrize("mode", M.MODES)
@pytest.mark.parametrize("method", M.METHODS)
def test_empty_boxes_everywhere(mode, method):
    empty = np.zeros((0, 4), dtype=np.float32)
    rng = np.random.default_rng(0)
    a = _sample(_random_image(rng, 30, 40), empty, np.zeros(0))
    b = _sample(_random_image(rng, 20, 50), empty, np.zeros(0))
    out = M.mix_pair(a, b, mode=mode, method=method, lam=0.4, rng=rng, noise_weight=0.2, min_visible=0.3)
    assert out["boxes"].shape == (0, 4) and out["boxes"].dtype == np.float32
    assert out["classes"].shape == (0,) and out["classes"].dtype == np.int64
    assert out["weights"].shape == (0,) and out["weights"].dtype == np.float32
    assert out["from_partner"].shape == (0,) and out["from_partner"].dtype == bool
    # only A has boxes / only B has boxes
    a2 = dict(a, boxes=np.array([[1, 1, 20, 20]], np.float32), classes=np.array([0]))
    out = M.mix_pair(a2, b, mode=mode, method=method, lam=0.4, rng=rng, noise_weight=0.2)
    assert out["boxes"].shape[1] == 4 and not out["from_partner"].any()
    b2 = dict(b, boxes=np.array([[1, 1, 20, 20]], np.float32), classes=np.array([0]))
    out = M.mix_pair(a, b2, mode=mode, method=method, lam=0.4, rng=rng, noise_weight=0.2)
    assert out["boxes"].shape[1] == 4 and out["from_partner"].all()
    if mode in ("lossmix", "uniform") and method == "mixup":
        assert len(out["from_partner"]) == 1  # B's box is kept: all() above is not vacuous
    elif mode in ("none", "noise"):
        assert len(out["from_partner"]) == 0  # B brings no boxes


def test_helpers_accept_empty_boxes():
    empty = np.zeros((0, 4), dtype=np.float32)
    assert M.box_visible_fraction(empty, (0, 0, 5, 5)).shape == (0,)
    clipped, kept = M.clip_boxes_to_patch(empty, (0, 0, 5, 5))
    assert clipped.shape == (0, 4) and kept.shape == (0,)
    img, boxes = M.resize_to(_const(4, 4, 0), empty, 8, 2)
    assert img.shape == (8, 2, 3) and boxes.shape == (0, 4)


# ---------------------------------------------------------------------------- properties
@st.composite
def _boxes(draw, h, w, max_n=6):
    n = draw(st.integers(0, max_n))
    out = []
    for _ in range(n):
        xa, xb = sorted(draw(st.integers(0, w)) for _ in range(2))
        ya, yb = sorted(draw(st.integers(0, h)) for _ in range(2))
        out.append([xa, ya, xb, yb])
    return np.array(out, dtype=np.float32).reshape(-1, 4)


@st.composite
def _mix_case(draw):
    ha, wa, hb, wb = (draw(st.integers(1, 40)) for _ in range(4))
    return {
        "ha": ha, "wa": wa, "hb": hb, "wb": wb,
        "boxes_a": draw(_boxes(ha, wa)),
        "boxes_b": draw(_boxes(hb, wb)),
        # no subnormals: tests/conftest.py makes torch flush denormals for the whole process
        "lam": draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0, allow_subnormal=False))),
        "mode": draw(st.sampled_from(["lossmix", "uniform"])),
        "method": draw(st.sampled_from(M.METHODS)),
        "min_visible": draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])),
        "seed": draw(st.integers(0, 2**16)),
        "incoming": draw(st.booleans()),
    }


def _fractions(boxes, patch):
    """Plain-Python (visible, kept) fractions of each box against a patch."""
    x1, y1, x2, y2 = patch
    visible, kept = [], []
    for bx1, by1, bx2, by2 in np.asarray(boxes, dtype=np.float64).tolist():
        area = (bx2 - bx1) * (by2 - by1)
        inter = max(0.0, min(bx2, x2) - max(bx1, x1)) * max(0.0, min(by2, y2) - max(by1, y1))
        visible.append(1.0 - inter / area if area > 0 else 0.0)
        kept.append(inter / area if area > 0 else 0.0)
    return visible, kept


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_mix_case())
def test_mix_pair_properties(case):
    rng = np.random.default_rng(case["seed"])
    na, nb = len(case["boxes_a"]), len(case["boxes_b"])
    wa_in = rng.uniform(size=na).astype(np.float32) if case["incoming"] else np.ones(na, np.float32)
    wb_in = rng.uniform(size=nb).astype(np.float32) if case["incoming"] else np.ones(nb, np.float32)
    a = _sample(_random_image(rng, case["ha"], case["wa"]), case["boxes_a"], np.arange(na), wa_in)
    b = _sample(_random_image(rng, case["hb"], case["wb"]), case["boxes_b"], 100 + np.arange(nb), wb_in)
    lam, min_visible = case["lam"], case["min_visible"]
    out = M.mix_pair(a, b, mode=case["mode"], method=case["method"], lam=lam,
                     rng=np.random.default_rng(case["seed"]), min_visible=min_visible)

    h, w = out["image"].shape[:2]
    boxes, weights = out["boxes"], out["weights"]
    m = len(boxes)
    assert out["image"].dtype == np.uint8 and out["image"].shape[2] == 3
    assert boxes.shape == (m, 4) and weights.shape == (m,) and out["classes"].shape == (m,)
    assert out["from_partner"].shape == (m,)
    assert np.all((weights >= 0) & (weights <= 1))
    assert np.all(boxes[:, 0] <= boxes[:, 2]) and np.all(boxes[:, 1] <= boxes[:, 3])
    assert np.all(boxes[:, [0, 1]] >= 0)
    assert np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
    assert 0.0 <= out["lam"] <= 1.0
    # A's instances come first, in order, then B's
    from_b = out["from_partner"]
    assert not np.any(from_b[:-1] & ~from_b[1:])
    np.testing.assert_array_equal(out["classes"] >= 100, from_b)

    if case["method"] == "mixup":
        assert (h, w) == ((max(case["ha"], case["hb"]), max(case["wa"], case["wb"])) if 0 < lam < 1
                          else (case["ha"], case["wa"]) if lam == 1 else (case["hb"], case["wb"]))
        factor_a, factor_b = [lam] * na, [1.0 - lam] * nb
        keep_a = [f > 0 for f in factor_a]
        keep_b = [f > 0 for f in factor_b]
    else:
        assert (h, w) == (case["ha"], case["wa"])
        patch = out["patch"]
        assert 0 <= patch[0] <= patch[2] <= w and 0 <= patch[1] <= patch[3] <= h
        scale = np.array([case["wa"] / case["wb"], case["ha"] / case["hb"]] * 2)
        b_resized = np.clip((case["boxes_b"].astype(np.float64) * scale),
                            0, [case["wa"], case["ha"]] * 2).astype(np.float32)
        factor_a, _ = _fractions(case["boxes_a"], patch)
        _, factor_b = _fractions(b_resized, patch)
        for f in factor_a + factor_b:  # stay clear of float ties with the threshold
            assume(f == 0 or abs(f - min_visible) > 1e-9)
        keep_a = [f > 0 and f >= min_visible for f in factor_a]
        keep_b = [f > 0 and f >= min_visible for f in factor_b]
    # the only drops are the documented ones
    assert m == sum(keep_a) + sum(keep_b)
    np.testing.assert_array_equal(out["classes"], np.concatenate(
        [np.arange(na)[keep_a], 100 + np.arange(nb)[keep_b]]).astype(np.int64))
    expected = np.concatenate([wa_in[keep_a] * np.asarray(factor_a)[keep_a] if na else [],
                               wb_in[keep_b] * np.asarray(factor_b)[keep_b] if nb else []])
    if case["mode"] == "uniform":
        expected = np.concatenate([wa_in[keep_a], wb_in[keep_b]])
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)
