"""Homography benchmark: metrics on synthetic pairs with a known homography, folder layouts, CLI."""
import json

import cv2
import numpy as np
import pytest

from conftest import data_path
from kp2d_ros.errors import DataError
from kp2d_ros.matching import mutual_nearest
from kp2d_ros.eval.homography import (HomographyPair, corner_error, evaluate_features, evaluate_homography,
                                      evaluate_pair, find_sequences, matching_score, repeatability, resize_pair,
                                      to_json)
from kp2d_ros.types import Features

H_TRUE = np.array([[0.9, 0.05, 12.0], [-0.04, 0.95, 6.0], [1e-4, -5e-5, 1.0]])


def texture(h=240, w=320, seed=0):
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), (w, h),
                      interpolation=cv2.INTER_CUBIC)


def synthetic_pair(H=H_TRUE, seed=0):
    img0 = texture(seed=seed)
    img1 = cv2.warpPerspective(img0, H, (320, 240))
    return HomographyPair("synthetic", 2, img0, img1, H)


def perfect_detector(pair, n=200, seed=0):
    """Keypoints of image0 and their exact images under H in image1, shared random descriptors."""
    rng = np.random.default_rng(seed)
    kp0 = np.stack([rng.uniform(5, 314, n), rng.uniform(5, 234, n)], 1)
    desc = rng.normal(size=(n, 64)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    kp1 = cv2.perspectiveTransform(kp0[None], pair.H)[0]
    inside = (kp1[:, 0] >= 0) & (kp1[:, 0] <= 319) & (kp1[:, 1] >= 0) & (kp1[:, 1] <= 239)
    f0 = Features(kp0.astype(np.float32), desc, np.ones(n, np.float32))
    f1 = Features(kp1[inside].astype(np.float32), desc[inside], np.ones(inside.sum(), np.float32))
    return lambda image: f0 if image is pair.image0 else f1


def test_perfect_keypoints_give_repeatability_one_and_c1():
    pair = synthetic_pair()
    m = evaluate_pair(pair, perfect_detector(pair))
    assert m.repeatability == pytest.approx(1.0)
    assert m.localization_error < 1e-3
    assert m.corner_error < 1.0
    assert m.matching_score == pytest.approx(1.0)


def test_noisy_keypoints_lower_the_metrics():
    pair = synthetic_pair()
    base = perfect_detector(pair)
    rng = np.random.default_rng(1)
    f1 = base(pair.image1)
    noisy = Features(f1.keypoints + rng.normal(0, 6, f1.keypoints.shape).astype(np.float32), f1.descriptors, f1.scores)
    m = evaluate_pair(pair, lambda im: base(im) if im is pair.image0 else noisy)
    assert m.repeatability < 0.7 and m.matching_score < 0.7
    assert m.localization_error > 0.5


def feats(points, scores, desc=None):
    pts = np.asarray(points, np.float32)
    d = np.eye(len(pts), 8, dtype=np.float32) if desc is None else np.asarray(desc, np.float32)
    return Features(pts, d / np.linalg.norm(d, axis=1, keepdims=True), np.asarray(scores, np.float32))


SHIFT = np.array([[1, 0, 100.0], [0, 1, 0], [0, 0, 1]])  # image0 x -> x + 100 in image1 (both 320 x 240)


def test_repeatability_filters_visibility_before_the_top_k():
    """The reference protocol: keep the keypoints visible in the other image, then the top-k.

    image0: two high-score keypoints leave image1 (x + 100 >= 320), two low-score ones stay;
    image1: a top-score keypoint maps outside image0 (x - 100 < 0). With top-2 after the filter the sets are
    image0 -> image1 (110, 10), (120, 50) and image1 (110, 11), (124, 50): one pair 1 px apart is repeated
    both ways, the other is 4 px apart (> 3): repeatability 2 / 4, localization error 1 px. Taking the top-2
    first (the former protocol) would keep no visible image0 keypoint at all (repeatability 0).
    """
    f0 = feats([[250, 10], [260, 20], [10, 10], [20, 50]], [0.9, 0.8, 0.5, 0.4])
    f1 = feats([[50, 100], [110, 11], [124, 50]], [0.95, 0.9, 0.8])
    rep, loc = repeatability(f0, f1, SHIFT, (240, 320), (240, 320), top_k=2)
    assert rep == pytest.approx(0.5) and loc == pytest.approx(1.0)
    rep, loc = repeatability(f0, f1, SHIFT, (240, 320), (240, 320), top_k=1)  # (110, 10) vs (110, 11)
    assert rep == pytest.approx(1.0) and loc == pytest.approx(1.0)


def test_matching_score_measures_in_the_query_image_with_the_matched_points_visibility():
    """H zooms 2x, so a 2 px error in image0 is 4 px in image1 (threshold 3 px).

    A (50, 50) <-> A' (102, 100): 1 px in image0, 2 px in image1; B (70, 40) <-> B' (144, 80): 2 px / 4 px;
    D (10, 150) leaves image1 (-> (20, 300)) and its descriptor is nearest to A'.
    image0 -> image1: matches A-A', B-B', D-A' projected back into image0 are all inside it; A and B are
    within 3 px of their queries, D is not: 2 / 3. image1 -> image0: A', B' match A, B, whose images lie in
    image1 at 2 px and 4 px: 1 / 2. Score (2/3 + 1/2) / 2 = 7/12. (The former definition, the error in the
    target image with the query's visibility, gave (1/2 + 2/2) / 2 = 3/4.)
    """
    zoom = np.diag([2.0, 2.0, 1.0])
    e = np.eye(8, dtype=np.float32)
    f0 = feats([[50, 50], [70, 40], [10, 150]], [0.9, 0.8, 0.7], [e[0], e[1], 0.95 * e[0] + 0.31 * e[2]])
    f1 = feats([[102, 100], [144, 80]], [0.9, 0.8], [e[0], e[1]])
    ms = matching_score(f0, f1, zoom, (240, 320), (240, 320), top_k=None)
    assert ms == pytest.approx(7 / 12)


def test_homography_correctness_keeps_shared_points_before_the_top_k():
    """Eight exact correspondences with low scores, four high-score image0 keypoints outside image1 whose
    descriptors equal the first four's: with the visibility filter first, the top-8 are the exact ones and
    the homography is recovered (C1); the top-8 of all keypoints would match four of them wrongly."""
    rng = np.random.default_rng(3)
    good0 = np.stack([rng.uniform(5, 200, 8), rng.uniform(5, 230, 8)], 1)
    bad0 = np.stack([rng.uniform(230, 310, 4), rng.uniform(5, 230, 4)], 1)  # x + 100 > 320: not in image1
    desc = rng.normal(size=(8, 16)).astype(np.float32)
    f0 = feats(np.vstack([good0, bad0]), [0.1] * 8 + [0.9] * 4, np.vstack([desc, desc[:4]]))
    f1 = feats(good0 + [100, 0], [0.5] * 8, desc)
    pair = HomographyPair("shift", 2, np.zeros((240, 320, 3), np.uint8), np.zeros((240, 320, 3), np.uint8), SHIFT)
    m = evaluate_features(pair, f0, f1, top_k=8)
    assert m.corner_error < 1e-3 and m.num_matches == 8
    assert m.repeatability == pytest.approx(1.0) and m.localization_error < 1e-4


def test_corner_error_and_mutual_matches():
    assert corner_error(H_TRUE, H_TRUE, 320, 240) == pytest.approx(0.0)
    shifted = np.array([[1, 0, 2.0], [0, 1, 0], [0, 0, 1]]) @ H_TRUE
    assert corner_error(shifted, H_TRUE, 320, 240) == pytest.approx(2.0)
    assert corner_error(None, H_TRUE, 320, 240) == float("inf")
    d = np.array([[0.1, 0.5], [0.2, 0.9], [0.8, 0.3]])
    i0, i1 = mutual_nearest(d)
    assert list(i0) == [0, 2] and list(i1) == [0, 1]


def test_resize_pair_scales_the_homography():
    pair = synthetic_pair()
    small = resize_pair(pair, 160, 120)
    p = np.array([[100.0, 80.0]])
    full = cv2.perspectiveTransform(p[None], pair.H)[0]
    got = cv2.perspectiveTransform(((p + 0.5) * 0.5 - 0.5)[None], small.H)[0]
    assert np.allclose(got, (full + 0.5) * 0.5 - 0.5)


def write_sequence(folder, layout):
    folder.mkdir(parents=True)
    pair = synthetic_pair()
    for i in range(1, 4):
        H = np.eye(3) if i == 1 else (H_TRUE if i == 2 else np.array([[1, 0, 5.0], [0, 1, -3.0], [0, 0, 1]]))
        img = cv2.cvtColor(cv2.warpPerspective(pair.image0, H, (320, 240)), cv2.COLOR_RGB2BGR)
        name = f"{i}.ppm" if layout == "hpatches" else f"img{i}.png"
        cv2.imwrite(str(folder / name), img)
        if i > 1:
            np.savetxt(folder / (f"H_1_{i}" if layout == "hpatches" else f"H1to{i}p"), H)


def test_layouts_and_classical_methods(tmp_path):
    write_sequence(tmp_path / "root" / "v_synth", "hpatches")
    write_sequence(tmp_path / "root" / "oxford_synth", "oxford")
    assert [p.name for p in find_sequences(tmp_path / "root")] == ["oxford_synth", "v_synth"]
    assert find_sequences(tmp_path / "root" / "v_synth") == [tmp_path / "root" / "v_synth"]
    res = evaluate_homography(tmp_path / "root", ["sift", "orb"], (320, 240), top_k=300)
    assert res["sift"].num_pairs == 4 and len(res["sift"].pairs) == 4 and res["sift"].seconds_per_pair > 0
    assert res["sift"].c3 == 1.0 and res["sift"].repeatability > 0.5
    assert res["orb"].matching_score > 0.2
    out = json.loads(to_json(res, {"top_k": 300}))
    assert set(out) == {"sift", "orb"}
    assert {"repeatability", "localization_error", "c1", "c3", "c5", "matching_score", "pairs"} <= set(out["sift"])


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(DataError):
        find_sequences(tmp_path / "nope")
    with pytest.raises(DataError):
        find_sequences(tmp_path)


def test_cli_eval_homography(tmp_path, capsys):
    from kp2d_ros.cli import main

    write_sequence(tmp_path / "seq", "oxford")
    out = tmp_path / "r.json"
    assert main(["eval-homography", str(tmp_path / "seq"), "--methods", "sift", "--resolution", "160x120",
                 "--top-k", "100", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["sift"]["num_pairs"] == 2
    assert "sift" in capsys.readouterr().out
    assert main(["eval-homography", str(tmp_path / "seq"), "--resolution", "big"]) == 2
    assert main(["eval-homography", str(tmp_path / "seq"), "--methods", "sift", "--top-k", "0"]) == 2
    assert "KP2D reference" in json.loads(out.read_text())["sift"]["settings"]["protocol"]


def test_real_oxford_sequence_sift(data_dir):
    seq = data_path("homography", "ubc")  # JPEG sequence, identity homographies
    res = evaluate_homography(seq, ["sift"], (320, 240), top_k=200)
    assert res["sift"].num_pairs == 5
    assert res["sift"].repeatability > 0.5 and res["sift"].c3 >= 0.8
