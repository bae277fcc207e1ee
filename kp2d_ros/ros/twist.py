"""Body-frame velocity (``odom.twist``) from consecutive odometry poses and their stamps.

No ROS here: numpy in, numpy out, so it is tested without a graph.

Definitions (REP-105: the twist of ``nav_msgs/Odometry`` is expressed in ``child_frame_id``, the base):

* linear  v = R_curᵀ (p_cur - p_prev) / dt   (the displacement, in the current base frame);
* angular w = log(R_prevᵀ R_cur) / dt        (the rotation vector of the step; the same in the
  previous and the current base frame, since the step rotates about it).

Units: monocular VO has no metric scale, so v is in the trajectory's units per second (the same
units as the published positions); w is in rad/s (scale-free).

Covariance (6x6 row-major, [vx vy vz wx wy wz], base axes):

* when the estimates carry ``covariance`` (6x6, [x y z rx ry rz], odometry-world axes, accumulated
  along the trajectory), the step's covariance is the growth between the two poses,
  ``C_cur - C_prev`` (clipped to positive semi-definite), rotated into the current base axes and
  divided by dt²;
* otherwise (documented fallback) the per-frame pose covariance of
  :func:`kp2d_ros.ros.conversions.pose_covariance`, isotropic, is taken as the step's uncertainty
  and divided by dt².

Unknown twist: zero velocity with :data:`UNKNOWN_VARIANCE` on the diagonal, published after a reset
(no previous pose), on an initialising or lost frame, on the first frame after a lost one, and
for a non-positive time step. A STATIC frame publishes exactly zero velocity.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from kp2d_ros.types import TrackingStatus

UNKNOWN_VARIANCE = 1e6  # (units/s)^2 and (rad/s)^2: "do not use" for an EKF (the pose uses 1e3 m std when lost)
_VALID = (TrackingStatus.TRACKING, TrackingStatus.STATIC)  # this frame has a motion estimate
_VALID_PREV = _VALID + (TrackingStatus.INITIALIZING,)  # the previous pose is one (the identity after a reset)


def body_twist(T_prev: np.ndarray, T_cur: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """(linear (3,), angular (3,)) velocity in the current body frame between two 4x4 poses ``dt`` apart."""
    if not dt > 0:
        raise ValueError(f"body_twist: dt must be > 0, got {dt}")
    R_prev, R_cur = T_prev[:3, :3], T_cur[:3, :3]
    linear = R_cur.T @ (T_cur[:3, 3] - T_prev[:3, 3]) / dt
    angular = Rotation.from_matrix(R_prev.T @ R_cur).as_rotvec() / dt
    return linear, angular


def _psd(C: np.ndarray) -> np.ndarray:
    C = 0.5 * (C + C.T)
    w, V = np.linalg.eigh(C)
    return (V * np.maximum(w, 0.0)) @ V.T


@dataclass
class Twist:
    """One twist sample: ``linear``/``angular`` (3,) in the base frame, ``covariance`` (6, 6); ``known``
    is False for the flagged-unknown case."""

    linear: np.ndarray
    angular: np.ndarray
    covariance: np.ndarray
    known: bool


def unknown_twist() -> Twist:
    return Twist(np.zeros(3), np.zeros(3), np.eye(6) * UNKNOWN_VARIANCE, False)


class TwistTracker:
    """Keeps the previous pose and turns each new odometry pose into a :class:`Twist`."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Forget the previous pose: the next twist is unknown."""
        self._prev: tuple[float, np.ndarray, np.ndarray | None, TrackingStatus] | None = None

    def update(self, stamp: float, T_odom_base: np.ndarray, status: TrackingStatus,
               pose_cov: np.ndarray | None, fallback_cov: np.ndarray, interval: float | None = None) -> Twist:
        """Twist of the step from the previous pose to this one.

        Parameters
        ----------
        stamp : this frame's time (s).
        T_odom_base : (4, 4) this frame's base pose in the odometry frame.
        status : tracking status of this frame.
        pose_cov : (6, 6) accumulated pose covariance in odometry axes, or None.
        fallback_cov : (6, 6) per-frame pose covariance used when ``pose_cov`` is None.
        interval : the step's duration (s) when the caller's clock knows it better than the stamps
            (``PoseEstimate.interval_s``: jittered stamps); None: the stamps' difference.
        """
        prev, self._prev = self._prev, (stamp, T_odom_base, pose_cov, TrackingStatus(status))
        if prev is None or status not in _VALID or prev[3] not in _VALID_PREV:
            return unknown_twist()
        dt = stamp - prev[0] if interval is None else interval
        if not dt > 0:
            return unknown_twist()
        if pose_cov is not None and prev[2] is not None:
            step = _psd(np.asarray(pose_cov, float) - np.asarray(prev[2], float))
            R = np.zeros((6, 6))
            R[:3, :3] = R[3:, 3:] = T_odom_base[:3, :3].T  # odometry axes -> current base axes
            step = R @ step @ R.T
        else:
            step = np.asarray(fallback_cov, float).reshape(6, 6)
        cov = step / (dt * dt)
        if status == TrackingStatus.STATIC:
            return Twist(np.zeros(3), np.zeros(3), cov, True)
        linear, angular = body_twist(prev[1], T_odom_base, dt)
        return Twist(linear, angular, cov, True)


def covariance_to_odom(cov_world: np.ndarray, T_world_cam: np.ndarray, T_base_cam: np.ndarray) -> np.ndarray:
    """A camera pose covariance in world axes -> the base pose covariance in odometry axes.

    Parameters
    ----------
    cov_world : (6, 6) covariance of [x y z rx ry rz] of the camera pose, world (first camera) axes,
        rotations as perturbations about the world axes.
    T_world_cam : (4, 4) camera pose; T_base_cam : (4, 4) camera-to-base extrinsic.

    Returns
    -------
    (6, 6) covariance of [x y z rx ry rz] of the base pose in the odometry frame (the base at the
    first image), as ``nav_msgs/Odometry.pose.covariance`` expects. The base origin sits at the lever
    arm ``a = R_world_cam t_cam_base`` from the camera, so a rotation error moves it by ``-[a]x dtheta``.
    """
    R_bc = T_base_cam[:3, :3]
    t_cam_base = -R_bc.T @ T_base_cam[:3, 3]
    a = T_world_cam[:3, :3] @ t_cam_base
    J = np.eye(6)
    J[:3, 3:] = -np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    R = np.zeros((6, 6))
    R[:3, :3] = R[3:, 3:] = R_bc  # world (first camera) axes -> odometry (first base) axes
    M = R @ J
    return M @ np.asarray(cov_world, dtype=np.float64).reshape(6, 6) @ M.T
