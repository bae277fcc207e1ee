"""Distortion models and rectified streams read from a CameraInfo (YAML, bag), without ROS.

Every case projects known 3D points with OpenCV's own model and checks that
:func:`normalize_points` gives back their rays x/z, y/z, the way cv2.undistortPoints /
cv2.fisheye.undistortPoints do. The node's reading of CameraInfo messages is checked against the
same function in test_ros_conversions.py.
"""
import numpy as np
import pytest

from kp2d_ros.config import CameraConfig
from kp2d_ros.data import open_sequence, write_bag
from kp2d_ros.data.camera_info import camera_from_info
from kp2d_ros.data.camera_yaml import read_camera_yaml, write_camera_yaml
from kp2d_ros.errors import ConfigError, DataError
from kp2d_ros.geometry import UNDISTORT_CRITERIA, normalize_points
from kp2d_ros.types import Camera, Frame

cv2 = pytest.importorskip("cv2")

W, H = 640, 480
K = np.array([[300.0, 0.0, 321.5], [0.0, 302.0, 238.0], [0.0, 0.0, 1.0]])
D_FISHEYE = np.array([-0.02, 0.01, -0.004, 0.001])
D_RATIONAL = np.array([0.8, -0.3, 0.001, -0.002, 0.05, 1.1, -0.2, 0.15])
D_PLUMB = np.array([-0.28, 0.07, 0.0005, -0.0003, 0.0])


def scene(n=200, seed=0, half_fov_deg=50.0) -> np.ndarray:
    """(n, 3) points in front of the camera, up to ``half_fov_deg`` off the optical axis."""
    rng = np.random.default_rng(seed)
    theta = np.radians(rng.uniform(0, half_fov_deg, n))
    phi = rng.uniform(-np.pi, np.pi, n)
    depth = rng.uniform(1.0, 10.0, n)
    return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], 1) * depth[:, None]


def rays(X: np.ndarray) -> np.ndarray:
    return X[:, :2] / X[:, 2:]


def project(X, K_, D_, fisheye=False) -> np.ndarray:
    if fisheye:
        return cv2.fisheye.projectPoints(X.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K_, D_)[0].reshape(-1, 2)
    return cv2.projectPoints(X, np.zeros(3), np.zeros(3), K_, D_)[0].reshape(-1, 2)


def rodrigues(v) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(v, np.float64))[0]


# --------------------------------------------------------------------------------------------
def test_equidistant_rays():
    X = scene(half_fov_deg=80.0)  # beyond what a pinhole/plumb_bob model can describe
    px = project(X, K, D_FISHEYE, fisheye=True)
    cam = camera_from_info(K.ravel(), D_FISHEYE, "equidistant", W, H)
    assert cam.model == "equidistant"
    n = normalize_points(px, cam)
    expected = cv2.fisheye.undistortPoints(px.reshape(-1, 1, 2), K, D_FISHEYE).reshape(-1, 2)
    np.testing.assert_allclose(n, expected, atol=1e-12)
    np.testing.assert_allclose(n, rays(X), rtol=1e-6, atol=1e-6)
    # the old reading (k1..k4 as plumb_bob k1, k2, p1, p2) gives wrong rays
    wrong = normalize_points(px, Camera(K=K, dist=D_FISHEYE, width=W, height=H))
    assert np.max(np.abs(wrong - rays(X))) > 0.1


def test_equidistant_with_zero_coefficients_is_not_a_pinhole():
    X = scene(50, seed=1)
    px = project(X, K, np.zeros(4), fisheye=True)
    cam = camera_from_info(K.ravel(), [0.0] * 4, "equidistant", W, H)
    assert cam.has_distortion
    np.testing.assert_allclose(normalize_points(px, cam), rays(X), atol=1e-6)


def test_rational_polynomial_rays():
    X = scene(seed=2, half_fov_deg=40.0)
    px = project(X, K, D_RATIONAL)
    cam = camera_from_info(K.ravel(), D_RATIONAL, "rational_polynomial", W, H)
    assert cam.model == "rational_polynomial" and cam.dist.size == 8
    n = normalize_points(px, cam)
    expected = cv2.undistortPoints(px.reshape(-1, 1, 2), K, D_RATIONAL, criteria=UNDISTORT_CRITERIA)
    np.testing.assert_allclose(n, expected.reshape(-1, 2), atol=1e-12)
    np.testing.assert_allclose(n, rays(X), atol=1e-8)  # converged: OpenCV's default 5 iterations miss by 7e-4
    # only the first five terms (plumb_bob) are visibly wrong: k4..k6 are used
    five = normalize_points(px, Camera(K=K, dist=D_RATIONAL[:5], width=W, height=H))
    assert np.max(np.abs(five - rays(X))) > 1e-2


