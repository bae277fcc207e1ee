"""Frontend output contract, the same for every frontend name."""
import cv2
import numpy as np
import pytest

from conftest import data_path
from kp2d_ros.config import FrontendConfig
from kp2d_ros.errors import DataError, ModelError
from kp2d_ros.frontend import build_frontend
from kp2d_ros.frontend_common import grid_select, to_input_pixels
from kp2d_ros.types import Features

FRONTENDS = ["orb", "sift", "kp2d"]  # the contract every frontend meets (kp2d skips without weights)
CLASSICAL = ["orb", "sift"]  # grey input, grid bucketing, no detections on a flat image


def textured_image(w=400, h=300, seed=0):
    """RGB uint8 image with corners and blobs at every scale."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2.0)
    img = cv2.normalize(img, None, 0, 160, cv2.NORM_MINMAX)
    for _ in range(60):
        x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        s = int(rng.integers(5, 30))
        cv2.rectangle(img, (x, y), (x + s, y + s), float(rng.uniform(0, 255)), -1)
    grey = img.astype(np.uint8)
    return np.stack([grey, np.roll(grey, 1, axis=0), grey], axis=2)


def frontend(name, **kw):
    try:
        return build_frontend(FrontendConfig(type=name, **kw))
    except ModelError as e:  # a learned frontend without weights in this checkout
        pytest.skip(str(e))


@pytest.mark.parametrize("name", FRONTENDS)
def test_output_contract(name):
    img = textured_image()
    fe = frontend(name, num_features=500)
    f = fe.detect(img)
    assert isinstance(f, Features) and fe.name == name
    n = len(f)
    assert 50 < n <= 500
    assert f.keypoints.shape == (n, 2) and f.keypoints.dtype == np.float32
    assert f.scores.shape == (n,) and f.scores.dtype == np.float32
    assert f.descriptors.shape[0] == n
    h, w = img.shape[:2]
    assert np.all(f.keypoints >= -0.5) and np.all(f.keypoints[:, 0] <= w - 0.5) and np.all(f.keypoints[:, 1] <= h - 0.5)
    if f.binary:
        assert f.descriptors.dtype == np.uint8
    else:
        assert f.descriptors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("name", CLASSICAL)
def test_grey_and_rgb_agree(name):
    rgb = textured_image(seed=1)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    fe = frontend(name, num_features=300)
    a, b = fe.detect(rgb), fe.detect(grey)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    assert len(fe.detect(grey[:, :, None])) == len(b)


@pytest.mark.parametrize("name", FRONTENDS)
def test_resolution_maps_back_to_input_pixels(name):
    big = cv2.cvtColor(textured_image(w=640, h=480, seed=2), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(big, (320, 240), interpolation=cv2.INTER_AREA)
    at_half = frontend(name, num_features=300, resolution=[320, 240]).detect(big)
    direct = frontend(name, num_features=300).detect(small)
    assert len(at_half) == len(direct) > 0
    np.testing.assert_allclose(at_half.keypoints, (direct.keypoints + 0.5) * 2.0 - 0.5, atol=1e-3)
    assert at_half.keypoints[:, 0].max() > 320  # spread over the whole input image


@pytest.mark.parametrize("name", CLASSICAL)
def test_grid_bucketing_spreads_keypoints(name):
    img = textured_image(seed=3)
    img[150:, :] //= 6  # weak texture in the bottom half
    img[:150, 200:] //= 3  # and in the top-right quarter: the strongest corners are top-left
    plain = frontend(name, num_features=200, grid_cols=0, grid_rows=0).detect(img)
    spread = frontend(name, num_features=200, grid_cols=2, grid_rows=2).detect(img)

    def outside_top_left(f):
        return int(np.sum((f.keypoints[:, 0] >= 200) | (f.keypoints[:, 1] >= 150)))

    assert len(plain) <= len(spread) == 200  # the budget is used either way (sparse cells: filled)
    assert outside_top_left(spread) > 1.5 * outside_top_left(plain)  # the weak cells get their share


@pytest.mark.parametrize("name", CLASSICAL)
def test_real_image(name):
    path = data_path("vo", "kitti06_pairs", "image_2", "000012.png")
    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    f = frontend(name, num_features=1000).detect(img)
    assert len(f) == 1000
    # keypoints cover the image (not one corner)
    assert np.ptp(f.keypoints[:, 0]) > 0.8 * img.shape[1]


def test_bad_input_raises():
    fe = build_frontend(FrontendConfig(type="orb"))
    with pytest.raises(DataError):
        fe.detect(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(DataError):
        fe.detect(np.zeros((10, 10), np.float32))


def test_featureless_image_gives_empty_features():
    for name in CLASSICAL:
        f = frontend(name).detect(np.full((100, 100), 128, np.uint8))
        assert len(f) == 0 and f.keypoints.shape == (0, 2)


def test_kp2d_without_weights_is_a_model_error(tmp_path):
    # ModelError whether the network module or only its weights are missing
    with pytest.raises(ModelError):
        build_frontend(FrontendConfig(type="kp2d", model_path=str(tmp_path / "missing.pt"), device="cpu"))


def test_grid_select_and_pixel_mapping():
    xy = np.array([[1, 1], [2, 2], [3, 3], [90, 90], [91, 91]], np.float32)
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.3], np.float32)
    keep = grid_select(xy, scores, (100, 100), 2, 2, 4)  # 1 per cell
    assert keep.tolist() == [1, 4]
    keep = grid_select(xy, scores, (100, 100), 2, 2, 4, fill=True)  # then the best of the rest
    assert keep.tolist() == [1, 4, 2, 3]
    np.testing.assert_allclose(to_input_pixels(np.array([[0.0, 9.0]]), np.array([2.0, 2.0])), [[0.5, 18.5]])


def test_working_scale_resizes_relative_to_the_input():
    from kp2d_ros.frontend_common import resize_to_working

    img = np.zeros((370, 1226), np.uint8)
    work, scale = resize_to_working(img, [0, 0], 1.5)
    assert work.shape == (555, 1839)
    np.testing.assert_allclose(scale, [1226 / 1839, 370 / 555])
    work, scale = resize_to_working(img, [640, 192], 1.5)  # a fixed size wins
    assert work.shape == (192, 640)
    assert resize_to_working(img, [0, 0])[0] is img
