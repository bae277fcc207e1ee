"""Message <-> array/pose conversions of the ROS adapter (no ROS graph needed)."""
import math

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy")
from builtin_interfaces.msg import Time  # noqa: E402
from geometry_msgs.msg import Pose  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from kp2d_ros.config import CameraConfig  # noqa: E402
from kp2d_ros.errors import DataError  # noqa: E402
from kp2d_ros.ros import conversions as conv  # noqa: E402
from kp2d_ros.types import Features, PoseEstimate, TrackingStatus  # noqa: E402

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def make_image(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    h, w = arr.shape[:2]
    row = arr.reshape(h, -1).view(np.uint8).reshape(h, -1)
    if bigendian:
        row = arr.astype(">u2").reshape(h, -1).view(np.uint8).reshape(h, -1)
    padded = np.zeros((h, row.shape[1] + pad), np.uint8)
    padded[:, : row.shape[1]] = row
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding,make", [
    ("rgb8", lambda a: a),
    ("bgr8", lambda a: a[:, :, ::-1].copy()),
    ("rgba8", lambda a: np.dstack([a, np.full(a.shape[:2], 9, np.uint8)])),
    ("bgra8", lambda a: np.dstack([a[:, :, ::-1], np.full(a.shape[:2], 9, np.uint8)])),
])
def test_colour_encodings_give_rgb(encoding, make, pad):
    out = conv.image_to_array(make_image(make(RGB), encoding, pad))
    assert out.shape == RGB.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8_with_padding(encoding):
    grey = RGB[:, :, 0].copy()
    np.testing.assert_array_equal(conv.image_to_array(make_image(grey, encoding, pad=5)), grey)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_scaled_to_8bit(encoding, bigendian):
    v = np.array([[0, 257, 65535], [32896, 1000, 514]], np.uint16)
    out = conv.image_to_array(make_image(v, encoding, pad=2, bigendian=bigendian))
    np.testing.assert_array_equal(out, [[0, 1, 255], [128, 4, 2]])


def test_unsupported_encoding_is_named():
    msg = make_image(RGB, "rgb8")
    msg.encoding = "nv21"
    with pytest.raises(DataError, match="nv21"):
        conv.image_to_array(msg)


# Camera-native encodings (USB cameras' YUV 4:2:2, machine-vision cameras' Bayer mosaics), as cv_bridge reads them.
# The bytes are written here by hand from the encodings' definitions, not by the package's encoder.
RED_YUV, BLUE_YUV = (81, 90, 240), (41, 240, 110)  # BT.601 limited range: (Y, U, V) of pure red / pure blue


@pytest.mark.parametrize("encoding,uyvy", [("yuv422", True), ("uyvy", True), ("yuv422_yuy2", False), ("yuyv", False)])
@pytest.mark.parametrize("pad", [0, 4])
def test_yuv422_encodings_give_rgb(encoding, uyvy, pad):
    """A 2x4 image, left pixel pair red, right pair blue: ROS's ``yuv422`` (= ``uyvy``) is U Y0 V Y1, ``yuv422_yuy2``
    (= ``yuyv``, v4l2_camera's YUYV) is Y0 U Y1 V."""
    def pair(yuv):
        y, u, v = yuv
        return [u, y, v, y] if uyvy else [y, u, y, v]

    row = np.array(pair(RED_YUV) + pair(BLUE_YUV), np.uint8)
    padded = np.zeros((2, 8 + pad), np.uint8)
    padded[:, :8] = row
    msg = Image(height=2, width=4, encoding=encoding, is_bigendian=0, step=8 + pad)
    msg.data = padded.tobytes()
    out = conv.image_to_array(msg)
    assert out.shape == (2, 4, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out[:, :2].reshape(-1, 3), [[255, 0, 0]] * 4, atol=3)
    np.testing.assert_allclose(out[:, 2:].reshape(-1, 3), [[0, 0, 255]] * 4, atol=3)