def test_rectified_stream_uses_p_and_no_distortion():
    """image_rect: pixels of the rectified camera P (rotated by R from the raw camera)."""
    R = rodrigues([0.02, -0.03, 0.01])
    P = np.hstack([cv2.getOptimalNewCameraMatrix(K, D_PLUMB, (W, H), 0.0)[0], np.zeros((3, 1))])
    X = scene(seed=3, half_fov_deg=35.0)
    raw_px = project(X, K, D_PLUMB)
    rect_px = project(X @ R.T, P[:, :3], np.zeros(5))  # where image_proc's image_rect shows them
    np.testing.assert_allclose(  # (the rectification OpenCV/image_proc does, for the record)
        cv2.undistortPoints(raw_px.reshape(-1, 1, 2), K, D_PLUMB, R=R, P=P, criteria=UNDISTORT_CRITERIA)
        .reshape(-1, 2), rect_px, atol=1e-6)
    cam = camera_from_info(K.ravel(), D_PLUMB, "plumb_bob", W, H, p=P.ravel(), rectified=True)
    assert not cam.has_distortion
    np.testing.assert_allclose(cam.K, P[:, :3])
    n = normalize_points(rect_px, cam)
    np.testing.assert_allclose(n, rays(X @ R.T), atol=1e-8)  # the rectified camera's rays
    # the raw reading of the same message undistorts a second time: wrong rays
    raw_cam = camera_from_info(K.ravel(), D_PLUMB, "plumb_bob", W, H, p=P.ravel(), rectified=False)
    assert np.max(np.abs(normalize_points(rect_px, raw_cam) - rays(X @ R.T))) > 1e-2
    # and the raw stream with the raw reading gives the raw camera's rays
    np.testing.assert_allclose(normalize_points(raw_px, raw_cam), rays(X), atol=1e-8)


def test_rectified_model_need_not_be_supported():
    """A rectified stream is already undistorted: its distortion model does not matter."""
    P = np.hstack([K, np.zeros((3, 1))]).ravel()
    cam = camera_from_info(K.ravel(), [0.1, 0.2, 0.3], "fov", W, H, p=P, rectified=True)
    assert not cam.has_distortion
    with pytest.raises(DataError, match="projection matrix P"):
        camera_from_info(K.ravel(), D_PLUMB, "plumb_bob", W, H, p=np.zeros(12), rectified=True)


@pytest.mark.parametrize("model,d,match", [
    ("fov", [0.9], "unsupported distortion_model 'fov'"),
    ("unified", [0.1, 0.0, 0.0, 0.0, 0.0], "unsupported distortion_model 'unified'"),
    ("", [0.1, 0.0, 0.0, 0.0, 0.0], "unsupported distortion_model ''"),
    ("equidistant", [0.1, 0.0, 0.0, 0.0, 0.0], "equidistant takes 4 coefficients, got 5"),
    ("plumb_bob", [0.1, 0.0, 0.0], "plumb_bob takes 4, 5, 8, 12, 14 coefficients, got 3"),
])
def test_unknown_models_and_counts_refused(model, d, match):
    with pytest.raises(DataError, match=match) as e:
        camera_from_info(K.ravel(), d, model, W, H)
    if "unsupported" in match:  # the message says what is supported
        assert "plumb_bob, rational_polynomial, equidistant" in str(e.value)


def test_no_distortion_names_are_a_pinhole():
    for model, d in (("", []), ("none", [0.0] * 5), ("plumb_bob", []), ("radtan", [0.0] * 4)):
        cam = camera_from_info(K.ravel(), d, model, W, H)
        assert cam.model == "plumb_bob" and not cam.has_distortion, model


