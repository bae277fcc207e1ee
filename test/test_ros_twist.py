"""Twist and covariance helpers of vo_node (kp2d_ros/ros/twist.py): pure numpy, no ROS graph."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from kp2d_ros.ros import conversions as conv
from kp2d_ros.ros.twist import UNKNOWN_VARIANCE, TwistTracker, body_twist, covariance_to_odom
from kp2d_ros.types import TrackingStatus

TRACKING, STATIC, LOST, INIT = (TrackingStatus.TRACKING, TrackingStatus.STATIC, TrackingStatus.LOST,
                                TrackingStatus.INITIALIZING)


def pose(rotvec=(0, 0, 0), t=(0, 0, 0)) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:3, 3] = t
    return T


def test_screw_motion_gives_its_body_twist():
    """Turning about the body z axis at w while moving along it at v: exactly (0, 0, v) and (0, 0, w)."""
    v, w, dt = 0.7, 0.3, 0.1
    T0 = pose((0.2, -0.4, 1.0), (1.0, 2.0, 3.0))
    T1 = T0 @ pose((0, 0, w * dt), (0, 0, v * dt))
    lin, ang = body_twist(T0, T1, dt)
    np.testing.assert_allclose(lin, [0, 0, v], atol=1e-12)
    np.testing.assert_allclose(ang, [0, 0, w], atol=1e-12)
    # moving along the body x axis of a base turned 90 deg about z: +x in the body, +y in the world
    T0 = pose((0, 0, np.pi / 2))
    T1 = T0 @ pose(t=(0.5, 0, 0))
    np.testing.assert_allclose(T1[:3, 3], [0, 0.5, 0], atol=1e-12)
    np.testing.assert_allclose(body_twist(T0, T1, 0.5)[0], [1, 0, 0], atol=1e-12)
    with pytest.raises(ValueError):
        body_twist(T0, T1, 0.0)


def test_tracker_flags_unknown_and_static():
    tr = TwistTracker()
    fallback = np.diag([1e-4] * 3 + [1e-5] * 3)
    step = pose((0, 0.01, 0), (0.1, 0, 0))
    T = np.eye(4)
    first = tr.update(0.0, T, INIT, None, fallback)  # after a reset: no previous pose
    assert not first.known and np.allclose(np.diag(first.covariance), UNKNOWN_VARIANCE)
    T = T @ step
    tw = tr.update(0.1, T, TRACKING, None, fallback)  # the identity of a reset is a valid previous pose
    assert tw.known
    np.testing.assert_allclose(tw.linear, step[:3, :3].T @ [1.0, 0, 0], atol=1e-9)  # in the current body axes
    np.testing.assert_allclose(tw.angular, [0, 0.1, 0], atol=1e-9)
    np.testing.assert_allclose(tw.covariance, fallback / 0.01)  # fallback: the per-frame covariance / dt^2
    static = tr.update(0.2, T, STATIC, None, fallback)
    assert static.known and not static.linear.any() and not static.angular.any()
    assert not tr.update(0.3, T @ step, LOST, None, fallback).known  # lost
    assert not tr.update(0.4, T @ step @ step, TRACKING, None, fallback).known  # first after lost
    assert tr.update(0.5, T @ step @ step @ step, TRACKING, None, fallback).known
    assert not tr.update(0.5, T, TRACKING, None, fallback).known  # no time passed
    tr.reset()
    assert not tr.update(0.6, T, TRACKING, None, fallback).known


def test_the_step_takes_the_pipelines_interval_where_it_gives_one():
    """With jittered stamps the pipeline's clock gives each step its typical duration (``PoseEstimate.interval_s``):
    a 0.1 m step stamped 0.13 s after the last is 1 m/s by that clock, not 0.77 m/s; without it the stamps."""
    fallback = np.eye(6) * 1e-4
    for interval, v in ((0.1, 1.0), (None, 0.1 / 0.13)):
        tr = TwistTracker()
        tr.update(1.0, pose(), TRACKING, None, fallback)
        tw = tr.update(1.13, pose(t=(0, 0, 0.1)), TRACKING, None, fallback, interval)
        np.testing.assert_allclose(tw.linear, [0, 0, v], atol=1e-12)
        np.testing.assert_allclose(tw.covariance, fallback / (0.1 if interval else 0.13) ** 2)


def test_twist_covariance_from_accumulated_pose_covariances():
    """The growth of the pose covariance between two frames, in the current body axes, / dt^2."""
    tr = TwistTracker()
    fallback = np.eye(6)
    C0 = np.diag([1.0, 1.0, 1.0, 0.1, 0.1, 0.1])
    growth = np.diag([4.0, 1.0, 0.5, 0.3, 0.2, 0.1])  # odometry axes
    T0 = pose((0, 0, np.pi / 2))  # base turned 90 deg: its x axis is odometry y
    tr.update(1.0, T0, TRACKING, C0, fallback)
    tw = tr.update(1.5, T0 @ pose(t=(0.1, 0, 0)), TRACKING, C0 + growth, fallback)
    expect = np.diag([1.0, 4.0, 0.5, 0.2, 0.3, 0.1]) / 0.25  # x and y swap in body axes
    np.testing.assert_allclose(tw.covariance, expect, atol=1e-12)
    # a covariance that shrinks (e.g. an estimator correcting itself) never gives a negative variance
    tw = tr.update(2.0, T0 @ pose(t=(0.2, 0, 0)), TRACKING, C0, fallback)
    assert np.all(np.linalg.eigvalsh(tw.covariance) >= -1e-12)


def test_covariance_to_odom_matches_the_pose_mapping_numerically():
    """Propagate a camera pose covariance through conv.camera_to_base_pose by finite differences."""
    q = Rotation.from_euler("xyz", [-90, 5, -90], degrees=True).as_quat()
    T_base_cam = conv.xyzquat_to_matrix([0.3, -0.1, 0.5, *q])
    T_world_cam = pose((0.3, -0.2, 0.5), (1.0, 0.5, -2.0))
    base = conv.camera_to_base_pose(T_world_cam, T_base_cam)
    J = np.zeros((6, 6))
    eps = 1e-6
    for k in range(6):
        d = np.zeros(6)
        d[k] = eps
        T = T_world_cam.copy()
        T[:3, 3] += d[:3]  # position perturbation, world axes
        T[:3, :3] = Rotation.from_rotvec(d[3:]).as_matrix() @ T[:3, :3]  # rotation about the world axes
        moved = conv.camera_to_base_pose(T, T_base_cam)
        J[:3, k] = (moved[:3, 3] - base[:3, 3]) / eps
        J[3:, k] = Rotation.from_matrix(moved[:3, :3] @ base[:3, :3].T).as_rotvec() / eps
    rng = np.random.default_rng(3)
    A = rng.normal(size=(6, 6))
    C = A @ A.T
    np.testing.assert_allclose(covariance_to_odom(C, T_world_cam, T_base_cam), J @ C @ J.T, rtol=1e-5, atol=1e-6)