def test_yuv422_needs_an_even_width():
    msg = Image(height=2, width=3, encoding="yuv422", is_bigendian=0, step=6)
    msg.data = bytes(12)
    with pytest.raises(DataError, match="even width"):
        conv.image_to_array(msg)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_encodings_are_demosaiced(pattern, bits):
    """A uniform colour as a Bayer sensor sees it: each pixel keeps the channel its filter passes, the 2x2 tile
    read row by row as the encoding's name (``bayer_rggb8``: R G / G B). Demosaiced, the inside is that colour."""
    colour = {"r": 200, "g": 100, "b": 30}
    tile = np.array([[colour[pattern[0]], colour[pattern[1]]], [colour[pattern[2]], colour[pattern[3]]]])
    mosaic = np.tile(tile, (4, 5)).astype(np.uint8 if bits == 8 else np.uint16)
    if bits == 16:
        mosaic = mosaic * 257
    out = conv.image_to_array(make_image(mosaic, f"bayer_{pattern}{bits}"))
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out[2:-2, 2:-2].reshape(-1, 3), [[200, 100, 30]] * 24, atol=2)


@pytest.mark.parametrize("encoding", ["yuv422", "yuv422_yuy2", "bayer_rggb8", "bayer_gbrg16"])
def test_camera_native_encodings_round_trip(encoding):
    """What the bag writer stores in these encodings reads back as the image (a smooth one: 4:2:2 halves the colour
    resolution and a mosaic keeps one channel a pixel)."""
    from kp2d_ros.data.images import decode_image_msg, encode_image

    y, x = np.mgrid[0:24, 0:32]
    img = np.dstack([60 + 4 * x, 50 + 3 * y, 120 + 2 * x - y]).astype(np.uint8)
    data, step = encode_image(img, encoding)
    msg = Image(height=24, width=32, encoding=encoding, is_bigendian=0, step=step)
    msg.data = data.tobytes()
    out = decode_image_msg(msg)
    np.testing.assert_allclose(out[2:-2, 2:-2].astype(int), img[2:-2, 2:-2].astype(int), atol=4)


@pytest.mark.parametrize("mutate,match", [
    (lambda m: setattr(m, "height", 0), "empty"),
    (lambda m: setattr(m, "width", 0), "empty"),
    (lambda m: setattr(m, "step", 7), "step"),
    (lambda m: setattr(m, "data", bytes(len(m.data) - 1)), "bytes"),
    (lambda m: setattr(m, "data", bytes(len(m.data) + 21)), "bytes"),
])
def test_malformed_images_raise(mutate, match):
    msg = make_image(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(DataError, match=match):
        conv.image_to_array(msg)


def test_array_to_image_round_trip():
    msg = conv.array_to_image(RGB, Image, Time(sec=3, nanosec=5), "cam")
    assert (msg.encoding, msg.step, msg.header.frame_id) == ("rgb8", 21, "cam")
    np.testing.assert_array_equal(conv.image_to_array(msg), RGB)
    grey = conv.array_to_image(RGB[:, :, 1].copy(), Image)
    assert grey.encoding == "mono8"
    np.testing.assert_array_equal(conv.image_to_array(grey), RGB[:, :, 1])


def test_compressed_png_and_garbage():
    ok, buf = cv2.imencode(".png", RGB[:, :, ::-1])
    msg = CompressedImage(format="rgb8; png compressed bgr8")
    msg.data = buf.tobytes()
    np.testing.assert_array_equal(conv.compressed_to_array(msg), RGB)
    msg.data = b"not an image"
    with pytest.raises(DataError, match="decode"):
        conv.compressed_to_array(msg)
    msg.data = b""
    with pytest.raises(DataError, match="empty"):
        conv.compressed_to_array(msg)


def camera_info(k, d=(0.1, 0, 0, 0, 0), w=640, h=480, model="plumb_bob") -> CameraInfo:
    msg = CameraInfo(width=w, height=h, distortion_model=model)
    msg.k = [float(v) for v in k]
    msg.d = [float(v) for v in d]
    return msg


def test_camera_info_valid_and_scaled():
    cam = conv.camera_info_to_camera(camera_info([500, 0, 320, 0, 501, 240, 0, 0, 1]))
    assert cam.K[0, 0] == 500 and cam.K[1, 1] == 501 and cam.dist[0] == pytest.approx(0.1)
    half = conv.camera_for_image(cam, 320, 240)
    assert half.K[0, 0] == 250 and (half.width, half.height) == (320, 240)
    # a point seen at pixel u in the full image is at (u + 0.5) * s - 0.5 in the half-size one (the
    # pixel-centre convention of frontend.py / kp2d_frontend.py), and its ray is unchanged
    X = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0]])
    full_px = cv2.projectPoints(X, np.zeros(3), np.zeros(3), cam.K, cam.dist)[0].reshape(-1, 2)
    half_px = cv2.projectPoints(X, np.zeros(3), np.zeros(3), half.K, half.dist)[0].reshape(-1, 2)
    np.testing.assert_allclose(half_px, (full_px + 0.5) * 0.5 - 0.5, atol=1e-9)