def test_scaled_camera_keeps_the_model_and_the_rays():
    cam = camera_from_info(K.ravel(), D_FISHEYE, "equidistant", W, H)
    half = cam.scaled_to(W // 2, H // 2)
    assert half.model == "equidistant"
    X = scene(50, seed=4, half_fov_deg=70.0)
    px = project(X, K, D_FISHEYE, fisheye=True)
    np.testing.assert_allclose(normalize_points((px + 0.5) * 0.5 - 0.5, half), rays(X), atol=1e-6)


# --------------------------------------------------------------------------------------------
# the folder and bag readers read a calibration as the node does
# --------------------------------------------------------------------------------------------
def _tum_folder(root, camera: Camera, P: np.ndarray | None = None):
    (root / "rgb").mkdir(parents=True)
    img = np.random.default_rng(0).integers(0, 255, (H, W), dtype=np.uint8)
    cv2.imwrite(str(root / "rgb" / "0.png"), img)
    cv2.imwrite(str(root / "rgb" / "1.png"), img)
    (root / "rgb.txt").write_text("1.0 rgb/0.png\n1.1 rgb/1.png\n")
    write_camera_yaml(camera, root / "camera.yaml")
    if P is not None:  # a calibration with a rectified projection
        text = (root / "camera.yaml").read_text().splitlines()
        text = [f"projection_matrix: {{rows: 3, cols: 4, data: {list(map(float, P.ravel()))}}}"
                if line.startswith("projection_matrix") else line for line in text]
        (root / "camera.yaml").write_text("\n".join(text) + "\n")
    return root


def test_camera_yaml_round_trip_each_model(tmp_path):
    for i, (model, d) in enumerate((("plumb_bob", D_PLUMB), ("rational_polynomial", D_RATIONAL),
                                    ("equidistant", D_FISHEYE))):
        cam = camera_from_info(K.ravel(), d, model, W, H)
        write_camera_yaml(cam, tmp_path / f"{i}.yaml")
        back = read_camera_yaml(tmp_path / f"{i}.yaml")
        assert back.model == model
        np.testing.assert_array_equal(back.dist, d)
        np.testing.assert_array_equal(back.K, K)


def test_folder_reader_fisheye_and_rectified(tmp_path):
    fisheye = camera_from_info(K.ravel(), D_FISHEYE, "equidistant", W, H)
    seq = open_sequence(_tum_folder(tmp_path / "fish", fisheye))
    assert seq.camera.model == "equidistant"
    np.testing.assert_array_equal(seq.camera.dist, D_FISHEYE)

    P = np.hstack([np.array([[250.0, 0, 320.0], [0, 250.0, 240.0], [0, 0, 1]]), np.zeros((3, 1))])
    plumb = camera_from_info(K.ravel(), D_PLUMB, "plumb_bob", W, H)
    root = _tum_folder(tmp_path / "rect", plumb, P)
    raw = open_sequence(root)
    np.testing.assert_array_equal(raw.camera.K, K)
    rect = open_sequence(root, camera=CameraConfig(rectified=True))
    np.testing.assert_array_equal(rect.camera.K, P[:, :3])
    assert not rect.camera.has_distortion


def test_folder_reader_scales_a_calibration_of_another_size(tmp_path):
    big = camera_from_info(K.ravel() * [2, 1, 2, 1, 2, 2, 1, 1, 1] + [0, 0, 0.5, 0, 0, 0.5, 0, 0, 0],
                           D_FISHEYE, "equidistant", 2 * W, 2 * H)
    seq = open_sequence(_tum_folder(tmp_path / "d", big))
    assert (seq.camera.width, seq.camera.height) == (W, H)
    np.testing.assert_allclose(seq.camera.K, K)  # (c + 0.5) * 0.5 - 0.5 undoes 2 c + 0.5


def test_bag_reader_fisheye_and_rectified(tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (H, W), dtype=np.uint8)
    fisheye = camera_from_info(K.ravel(), D_FISHEYE, "equidistant", W, H)
    frames = [Frame(image=img, camera=fisheye, stamp=1.0 + 0.1 * i, index=i) for i in range(2)]
    bag = write_bag(tmp_path / "bag", frames, encoding="mono8", gt_topic=None)
    cam = open_sequence(bag).camera
    assert cam.model == "equidistant"
    np.testing.assert_array_equal(cam.dist, D_FISHEYE)
    # write_bag's P is [K | 0]: the rectified reading takes it, without distortion
    rect = open_sequence(bag, camera=CameraConfig(rectified=True)).camera
    np.testing.assert_array_equal(rect.K, K)
    assert not rect.has_distortion


def test_bag_reader_refuses_an_unknown_model(tmp_path, monkeypatch):
    import kp2d_ros.data.bag_writer as bw

    img = np.zeros((H, W), np.uint8)
    cam = camera_from_info(K.ravel(), D_PLUMB, "plumb_bob", W, H)
    monkeypatch.setattr(bw, "info_model_name", lambda c: "kannala_brandt")
    bag = write_bag(tmp_path / "bag", [Frame(image=img, camera=cam, stamp=1.0)], encoding="mono8", gt_topic=None)
    with pytest.raises(DataError, match="unsupported distortion_model 'kannala_brandt'"):
        open_sequence(bag)


# --------------------------------------------------------------------------------------------
def test_config_distortion_model():
    CameraConfig(fx=1.0, fy=1.0, distortion=[0.0] * 4, distortion_model="equidistant").validate()
    with pytest.raises(ConfigError, match="camera.distortion_model"):
        CameraConfig(distortion_model="fisheye").validate()
    with pytest.raises(ConfigError, match="equidistant takes 4 coefficients, got 5"):
        CameraConfig(distortion_model="equidistant").validate()
