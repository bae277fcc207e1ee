"""Ground truth for ``kp2d evaluate``: a trajectory file, a dataset folder or a bag -> :class:`Trajectory`.

Accepted forms (poses are ``T_world_cam`` of the camera that took the images):

* a TUM trajectory file (``t tx ty tz qx qy qz qw`` per line);
* a KITTI pose file (12 numbers per line, one row per frame) with its ``times.txt``;
* any folder or bag :func:`kp2d_ros.data.open_sequence` reads (KITTI, TUM RGB-D, EuRoC, synthetic,
  ROS 1 / rosbag2 / MCAP bags with a ground-truth pose topic): its ground truth at the frame stamps,
  in the camera frame (EuRoC's body poses are moved to cam0 by the reader).
"""
from __future__ import annotations

from pathlib import Path

from kp2d_ros.data.dataset import open_sequence
from kp2d_ros.data.trajectory_io import read_kitti_poses, read_kitti_times, read_tum
from kp2d_ros.errors import DataError
from kp2d_ros.types import Trajectory


def _columns(path: Path) -> int:
    """Number of values on the first data line of a text file (0 when none)."""
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    return len(line.replace(",", " ").split())
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    return 0


def read_ground_truth(path: str | Path, *, times: str | Path | None = None,
                      gt_topic: str | None = None) -> tuple[Trajectory, str]:
    """Ground-truth trajectory and a short name for it.

    Parameters
    ----------
    path : TUM file, KITTI pose file, dataset folder or bag.
    times : KITTI ``times.txt`` (required with a KITTI pose file).
    gt_topic : pose topic of a bag (found automatically when unambiguous).

    Raises
    ------
    DataError
        missing or unreadable input, a pose file of unknown shape, a KITTI pose file without its
        times, or a folder/bag without ground truth.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix not in (".bag", ".mcap", ".db3"):
        ncols = _columns(path)
        if ncols == 8:
            return read_tum(path), path.stem
        if ncols == 12:
            if times is None:
                raise DataError(f"{path}: a KITTI pose file needs its times file (--gt-times times.txt)")
            poses, stamps = read_kitti_poses(path), read_kitti_times(times)
            if stamps.shape[0] != poses.shape[0]:
                raise DataError(f"{times}: {stamps.shape[0]} times for {poses.shape[0]} poses in {path}")
            return Trajectory(stamps=stamps, poses=poses), path.stem
        raise DataError(f"{path}: expected a TUM trajectory (8 values per line) or KITTI poses (12), got {ncols}")
    seq = open_sequence(path, gt_topic=gt_topic)
    if seq.ground_truth is None or len(seq.ground_truth) == 0:
        raise DataError(f"{path}: this {seq.layout} input has no ground truth")
    return seq.ground_truth, seq.name


__all__ = ["read_ground_truth"]