@pytest.mark.parametrize("k,d,match", [
    ([0] * 9, (0,) * 5, "focal"),
    ([math.nan, 0, 320, 0, 500, 240, 0, 0, 1], (0,) * 5, "NaN"),
    ([500, 0, 320, 0, 500, 240, 0, 0, 1], (math.inf, 0, 0, 0, 0), "NaN"),
])
def test_camera_info_invalid(k, d, match):
    with pytest.raises(DataError, match=match):
        conv.camera_info_to_camera(camera_info(k, d))


FISHEYE_D = (-0.02, 0.01, -0.004, 0.001)
RATIONAL_D = (0.8, -0.3, 0.001, -0.002, 0.05, 1.1, -0.2, 0.15)
K0 = [300.0, 0.0, 321.5, 0.0, 302.0, 238.0, 0.0, 0.0, 1.0]


def scene_rays(seed=0, n=100, half_fov_deg=60.0):
    rng = np.random.default_rng(seed)
    th, ph = np.radians(rng.uniform(0, half_fov_deg, n)), rng.uniform(-np.pi, np.pi, n)
    X = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], 1) * rng.uniform(1, 9, n)[:, None]
    return X, X[:, :2] / X[:, 2:]


def test_camera_info_fisheye_rays():
    from kp2d_ros.geometry import normalize_points

    cam = conv.camera_info_to_camera(camera_info(K0, FISHEYE_D, model="equidistant"))
    assert cam.model == "equidistant"
    X, rays = scene_rays(half_fov_deg=80.0)
    K = np.asarray(K0).reshape(3, 3)
    px = cv2.fisheye.projectPoints(X[:, None], np.zeros(3), np.zeros(3), K, np.asarray(FISHEYE_D))[0].reshape(-1, 2)
    n = normalize_points(px, cam)
    np.testing.assert_allclose(n, cv2.fisheye.undistortPoints(px[:, None], K, np.asarray(FISHEYE_D)).reshape(-1, 2),
                               atol=1e-12)
    np.testing.assert_allclose(n, rays, atol=1e-6)


def test_camera_info_rational_polynomial_rays():
    from kp2d_ros.geometry import normalize_points

    cam = conv.camera_info_to_camera(camera_info(K0, RATIONAL_D, model="rational_polynomial"))
    X, rays = scene_rays(seed=1, half_fov_deg=40.0)
    px = cv2.projectPoints(X, np.zeros(3), np.zeros(3), np.asarray(K0).reshape(3, 3), np.asarray(RATIONAL_D))[0]
    np.testing.assert_allclose(normalize_points(px.reshape(-1, 2), cam), rays, atol=1e-8)


def test_camera_info_rectified_uses_p():
    from kp2d_ros.geometry import normalize_points

    msg = camera_info(K0, (-0.28, 0.07, 0.0005, -0.0003, 0.0))
    P = np.array([[250.0, 0, 318.0, 0], [0, 250.0, 241.0, 0], [0, 0, 1, 0]])
    msg.p = P.ravel().tolist()
    cam = conv.camera_info_to_camera(msg, rectified=True)
    np.testing.assert_array_equal(cam.K, P[:, :3])
    assert not cam.has_distortion
    X, rays = scene_rays(seed=2, half_fov_deg=35.0)
    px = cv2.projectPoints(X, np.zeros(3), np.zeros(3), P[:, :3], np.zeros(5))[0].reshape(-1, 2)  # image_rect
    np.testing.assert_allclose(normalize_points(px, cam), rays, atol=1e-9)
    assert not np.allclose(normalize_points(px, conv.camera_info_to_camera(msg)), rays, atol=1e-3)  # twice
    msg.p = [0.0] * 12
    with pytest.raises(DataError, match="projection matrix P"):
        conv.camera_info_to_camera(msg, rectified=True)


