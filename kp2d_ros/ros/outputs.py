"""Thread-safe stores between the VO worker thread and the executor thread of ``vo_node``.

* :class:`PathBuffer`: the worker appends one ``PoseStamped`` per frame (O(1)); the path timer on the
  executor thread builds and publishes the whole ``nav_msgs/Path`` from it at a low rate. The worker
  never builds a Path: at 10 000 poses building and serialising one costs hundreds of milliseconds.
* :class:`TrajectoryRecorder`: every processed frame's camera pose, written as a TUM file by
  ``~/save_trajectory`` and at shutdown.

No rclpy import here: message classes are passed in.
"""
from __future__ import annotations

import collections
import threading
from pathlib import Path

import numpy as np

from kp2d_ros.data.trajectory_io import write_tum
from kp2d_ros.types import Trajectory


class PathBuffer:
    """The newest ``max_length`` path poses (``PoseStamped`` messages) and a change counter.

    Each pose may name the backend keyframe it was estimated against (``keyframe_id``) and its pose relative
    to it; :meth:`refine` hands over refined keyframe poses, and the next :meth:`message` rewrites the poses
    that depend on them (the newest ones: the backend only moves its window), on the caller's thread.
    """

    def __init__(self, max_length: int):
        self._lock = threading.Lock()
        self._poses: collections.deque = collections.deque(maxlen=max_length)
        self._links: collections.deque = collections.deque(maxlen=max_length)  # (keyframe id, T_keyframe_cam)
        self._keyframes: dict[int, np.ndarray] = {}  # refined T_world_cam not yet written into the poses
        self._fill = None
        self._version = 0  # bumped by every change
        self._published = -1  # version of the last message built

    def __len__(self) -> int:
        return len(self._poses)

    def append(self, pose_stamped, keyframe_id: int = -1, T_keyframe_cam: np.ndarray | None = None) -> None:
        with self._lock:
            self._poses.append(pose_stamped)
            self._links.append((keyframe_id, None if T_keyframe_cam is None else np.array(T_keyframe_cam)))
            self._version += 1

    def refine(self, keyframe_poses: dict[int, np.ndarray], fill) -> None:
        """Refined ``T_world_cam`` of keyframes; ``fill(pose_msg, T_world_cam)`` writes one path pose."""
        if not keyframe_poses:
            return
        with self._lock:
            self._keyframes.update(keyframe_poses)
            self._fill = fill
            self._version += 1

    def clear(self) -> None:
        with self._lock:
            self._poses.clear()
            self._links.clear()
            self._keyframes.clear()
            self._version += 1

    def resize(self, max_length: int) -> None:
        """Keep the newest ``max_length`` poses from now on."""
        with self._lock:
            if self._poses.maxlen != max_length:
                self._poses = collections.deque(self._poses, maxlen=max_length)
                self._links = collections.deque(self._links, maxlen=max_length)
                self._version += 1

    def _apply_refined(self) -> None:
        """(lock held) Rewrite the poses estimated against refined keyframes, newest first, stopping at the first
        pose whose keyframe was not refined (older keyframes have left the backend's window)."""
        if not self._keyframes:
            return
        oldest = min(self._keyframes)
        for i in range(len(self._poses) - 1, -1, -1):
            kid, T_kc = self._links[i]
            if kid < 0:
                continue
            if kid < oldest:
                break
            T = self._keyframes.get(kid)
            if T is not None:
                self._fill(self._poses[i].pose, T @ T_kc)
        self._keyframes.clear()

    def message(self, path_cls, frame_id: str):
        """A ``path_cls`` (nav_msgs/Path) of the poses, or None when nothing changed since the last one."""
        with self._lock:
            if self._version == self._published:
                return None
            self._published = self._version
            self._apply_refined()
            poses = list(self._poses)
        msg = path_cls()
        msg.header.frame_id = frame_id
        if poses:
            msg.header.stamp = poses[-1].header.stamp
        msg.poses = poses
        return msg


class TrajectoryRecorder:
    """Stamped camera poses ``T_world_cam`` of the current trajectory (since the last reset)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._stamps: list[float] = []
        self._poses: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._stamps)

    def append(self, stamp: float, T_world_cam: np.ndarray) -> None:
        with self._lock:
            self._stamps.append(float(stamp))
            self._poses.append(np.asarray(T_world_cam, dtype=np.float64).copy())

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._poses.clear()

    def rescale(self, k: float) -> None:
        """Positions of the poses so far times ``k`` (the trajectory's unit changed: metric scale acquired)."""
        with self._lock:
            for T in self._poses:
                T[:3, 3] *= k

    def trajectory(self) -> Trajectory:
        with self._lock:
            return Trajectory(stamps=np.asarray(self._stamps, dtype=np.float64),
                              poses=np.asarray(self._poses, dtype=np.float64).reshape(-1, 4, 4))

    def save(self, path: str | Path) -> int:
        """Write the poses as a TUM file (camera optical frame in the first camera's frame, the same
        convention as ``kp2d replay``'s ``trajectory_est.tum``); returns the number of poses.

        Raises
        ------
        OSError
            the file cannot be written.
        """
        traj = self.trajectory()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        write_tum(traj, tmp)
        tmp.replace(path)  # readers never see a half-written file
        return len(traj)
