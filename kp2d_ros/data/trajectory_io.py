"""Trajectory files and pose helpers: TUM / KITTI pose files, quaternions, interpolation.

Poses are 4x4 ``T_world_cam`` (camera-to-world) float64 matrices throughout.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from kp2d_ros.errors import DataError
from kp2d_ros.types import Trajectory


def pose_from_tq(t, q_xyzw) -> np.ndarray:
    """4x4 pose from a translation (3,) and a quaternion (4,) ordered x, y, z, w."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(np.asarray(q_xyzw, dtype=np.float64)).as_matrix()
    T[:3, 3] = np.asarray(t, dtype=np.float64)
    return T


def poses_from_tq(t: np.ndarray, q_xyzw: np.ndarray) -> np.ndarray:
    """(N, 4, 4) poses from (N, 3) translations and (N, 4) x, y, z, w quaternions."""
    t = np.asarray(t, dtype=np.float64).reshape(-1, 3)
    poses = np.tile(np.eye(4), (t.shape[0], 1, 1))
    if t.shape[0]:
        poses[:, :3, :3] = Rotation.from_quat(np.asarray(q_xyzw, dtype=np.float64).reshape(-1, 4)).as_matrix()
    poses[:, :3, 3] = t
    return poses


def tq_from_poses(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) translations and (N, 4) x, y, z, w quaternions (w >= 0) of (N, 4, 4) poses."""
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
    if poses.shape[0] == 0:
        return np.zeros((0, 3)), np.zeros((0, 4))
    q = Rotation.from_matrix(poses[:, :3, :3]).as_quat()
    q[q[:, 3] < 0] *= -1.0
    return poses[:, :3, 3].copy(), q


def _load_rows(path: Path, ncols: int, what: str) -> np.ndarray:
    """Numeric rows of a whitespace/comma separated text file, ``#`` comments skipped."""
    rows = []
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise DataError(f"cannot read {what} file {path}: {e.strerror or e}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) < ncols:
            raise DataError(f"{path}:{lineno}: expected {ncols} numbers in a {what} file, got {len(parts)}")
        try:
            rows.append([float(v) for v in parts[:ncols]])
        except ValueError:
            raise DataError(f"{path}:{lineno}: not a number in a {what} file") from None
    return np.asarray(rows, dtype=np.float64).reshape(-1, ncols)


def read_tum(path: str | Path) -> Trajectory:
    """Read a TUM trajectory file (``t tx ty tz qx qy qz qw`` per line, ``#`` comments).

    Returns
    -------
    Trajectory sorted by time; poses (N, 4, 4) as stored (T_world_cam in TUM RGB-D).

    Raises
    ------
    DataError
        missing file or malformed line.
    """
    rows = _load_rows(Path(path), 8, "TUM trajectory")
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    return Trajectory(stamps=rows[:, 0].copy(), poses=poses_from_tq(rows[:, 1:4], rows[:, 4:8]))


def write_tum(traj: Trajectory, path: str | Path) -> None:
    """Write ``traj`` as a TUM trajectory file (stamps with 9 decimals, quaternions x, y, z, w)."""
    t, q = tq_from_poses(traj.poses)
    lines = ["# timestamp tx ty tz qx qy qz qw"]
    for s, ti, qi in zip(np.asarray(traj.stamps, dtype=np.float64), t, q):
        lines.append(f"{s:.9f} " + " ".join(f"{v:.9f}" for v in ti) + " " + " ".join(f"{v:.9f}" for v in qi))
    Path(path).write_text("\n".join(lines) + "\n")


def read_kitti_poses(path: str | Path) -> np.ndarray:
    """KITTI pose file (12 numbers per line: row-major 3x4 T_world_cam0) -> (N, 4, 4)."""
    rows = _load_rows(Path(path), 12, "KITTI poses")
    poses = np.tile(np.eye(4), (rows.shape[0], 1, 1))
    poses[:, :3, :4] = rows.reshape(-1, 3, 4)
    return poses


def read_kitti_times(path: str | Path) -> np.ndarray:
    """KITTI ``times.txt`` (one number of seconds per line) -> (N,) float64."""
    return _load_rows(Path(path), 1, "KITTI times")[:, 0].copy()


def interpolate_poses(traj: Trajectory, stamps: np.ndarray, *, max_gap: float = 0.5,
                      tolerance: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Poses of ``traj`` at ``stamps`` (linear translation, slerp rotation).

    A stamp inside the trajectory's time span is interpolated between its two neighbours when
    they are at most ``max_gap`` seconds apart; a stamp outside it takes the nearest pose if that
    is within ``tolerance`` seconds. Other stamps get no pose.

    Parameters
    ----------
    traj : source trajectory (stamps sorted ascending).
    stamps : (M,) query times in seconds.

    Returns
    -------
    valid : (M,) bool, which stamps got a pose.
    poses : (V, 4, 4) poses of the valid stamps, in order.
    """
    stamps = np.asarray(stamps, dtype=np.float64).reshape(-1)
    src_t = np.asarray(traj.stamps, dtype=np.float64)
    valid = np.zeros(stamps.shape[0], dtype=bool)
    if src_t.shape[0] == 0 or stamps.shape[0] == 0:
        return valid, np.zeros((0, 4, 4))
    # Nearest pose (also covers exact matches and single-pose trajectories).
    hi = np.clip(np.searchsorted(src_t, stamps), 0, src_t.shape[0] - 1)
    lo = np.clip(hi - 1, 0, src_t.shape[0] - 1)
    nearest = np.where(np.abs(src_t[lo] - stamps) <= np.abs(src_t[hi] - stamps), lo, hi)
    near_ok = np.abs(src_t[nearest] - stamps) <= tolerance
    inside = (stamps >= src_t[0]) & (stamps <= src_t[-1]) & (src_t[hi] - src_t[lo] <= max_gap)
    valid = near_ok | inside
    out = []
    for i in np.flatnonzero(valid):
        a, b = lo[i], hi[i]
        if not inside[i] or a == b or src_t[b] == src_t[a]:
            out.append(traj.poses[nearest[i]].copy())
            continue
        w = (stamps[i] - src_t[a]) / (src_t[b] - src_t[a])
        T = np.eye(4)
        T[:3, 3] = (1.0 - w) * traj.poses[a][:3, 3] + w * traj.poses[b][:3, 3]
        rots = Rotation.from_matrix(np.stack([traj.poses[a][:3, :3], traj.poses[b][:3, :3]]))
        T[:3, :3] = Slerp([0.0, 1.0], rots)([w]).as_matrix()[0]
        out.append(T)
    return valid, np.asarray(out, dtype=np.float64).reshape(-1, 4, 4)


def resample(traj: Trajectory, stamps: np.ndarray, **kwargs) -> Trajectory:
    """``traj`` evaluated at those ``stamps`` it covers (see :func:`interpolate_poses`)."""
    stamps = np.asarray(stamps, dtype=np.float64).reshape(-1)
    valid, poses = interpolate_poses(traj, stamps, **kwargs)
    return Trajectory(stamps=stamps[valid].copy(), poses=poses)