@pytest.mark.parametrize("model,d", [("fov", (0.9,)), ("kannala_brandt", FISHEYE_D), ("", (0.1, 0, 0, 0, 0)),
                                     ("equidistant", (0.1, 0, 0, 0, 0))])
def test_camera_info_unknown_model_refused(model, d):
    with pytest.raises(DataError, match="unsupported distortion_model|takes 4 coefficients"):
        conv.camera_info_to_camera(camera_info(K0, d, model=model))


@pytest.mark.parametrize("model,d,rectified", [("equidistant", FISHEYE_D, False),
                                               ("rational_polynomial", RATIONAL_D, False),
                                               ("plumb_bob", (0.1, -0.2, 0.001, 0.002, 0.05), True)])
def test_node_and_folder_readers_read_a_calibration_alike(tmp_path, model, d, rectified):
    """The same calibration as a CameraInfo message (node) and as a camera.yaml (folder readers)."""
    from kp2d_ros.data.camera_yaml import read_camera_yaml

    P = [250.0, 0.0, 318.0, 0.0, 0.0, 250.0, 241.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    msg = camera_info(K0, d, model=model)
    msg.p = P

    def mat(r, c, v):
        return f"{{rows: {r}, cols: {c}, data: {[float(x) for x in v]}}}"

    (tmp_path / "camera.yaml").write_text(
        f"image_width: 640\nimage_height: 480\ncamera_name: c\ncamera_matrix: {mat(3, 3, K0)}\n"
        f"distortion_model: {model}\ndistortion_coefficients: {mat(1, len(d), d)}\n"
        f"rectification_matrix: {mat(3, 3, np.eye(3).ravel())}\nprojection_matrix: {mat(3, 4, P)}\n")
    a = conv.camera_info_to_camera(msg, rectified=rectified)
    b = read_camera_yaml(tmp_path / "camera.yaml", rectified=rectified)
    assert (a.model, a.width, a.height) == (b.model, b.width, b.height)
    np.testing.assert_array_equal(a.K, b.K)
    np.testing.assert_array_equal(a.dist, b.dist)


def test_camera_from_config():
    assert conv.camera_from_config(CameraConfig(), 640, 480) is None
    cam = conv.camera_from_config(CameraConfig(fx=400.0, fy=410.0), 640, 480)
    assert cam.K[0, 2] == pytest.approx(319.5) and cam.K[1, 1] == 410.0
    fish = conv.camera_from_config(CameraConfig(fx=400.0, fy=400.0, distortion=list(FISHEYE_D),
                                                distortion_model="equidistant"), 640, 480)
    assert fish.model == "equidistant" and fish.has_distortion


def random_pose(rng) -> np.ndarray:
    q = rng.normal(size=4)
    return conv.xyzquat_to_matrix(np.concatenate([rng.normal(size=3), q / np.linalg.norm(q)]))


def test_quaternion_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(50):
        T = random_pose(rng)
        np.testing.assert_allclose(conv.xyzquat_to_matrix(conv.matrix_to_xyzquat(T)), T, atol=1e-12)
    for R in (np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])):  # 180 deg
        np.testing.assert_allclose(conv.quat_to_rot(conv.rot_to_quat(R)), R, atol=1e-12)


def test_optical_to_base_convention():
    """REP-103: the default extrinsic maps optical z (forward) to base x, optical x (right) to base -y."""
    T_base_cam = conv.xyzquat_to_matrix([0, 0, 0, -0.5, 0.5, -0.5, 0.5])
    np.testing.assert_allclose(T_base_cam[:3, :3], [[0, 0, 1], [-1, 0, 0], [0, -1, 0]], atol=1e-12)
    forward = np.eye(4)
    forward[2, 3] = 2.0  # camera moved 2 along its optical axis
    T_odom_base = conv.camera_to_base_pose(forward, T_base_cam)
    np.testing.assert_allclose(T_odom_base[:3, 3], [2, 0, 0], atol=1e-12)
    np.testing.assert_allclose(conv.base_to_camera_pose(T_odom_base, T_base_cam), forward, atol=1e-12)
    np.testing.assert_allclose(conv.camera_to_base_pose(np.eye(4), T_base_cam), np.eye(4), atol=1e-12)


