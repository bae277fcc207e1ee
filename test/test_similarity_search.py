"""Test-time similarity search: view geometry, picking the right view, and the benchmark's ``-search`` methods."""
import cv2
import numpy as np
import pytest

from kp2d_ros.errors import ConfigError
from kp2d_ros.eval.homography import HomographyPair, evaluate_pair, evaluate_pair_search
from kp2d_ros.similarity_search import detect_in_view, make_view, search_similarity, view_transform
from kp2d_ros.types import Features


def texture(h=240, w=320, seed=0):
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), (w, h),
                      interpolation=cv2.INTER_CUBIC)


def blob(h=60, w=80, x=23.3, y=41.7, sigma=2.0):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))


def centroid_detector(image):
    """One keypoint at the intensity centroid (sub-pixel exact for a blob)."""
    img = image.astype(np.float64)
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    pt = np.array([[(img * xx).sum() / img.sum(), (img * yy).sum() / img.sum()]], np.float32)
    return Features(pt, np.ones((1, 4), np.float32) / 2, np.ones(1, np.float32))


_SIFT = cv2.SIFT_create(nfeatures=400)


def upright_fixed_scale_sift(image):
    """SIFT keypoints described with one orientation and one size: neither rotation nor scale invariant,
    like KeyPointNet."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    kps = _SIFT.detect(grey, None)
    kps = [cv2.KeyPoint(k.pt[0], k.pt[1], 12.0, 0.0, k.response) for k in kps]
    kps, desc = _SIFT.compute(grey, kps)
    desc = desc / np.linalg.norm(desc, axis=1, keepdims=True)
    return Features(np.array([k.pt for k in kps], np.float32), desc.astype(np.float32),
                    np.array([k.response for k in kps], np.float32))


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
@pytest.mark.parametrize("zoom", [1.0, 2.0, 0.5])
def test_views_map_keypoints_back_to_the_original_pixels(turns, zoom):
    image = blob()
    view, A = make_view(image, turns, zoom)
    _, (w, h) = view_transform(80, 60, turns, zoom)
    assert view.shape[:2] == (h, w)
    if turns % 2:
        assert view.shape[:2] == (round(80 * zoom), round(60 * zoom))
    # the blob centre goes where A says, and detect_in_view brings it back
    expected = A @ np.array([23.3, 41.7, 1.0])
    np.testing.assert_allclose(centroid_detector(view).keypoints[0], expected[:2], atol=0.05 * max(zoom, 1))
    back = detect_in_view(centroid_detector, image, turns, zoom).keypoints[0]
    np.testing.assert_allclose(back, [23.3, 41.7], atol=0.05)


def _half_turned(image, turns):
    small = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(np.rot90(small, turns))


@pytest.mark.parametrize("turns", [1, 2])
def test_search_finds_the_turn_and_zoom_a_non_invariant_detector_needs(turns):
    big = texture(480, 640)
    small = _half_turned(big, turns)  # half the size, turned `turns` times counter-clockwise
    res = search_similarity(upright_fixed_scale_sift, big, small)
    # image1 turned (4 - turns) more quarter turns and upsampled 2x looks like image0
    assert (res.quarter_turns, res.zoom) == ((4 - turns) % 4, 2.0)
    assert res.rotation_deg == 90 * res.quarter_turns
    assert res.inliers > 3 * res.candidates[(0, 1.0)] and res.inliers >= 30
    assert len(res.candidates) == 12
    # swapped: image0 is the small one, so image0 is upsampled instead (zoom < 1)
    res = search_similarity(upright_fixed_scale_sift, small, big, zooms=(1.0, 0.5))
    assert (res.quarter_turns, res.zoom) == (turns, 0.5)
    # keypoints stay in each image's own pixels
    assert res.features0.keypoints[:, 0].max() < small.shape[1] and res.features1.keypoints[:, 0].max() < 640


def test_search_fundamental_model_and_bad_grids():
    big = texture(480, 640)
    res = search_similarity(upright_fixed_scale_sift, big, _half_turned(big, 2), (0, 2), (1.0, 2.0), "fundamental", 1.0)
    assert (res.quarter_turns, res.zoom) == (2, 2.0)
    for kwargs in ({"quarter_turns": ()}, {"quarter_turns": (4,)}, {"zooms": (0.0,)}, {"model": "affine"}):
        with pytest.raises(ConfigError):
            search_similarity(upright_fixed_scale_sift, big, big, **kwargs)


def test_benchmark_search_method_recovers_a_turned_pair():
    image0 = texture()
    image1, H = make_view(image0, 2, 1.0)  # turned 180 deg: H maps image0 pixels to image1 pixels
    pair = HomographyPair("turned", 2, image0, image1, H)
    plain = evaluate_pair(pair, upright_fixed_scale_sift)
    searched = evaluate_pair_search(pair, upright_fixed_scale_sift, zooms=(1.0,))
    assert plain.corner_error > 5 and plain.view_rotation_deg is None
    assert searched.corner_error < 1 and searched.view_rotation_deg == 180 and searched.view_zoom == 1.0
    assert searched.repeatability > 0.5 and searched.matching_score > plain.matching_score + 0.3


def test_cli_search_options(tmp_path, capsys):
    import json

    from kp2d_ros.cli import main
    from kp2d_ros.cli.eval_homography import parse_search

    assert parse_search("0,90,180,270", "1,2,4") == ((0, 1, 2, 3), (1.0, 2.0, 4.0))
    with pytest.raises(ConfigError):
        parse_search("0,45", "1")
    seq = tmp_path / "seq"
    seq.mkdir()
    image0 = texture()
    image1, H = make_view(image0, 2, 1.0)
    cv2.imwrite(str(seq / "img1.png"), image0)
    cv2.imwrite(str(seq / "img2.png"), image1)
    np.savetxt(seq / "H1to2p", H)
    out = tmp_path / "r.json"
    assert main(["eval-homography", str(seq), "--methods", "sift,sift-search", "--search-zooms", "1",
                 "--search-rotations", "0,180", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["sift-search"]["pairs"][0]["view_rotation_deg"] in (0, 180)
    assert res["sift-search"]["settings"]["search"]["rotations_deg"] == [0, 180]
    assert "sift-search" in capsys.readouterr().out
    assert main(["eval-homography", str(seq), "--methods", "sift-search", "--search-rotations", "30"]) == 2


def test_shipped_network_needs_the_search_on_a_real_turned_pair(data_dir):
    """Oxford bark 1->3 (149 deg, 1.8x zoom): the plain network fails, the search turns image 2 by 180 deg."""
    from pathlib import Path

    from conftest import data_path
    from kp2d_ros.eval.homography import kp2d_detector, read_pairs, resize_pair

    model = Path(__file__).resolve().parents[1] / "models" / "keypoint_net.pt"
    pair = resize_pair(read_pairs(data_path("homography", "bark"))[1], 320, 240)
    assert pair.index == 3
    detect = kp2d_detector(str(model), 300)
    plain = evaluate_pair(pair, detect)
    searched = evaluate_pair_search(pair, detect, zooms=(1.0, 2.0))
    assert plain.corner_error > 10 and plain.matching_score < 0.05
    assert searched.view_rotation_deg == 180 and searched.corner_error < 3 and searched.matching_score > 0.4
