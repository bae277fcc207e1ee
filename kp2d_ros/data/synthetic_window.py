"""A synthetic bundle-adjustment window with known poses: the test and benchmark scene of the backend.

A camera drives ``baseline`` per keyframe along its optical axis while turning ``yaw_deg`` per keyframe;
points in front of it are each seen by ``track_len`` consecutive keyframes, with Gaussian pixel noise,
and a fraction of the observations replaced by random image points (outliers).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from kp2d_ros.geometry import invert_se3, se3


@dataclass(frozen=True)
class SyntheticWindow:
    """poses : (K, 4, 4) true ``T_world_cam``. points : (L, 3) true positions; initial : (L, 3) perturbed
    starting positions. obs_keyframe, obs_point : (M,) indices; obs_xy : (M, 2) normalised coordinates;
    outlier : (M,) which observations are random. focal_px : the focal length the noise is given at."""

    poses: np.ndarray
    points: np.ndarray
    initial: np.ndarray
    obs_keyframe: np.ndarray
    obs_point: np.ndarray
    obs_xy: np.ndarray
    outlier: np.ndarray
    focal_px: float


def driving_poses(n: int, baseline: float = 1.0, yaw_deg: float = 2.0) -> np.ndarray:
    """(n, 4, 4) ``T_world_cam`` of a camera moving ``baseline`` along its z axis per step while turning."""
    poses, T = [], np.eye(4)
    step = se3(cv2.Rodrigues(np.radians([0.0, yaw_deg, 0.0]))[0], [0.0, 0.0, baseline])
    for _ in range(n):
        poses.append(T.copy())
        T = T @ step
    return np.stack(poses)


def synthetic_window(n_keyframes: int = 10, n_points: int = 600, noise_px: float = 0.25, outlier_ratio: float = 0.0,
                     track_len: int = 6, seed: int = 0, focal_px: float = 500.0, baseline: float = 1.0,
                     point_noise: float = 0.05) -> SyntheticWindow:
    """See the module docstring; ``point_noise``: std (trajectory units) of the starting positions' error."""
    rng = np.random.default_rng(seed)
    poses = driving_poses(n_keyframes, baseline)
    pts, ok, op, oxy, out = [], [], [], [], []
    for _ in range(n_points):
        first = int(rng.integers(0, max(n_keyframes - track_len, 0) + 1))
        Xc = np.array([rng.uniform(-6, 6), rng.uniform(-3, 2), rng.uniform(4, 15)]) * baseline
        X = poses[first, :3, :3] @ Xc + poses[first, :3, 3]
        seen = []
        for k in range(first, min(first + track_len, n_keyframes)):
            Tc = invert_se3(poses[k])
            xc = Tc[:3, :3] @ X + Tc[:3, 3]
            if xc[2] <= 0.5 * baseline:
                continue
            xy = xc[:2] / xc[2] + rng.normal(0.0, noise_px / focal_px, 2)
            bad = rng.random() < outlier_ratio
            seen.append((k, rng.uniform(-0.6, 0.6, 2) if bad else xy, bad))
        if len(seen) < 2:
            continue
        for k, xy, bad in seen:
            ok.append(k)
            op.append(len(pts))
            oxy.append(xy)
            out.append(bad)
        pts.append(X)
    points = np.array(pts)
    return SyntheticWindow(poses, points, points + rng.normal(0.0, point_noise * baseline, points.shape),
                           np.array(ok), np.array(op), np.array(oxy), np.array(out, bool), float(focal_px))


def perturb_poses(poses: np.ndarray, rng: np.random.Generator, rot_deg: float = 0.5, trans: float = 0.05,
                  skip: int = 2) -> np.ndarray:
    """A copy of ``poses`` with every pose after the first ``skip`` moved by ~``rot_deg`` and ~``trans``."""
    out = poses.copy()
    for k in range(skip, len(poses)):
        dR = cv2.Rodrigues(np.radians(rng.normal(0.0, rot_deg, 3)))[0]
        out[k] = se3(dR, rng.normal(0.0, trans, 3)) @ poses[k]
    return out