def test_pose_message_round_trip():
    T = random_pose(np.random.default_rng(2))
    msg = Pose()
    conv.fill_pose(msg, T)
    np.testing.assert_allclose(conv.pose_msg_to_matrix(msg), T, atol=1e-12)


def test_covariance_grows_as_quality_drops():
    good = conv.pose_covariance(0.9, TrackingStatus.TRACKING)
    bad = conv.pose_covariance(0.1, TrackingStatus.TRACKING)
    lost = conv.pose_covariance(0.9, TrackingStatus.LOST)
    assert len(good) == 36 and good[0] < bad[0] < lost[0] and good[35] < bad[35]
    assert conv.pose_covariance(float("nan"), TrackingStatus.TRACKING) == conv.pose_covariance(0.0, TrackingStatus.TRACKING)


def _perturbation(T, T0):
    """[dp, dtheta] with T = (exp(dtheta) R0, p0 + dp), axes of the parent frame."""
    dR = T[:3, :3] @ T0[:3, :3].T
    return np.concatenate([T[:3, 3] - T0[:3, 3], cv2.Rodrigues(dR)[0].ravel()])


@pytest.mark.parametrize("corrected", [False, True])
def test_estimate_covariance_moves_to_the_odom_frame(corrected):
    """Sampled camera poses with the estimate's covariance (world = map axes), mapped to the base pose in odom, have
    the covariance that estimate_pose_covariance predicts (axes rotated, lever arm of the rotation); ``corrected``:
    with a backend correction between map and odom (``T_world_odom``), whose rotation turns the axes too."""
    rng = np.random.default_rng(1)
    T_wc = conv.xyzquat_to_matrix([1.0, -2.0, 5.0, 0.1, -0.3, 0.2, 0.9])
    T_bc = conv.xyzquat_to_matrix([0.4, 0.1, 1.2, -0.5, 0.5, -0.5, 0.5])
    A = rng.normal(size=(6, 6)) * np.r_[0.05, 0.05, 0.05, 0.01, 0.01, 0.01][:, None]
    cov = A @ A.T
    est = PoseEstimate(stamp=0.0, T_world_cam=T_wc, status=TrackingStatus.TRACKING, covariance=cov)
    T_ow = np.eye(4)  # odom from world
    if corrected:
        T_wo = conv.xyzquat_to_matrix([0.3, 0.2, -0.4, 0.2, 0.1, -0.3, 0.9])
        est.T_world_odom, est.T_odom_cam = T_wo, np.linalg.inv(T_wo) @ T_wc
        T_ow = np.linalg.inv(T_wo)
    predicted = np.array(conv.estimate_pose_covariance(est, T_bc)).reshape(6, 6)
    T0 = conv.camera_to_base_pose(T_ow @ T_wc, T_bc)
    samples = []
    for d in rng.multivariate_normal(np.zeros(6), cov, 4000):
        T = T_wc.copy()
        T[:3, :3] = cv2.Rodrigues(d[3:])[0] @ T_wc[:3, :3]
        T[:3, 3] += d[:3]
        samples.append(_perturbation(conv.camera_to_base_pose(T_ow @ T, T_bc), T0))
    empirical = np.cov(np.array(samples).T)
    scale = np.sqrt(np.outer(np.diag(predicted), np.diag(predicted)))
    np.testing.assert_allclose(empirical / scale, predicted / scale, atol=0.08)
    # with no covariance in the estimate: the quality model
    est.covariance = None
    assert conv.estimate_pose_covariance(est, T_bc) == conv.pose_covariance(est.quality, est.status)


