"""Conversions between ROS messages and the core's types (no cv_bridge, no tf2).

Everything here is a pure function on message objects and numpy arrays, so it is tested without
a running ROS graph. Invalid input raises :class:`kp2d_ros.errors.DataError` with a message that
names what is wrong; the node turns it into a throttled warning and drops the frame.

Frames (REP-103/105):
    ``T_world_cam``  pose of the camera optical frame (z forward, x right, y down) in the world
                     frame = the first camera's optical frame (what the pipeline returns).
    ``T_base_cam``   camera-to-base extrinsic (``ros.camera_to_base``).
    ``T_odom_base``  what ``odom`` carries: odom is the base frame at the first image, so
                     ``T_odom_base = T_base_cam @ T_world_cam @ inv(T_base_cam)``.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from kp2d_ros.data.camera_info import camera_from_info
from kp2d_ros.data.images import decode_compressed_msg, decode_image_msg
from kp2d_ros.errors import DataError
from kp2d_ros.ros.twist import covariance_to_odom
from kp2d_ros.types import Camera, PoseEstimate, TrackingStatus

# --------------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------------
def stamp_to_sec(stamp) -> float:
    """``builtin_interfaces/Time`` -> float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def sec_to_stamp(t: float, stamp_cls):
    """Float seconds -> a new ``stamp_cls`` (``builtin_interfaces.msg.Time``)."""
    ns = int(round(t * 1e9))
    return stamp_cls(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
# sensor_msgs/Image and CompressedImage -> (H, W) uint8 grey or (H, W, 3) uint8 RGB: the same decoders
# as the bag readers (they raise DataError naming the encoding, size or length problem).
image_to_array = decode_image_msg
compressed_to_array = decode_compressed_msg


def array_to_image(img: np.ndarray, msg_cls, stamp=None, frame_id: str = ""):
    """(H, W) uint8 or (H, W, 3) uint8 RGB -> ``sensor_msgs/Image`` (mono8 / rgb8)."""
    img = np.ascontiguousarray(img)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise DataError(f"array_to_image: expected (H, W) or (H, W, 3) uint8, got {img.shape} {img.dtype}")
    msg = msg_cls()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
    msg.encoding = "mono8" if img.ndim == 2 else "rgb8"
    msg.is_bigendian = 0
    msg.step = int(img.shape[1] * (1 if img.ndim == 2 else 3))
    msg.data = img.tobytes()
    return msg


# --------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------
def camera_info_to_camera(msg, rectified: bool = False) -> Camera:
    """``sensor_msgs/CameraInfo`` -> :class:`Camera`, read as the bag and folder readers read one
    (:func:`kp2d_ros.data.camera_info.camera_from_info`).

    Parameters
    ----------
    rectified : the subscribed images are rectified (``camera.rectified``): P's intrinsics, no
        distortion. Otherwise K and D under ``distortion_model`` (plumb_bob, rational_polynomial,
        equidistant).

    Raises
    ------
    DataError
        zero size, non-finite K/D/P, fx, fy <= 0, an unsupported distortion model or coefficient count.
    """
    w, h = int(msg.width), int(msg.height)
    if w <= 0 or h <= 0:
        raise DataError(f"CameraInfo: invalid size {w}x{h}")
    return camera_from_info(msg.k, msg.d, msg.distortion_model, w, h, p=msg.p, rectified=rectified)


def camera_from_config(cam_cfg, width: int, height: int) -> Camera | None:
    """Camera from the ``camera.*`` parameters (None when ``camera.fx`` is unset)."""
    if not cam_cfg.is_set:
        return None
    cx = cam_cfg.cx if cam_cfg.cx > 0 else (width - 1) / 2.0
    cy = cam_cfg.cy if cam_cfg.cy > 0 else (height - 1) / 2.0
    return Camera.from_intrinsics(cam_cfg.fx, cam_cfg.fy, cx, cy, width, height, dist=cam_cfg.distortion,
                                  model=cam_cfg.distortion_model)


def camera_for_image(cam: Camera, width: int, height: int) -> Camera:
    """Scale ``cam`` to an image of a different size (CameraInfo of the full-size stream), with the
    pixel-centre convention of the rest of the code: :meth:`Camera.scaled_to`."""
    return cam.scaled_to(width, height)


# --------------------------------------------------------------------------------------------
# Poses
# --------------------------------------------------------------------------------------------
def quat_to_rot(q: Sequence[float]) -> np.ndarray:
    """Quaternion (x, y, z, w) -> 3x3 rotation (normalised first)."""
    x, y, z, w = (float(v) for v in q)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if n == 0 or not math.isfinite(n):
        raise DataError(f"invalid quaternion {tuple(q)}")
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rot_to_quat(R: np.ndarray) -> np.ndarray:
    """3x3 rotation -> unit quaternion (x, y, z, w) with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def xyzquat_to_matrix(v: Sequence[float]) -> np.ndarray:
    """[x, y, z, qx, qy, qz, qw] -> 4x4 transform."""
    T = np.eye(4)
    T[:3, :3] = quat_to_rot(v[3:7])
    T[:3, 3] = v[:3]
    return T


def matrix_to_xyzquat(T: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(T)[:3, 3], rot_to_quat(np.asarray(T)[:3, :3])])


def invert(T: np.ndarray) -> np.ndarray:
    Ti = np.eye(4)
    Ti[:3, :3] = T[:3, :3].T
    Ti[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return Ti


def camera_to_base_pose(T_world_cam: np.ndarray, T_base_cam: np.ndarray) -> np.ndarray:
    """Camera pose in the first camera frame -> base pose in odom (odom = base at the first image)."""
    return T_base_cam @ T_world_cam @ invert(T_base_cam)


def odom_extrinsic(T_base_cam: np.ndarray, metric: bool) -> np.ndarray:
    """The extrinsic the odometry is published with: ``T_base_cam`` when the trajectory is metric (the lever
    arm, in metres, is exact), else its rotation alone. A trajectory in VO units (``scale: unknown``) cannot
    be combined with a lever arm in metres (camera 1 m ahead, 90 deg in-place yaw, VO scale 0.3 would put
    base_link at (0.7, -0.7, 0) instead of the origin): the camera's own motion is published, rotated into
    base axes."""
    if metric:
        return T_base_cam
    T = np.eye(4)
    T[:3, :3] = np.asarray(T_base_cam)[:3, :3]
    return T


def base_to_camera_pose(T_odom_base: np.ndarray, T_base_cam: np.ndarray) -> np.ndarray:
    """Inverse of :func:`camera_to_base_pose` (used by ``kp2d play`` to record camera poses)."""
    return invert(T_base_cam) @ T_odom_base @ T_base_cam


def pose_covariance(quality: float, status: TrackingStatus) -> list[float]:
    """6x6 row-major pose covariance (x, y, z, rx, ry, rz) from the estimate's quality.

    Isotropic in position and in rotation, so it reads the same in the odom and the base frame.

    The standard deviations grow linearly as quality drops: 1 cm .. 1 m (position, in the
    monocular map's arbitrary scale) and 0.005 .. 0.5 rad; a lost tracker reports 1e3.
    """
    q = min(max(float(quality), 0.0), 1.0) if math.isfinite(quality) else 0.0
    if status == TrackingStatus.LOST:
        sp = sr = 1e3
    else:
        sp = 0.01 + 0.99 * (1.0 - q)
        sr = 0.005 + 0.495 * (1.0 - q)
    if status == TrackingStatus.INITIALIZING:  # identity by definition of the odom frame
        sp, sr = 1e-6, 1e-6
    cov = np.zeros((6, 6))
    cov[np.diag_indices(3)] = sp * sp
    cov[3:, 3:][np.diag_indices(3)] = sr * sr
    return cov.ravel().tolist()


def odom_covariance(est: PoseEstimate, T_base_cam: np.ndarray) -> np.ndarray | None:
    """(6, 6) covariance (x, y, z, rx, ry, rz in the odom frame's axes) of the base pose the odometry publishes for
    ``est``, None when the estimate has none.

    ``est.covariance`` (the camera pose in world = map axes, trajectory units; see :class:`PoseEstimate`) turns into
    odom's axes (``est.T_world_odom``'s rotation: positions and small rotations alike), then moves to
    ``T_odom_base = T_base_cam @ T_odom_cam @ inv(T_base_cam)``: the axes rotate by ``T_base_cam``, and the rotation
    uncertainty moves the base by its lever arm from the camera.
    """
    if est.covariance is None:
        return None
    T_world_odom, T_odom_cam = est.odometry()
    A = np.kron(np.eye(2), T_world_odom[:3, :3].T)
    cov = A @ np.asarray(est.covariance, dtype=np.float64) @ A.T
    return covariance_to_odom(cov, T_odom_cam, np.asarray(T_base_cam, dtype=np.float64))


def estimate_pose_covariance(est: PoseEstimate, T_base_cam: np.ndarray) -> list[float]:
    """6x6 row-major odometry pose covariance of ``est`` (:func:`odom_covariance`), symmetrised; from ``quality``
    (:func:`pose_covariance`) when the estimate has none."""
    cov = odom_covariance(est, T_base_cam)
    if cov is None:
        return pose_covariance(est.quality, est.status)
    return (0.5 * (cov + cov.T)).ravel().tolist()


def fill_pose(pose_msg, T: np.ndarray) -> None:
    """Write a 4x4 transform into a ``geometry_msgs/Pose``."""
    v = matrix_to_xyzquat(T)
    pose_msg.position.x, pose_msg.position.y, pose_msg.position.z = (float(x) for x in v[:3])
    o = pose_msg.orientation
    o.x, o.y, o.z, o.w = (float(x) for x in v[3:])


def fill_transform(tf_msg, T: np.ndarray) -> None:
    """Write a 4x4 transform into a ``geometry_msgs/Transform``."""
    v = matrix_to_xyzquat(T)
    tf_msg.translation.x, tf_msg.translation.y, tf_msg.translation.z = (float(x) for x in v[:3])
    r = tf_msg.rotation
    r.x, r.y, r.z, r.w = (float(x) for x in v[3:])


def pose_msg_to_matrix(pose_msg) -> np.ndarray:
    p, o = pose_msg.position, pose_msg.orientation
    return xyzquat_to_matrix([p.x, p.y, p.z, o.x, o.y, o.z, o.w])


# --------------------------------------------------------------------------------------------
# Keypoints
# --------------------------------------------------------------------------------------------
KEYPOINT_FIELDS = ("u", "v", "score", "matched", "x", "y", "z")


def keypoints_to_cloud(estimate: PoseEstimate, cloud_cls, field_cls, header, K: np.ndarray | None = None) -> object:
    """Keypoints of an estimate -> ``sensor_msgs/PointCloud2`` with float32 fields u, v, score, matched.

    ``u, v`` are pixel coordinates in the input image, ``matched`` is 1.0 for inlier matches to the
    reference frame, else 0.0. For RViz the cloud also carries ``x, y, z``: the keypoint's pinhole
    ray at unit depth in the camera optical frame (from ``K``, distortion ignored; zeros without
    ``K``). An estimate without features gives an empty cloud.
    """
    feats = estimate.features
    n = 0 if feats is None else len(feats)
    arr = np.zeros((n, len(KEYPOINT_FIELDS)), dtype=np.float32)
    if n:
        arr[:, 0:2] = feats.keypoints[:, :2]
        arr[:, 2] = feats.scores if feats.scores is not None and len(feats.scores) == n else 0.0
        if estimate.matched is not None and len(estimate.matched) == n:
            arr[:, 3] = estimate.matched.astype(np.float32)
        if K is not None:
            arr[:, 4] = (arr[:, 0] - K[0, 2]) / K[0, 0]
            arr[:, 5] = (arr[:, 1] - K[1, 2]) / K[1, 1]
            arr[:, 6] = 1.0
    msg = cloud_cls()
    msg.header = header
    msg.height, msg.width = 1, n
    msg.fields = [field_cls(name=name, offset=4 * i, datatype=field_cls.FLOAT32, count=1)
                  for i, name in enumerate(KEYPOINT_FIELDS)]
    msg.is_bigendian = False
    msg.point_step = 4 * len(KEYPOINT_FIELDS)
    msg.row_step = msg.point_step * n
    msg.is_dense = True
    msg.data = arr.tobytes()
    return msg


def cloud_to_keypoints(msg) -> np.ndarray:
    """Inverse of :func:`keypoints_to_cloud`: (N, 7) float32 columns u, v, score, matched, x, y, z."""
    names = [f.name for f in msg.fields]
    if tuple(names) != KEYPOINT_FIELDS or msg.point_step != 4 * len(KEYPOINT_FIELDS):
        raise DataError(f"not a keypoint cloud: fields {names}, point_step {msg.point_step}")
    return np.frombuffer(memoryview(msg.data), dtype=np.float32).reshape(-1, len(KEYPOINT_FIELDS))


# --------------------------------------------------------------------------------------------
# Debug image
# --------------------------------------------------------------------------------------------
_STATUS_COLOURS = {  # RGB
    TrackingStatus.INITIALIZING: (255, 255, 0),
    TrackingStatus.TRACKING: (0, 255, 0),
    TrackingStatus.STATIC: (0, 200, 255),
    TrackingStatus.LOST: (255, 0, 0),
}


def draw_debug(image: np.ndarray, estimate: PoseEstimate) -> np.ndarray:
    """RGB image with keypoints (grey: unmatched, green: inlier), match tracks and the status."""
    if image.ndim == 2:
        out = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    else:
        out = image.copy()
    feats = estimate.features
    if feats is not None and len(feats):
        matched = estimate.matched if estimate.matched is not None else np.zeros(len(feats), bool)
        for (x, y), m in zip(feats.keypoints[:, :2].astype(int), matched):
            cv2.circle(out, (int(x), int(y)), 2, (0, 255, 0) if m else (160, 160, 160), -1, cv2.LINE_AA)
    if estimate.ref_keypoints is not None and estimate.cur_keypoints is not None:
        for p0, p1 in zip(estimate.ref_keypoints.astype(int), estimate.cur_keypoints.astype(int)):
            cv2.line(out, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), (255, 128, 0), 1, cv2.LINE_AA)
    text = (f"{estimate.status.value}  feat {estimate.num_features}  match {estimate.num_matches}  "
            f"inl {estimate.num_inliers}  q {estimate.quality:.2f}")
    cv2.putText(out, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                _STATUS_COLOURS.get(estimate.status, (255, 255, 255)), 1, cv2.LINE_AA)
    return out