def test_keypoint_cloud_fields_and_values():
    feats = Features(np.array([[1.5, 2.5], [3, 4], [5, 6]], np.float32), np.zeros((3, 8), np.float32),
                     np.array([0.9, 0.5, 0.1], np.float32))
    est = PoseEstimate(stamp=1.0, T_world_cam=np.eye(4), status=TrackingStatus.TRACKING, features=feats,
                       matched=np.array([True, False, True]))
    K = np.array([[2.0, 0, 1], [0, 4.0, 2], [0, 0, 1]])
    msg = conv.keypoints_to_cloud(est, PointCloud2, PointField, Header(frame_id="cam"), K)
    assert [f.name for f in msg.fields][:4] == ["u", "v", "score", "matched"]
    assert [f.offset for f in msg.fields][:4] == [0, 4, 8, 12]
    assert all(f.datatype == PointField.FLOAT32 and f.count == 1 for f in msg.fields)
    assert (msg.width, msg.height, msg.point_step, msg.row_step, len(msg.data)) == (3, 1, 28, 84, 84)
    np.testing.assert_allclose(conv.cloud_to_keypoints(msg)[:, :4],
                               [[1.5, 2.5, 0.9, 1], [3, 4, 0.5, 0], [5, 6, 0.1, 1]], rtol=1e-6)
    # x, y, z: the pinhole ray at unit depth, for RViz
    np.testing.assert_allclose(conv.cloud_to_keypoints(msg)[:, 4:], [[0.25, 0.125, 1], [1, 0.5, 1], [2, 1, 1]])
    empty = conv.keypoints_to_cloud(PoseEstimate(0.0, np.eye(4), TrackingStatus.LOST), PointCloud2, PointField,
                                    Header())
    assert empty.width == 0 and len(empty.data) == 0


def test_draw_debug_shape_and_marks():
    img = np.zeros((60, 80), np.uint8)
    feats = Features(np.array([[10, 10], [40, 30]], np.float32), np.zeros((2, 8), np.float32),
                     np.ones(2, np.float32))
    est = PoseEstimate(0.0, np.eye(4), TrackingStatus.TRACKING, features=feats, matched=np.array([True, False]),
                       ref_keypoints=np.array([[20.0, 50.0]]), cur_keypoints=np.array([[40.0, 30.0]]))
    out = conv.draw_debug(img, est)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    assert tuple(out[10, 10]) == (0, 255, 0)  # matched keypoint drawn green
    assert out.sum() > 0 and img.sum() == 0  # input untouched


def _yaw_in_place_case(vo_scale: float):
    """Camera 1 m ahead of the base (REP-103 optical mount), the base yaws 90 deg in place: the camera's pose
    in the first camera's frame, with its translation in VO units (``vo_scale`` per metre)."""
    T_bc = conv.xyzquat_to_matrix([1.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5])
    T_odom_base = np.eye(4)
    T_odom_base[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # yaw +90 deg about base z
    T_wc = conv.invert(T_bc) @ T_odom_base @ T_bc
    T_wc[:3, 3] *= vo_scale
    return T_bc, T_wc, T_odom_base


def test_lever_arm_90_deg_yaw_with_metric_scale_puts_base_link_at_the_origin():
    T_bc, T_wc, T_odom_base = _yaw_in_place_case(vo_scale=1.0)  # metric: 1 unit = 1 m
    out = conv.camera_to_base_pose(T_wc, conv.odom_extrinsic(T_bc, metric=True))
    np.testing.assert_allclose(out, T_odom_base, atol=1e-12)


def test_lever_arm_90_deg_yaw_without_metric_scale_does_not_mix_units():
    T_bc, T_wc, T_odom_base = _yaw_in_place_case(vo_scale=0.3)
    # the old formula mixes the 1 m lever arm into a trajectory in VO units: base_link at (0.7, -0.7, 0)
    wrong = conv.camera_to_base_pose(T_wc, T_bc)
    np.testing.assert_allclose(wrong[:3, 3], [0.7, -0.7, 0.0], atol=1e-12)
    # scale unknown: the camera's own motion in base axes (the camera moved from (1, 0) to (0, 1): 0.3 x (-1, 1)),
    # the base's rotation exact
    out = conv.camera_to_base_pose(T_wc, conv.odom_extrinsic(T_bc, metric=False))
    np.testing.assert_allclose(out[:3, :3], T_odom_base[:3, :3], atol=1e-12)
    np.testing.assert_allclose(out[:3, 3], [-0.3, 0.3, 0.0], atol=1e-12)
    np.testing.assert_allclose(conv.odom_extrinsic(T_bc, metric=True), T_bc)
