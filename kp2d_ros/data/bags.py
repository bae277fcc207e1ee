"""ROS bags through ``rosbags`` (no ROS install): ROS 1 ``.bag``, rosbag2 sqlite3 and MCAP.

Images come from ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``, intrinsics from
``sensor_msgs/CameraInfo``, ground truth from ``geometry_msgs/PoseStamped``,
``PoseWithCovarianceStamped``, ``TransformStamped``, ``nav_msgs/Odometry`` or ``tf2_msgs/TFMessage``.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from kp2d_ros.config import CameraConfig
from kp2d_ros.data.camera_info import camera_from_info
from kp2d_ros.data.folders import resolve_camera
from kp2d_ros.data.images import decode_compressed_msg, decode_image_msg
from kp2d_ros.data.sequence import Sequence
from kp2d_ros.data.trajectory_io import poses_from_tq, resample
from kp2d_ros.errors import DataError
from kp2d_ros.types import Camera, Trajectory

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
POSE_TYPES = ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped",
              "geometry_msgs/msg/TransformStamped", "nav_msgs/msg/Odometry", "tf2_msgs/msg/TFMessage")


def default_typestore():
    """The newest ROS 2 typestore of the installed ``rosbags`` (Kilted when present)."""
    from rosbags.typesys import Stores, get_typestore

    names = [s.name for s in Stores if s.name.startswith("ROS2_")]
    store = "ROS2_KILTED" if "ROS2_KILTED" in names else names[-1]
    return get_typestore(Stores[store])


def bag_path(path: Path) -> Path | None:
    """The path ``AnyReader`` opens for a bag given as file or folder, or None if not a bag."""
    if path.is_file() and path.suffix in (".bag", ".mcap"):
        return path
    if path.is_file() and path.suffix == ".db3" and (path.parent / "metadata.yaml").is_file():
        return path.parent
    if path.is_dir() and (path / "metadata.yaml").is_file():
        return path
    return None


def is_bag(path: Path) -> bool:
    return bag_path(path) is not None


@contextmanager
def _open_reader(path: Path):
    from rosbags.highlevel import AnyReader, AnyReaderError

    bp = bag_path(path)
    if bp is None:
        raise DataError(f"{path}: not a ROS bag (.bag, .mcap, or a rosbag2 folder with metadata.yaml)")
    try:
        reader = AnyReader([bp], default_typestore=default_typestore())
        reader.open()
    except (AnyReaderError, OSError, ValueError, KeyError) as e:
        raise DataError(f"cannot open bag {path}: {e}") from None
    try:
        yield reader
    finally:
        reader.close()


def list_topics(path: str | Path) -> dict[str, str]:
    """``{topic: message type}`` of a bag."""
    with _open_reader(Path(path)) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def _topics_text(topics: dict[str, str]) -> str:
    return ", ".join(f"{t} [{m}]" for t, m in sorted(topics.items())) or "none"


def _stamp(msg, log_ns: int) -> float:
    """Header stamp in seconds, the bag's log time when the header is unset."""
    header = getattr(msg, "header", None)
    if header is not None:
        t = int(header.stamp.sec) + int(header.stamp.nanosec) * 1e-9
        if t > 0:
            return t
    return log_ns * 1e-9


def _pick_topic(topics: dict[str, str], wanted: str | None, types: tuple[str, ...], what: str,
                path: Path, option: str) -> str | None:
    """The topic ``wanted`` (checked), or the single topic of one of ``types``; None if absent."""
    if wanted is not None:
        if wanted not in topics:
            raise DataError(f"{path}: no topic '{wanted}' in the bag; topics: {_topics_text(topics)}")
        if topics[wanted] not in types:
            article = "an" if what[0] in "aeiou" else "a"
            raise DataError(f"{path}: topic '{wanted}' is {topics[wanted]}; {article} {what} topic must be "
                            f"{' or '.join(types)}")
        return wanted
    candidates = sorted(t for t, m in topics.items() if m in types)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        return None
    raise DataError(f"{path}: several {what} topics ({', '.join(candidates)}); choose one with {option}")


def _pose_of(msg, msgtype: str, frames: tuple[str, str] | None):
    """(t (3,), q xyzw (4,)) of a pose message, or None (a TF message without the frames)."""
    if msgtype == "tf2_msgs/msg/TFMessage":
        for tf in msg.transforms:
            if frames is None or (tf.header.frame_id.lstrip("/"), tf.child_frame_id.lstrip("/")) == frames:
                return _pose_of(tf, "geometry_msgs/msg/TransformStamped", None)
        return None
    if msgtype == "geometry_msgs/msg/TransformStamped":
        p, q = msg.transform.translation, msg.transform.rotation
    elif msgtype == "geometry_msgs/msg/PoseStamped":
        p, q = msg.pose.position, msg.pose.orientation
    else:  # Odometry, PoseWithCovarianceStamped
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
    return (p.x, p.y, p.z), (q.x, q.y, q.z, q.w)


def _read_trajectory(reader, path: Path, topic: str, frames: tuple[str, str] | None) -> Trajectory:
    topics = {c.topic: c.msgtype for c in reader.connections}
    if topic not in topics:
        raise DataError(f"{path}: no topic '{topic}' in the bag; topics: {_topics_text(topics)}")
    msgtype = topics[topic]
    if msgtype not in POSE_TYPES:
        raise DataError(f"{path}: topic '{topic}' is {msgtype}, not a pose type ({', '.join(POSE_TYPES)})")
    conns = [c for c in reader.connections if c.topic == topic]
    if msgtype == "tf2_msgs/msg/TFMessage" and frames is None:
        pairs = set()
        for conn, _, raw in reader.messages(connections=conns):
            for tf in reader.deserialize(raw, conn.msgtype).transforms:
                pairs.add((tf.header.frame_id.lstrip("/"), tf.child_frame_id.lstrip("/")))
        if len(pairs) != 1:
            raise DataError(f"{path}: topic '{topic}' holds several transforms "
                            f"({', '.join(f'{a}->{b}' for a, b in sorted(pairs))}); choose the frames")
        frames = pairs.pop()
    stamps, ts, qs = [], [], []
    for conn, log_ns, raw in reader.messages(connections=conns):
        msg = reader.deserialize(raw, conn.msgtype)
        if msgtype == "tf2_msgs/msg/TFMessage":
            hit = [tf for tf in msg.transforms
                   if (tf.header.frame_id.lstrip("/"), tf.child_frame_id.lstrip("/")) == frames]
            for tf in hit:
                t, q = _pose_of(tf, "geometry_msgs/msg/TransformStamped", None)
                stamps.append(_stamp(tf, log_ns))
                ts.append(t)
                qs.append(q)
            continue
        t, q = _pose_of(msg, msgtype, frames)
        stamps.append(_stamp(msg, log_ns))
        ts.append(t)
        qs.append(q)
    if not stamps:
        raise DataError(f"{path}: topic '{topic}' has no poses")
    order = np.argsort(np.asarray(stamps), kind="stable")
    return Trajectory(stamps=np.asarray(stamps, dtype=np.float64)[order],
                      poses=poses_from_tq(np.asarray(ts)[order], np.asarray(qs)[order]))


def read_trajectory_topic(path: str | Path, topic: str, frames: tuple[str, str] | None = None) -> Trajectory:
    """All poses of a pose topic, sorted by header stamp.

    Parameters
    ----------
    path : bag (ROS 1 ``.bag``, ``.mcap``, rosbag2 folder or its ``.db3``).
    topic : PoseStamped / PoseWithCovarianceStamped / TransformStamped / Odometry / TFMessage topic.
    frames : (parent, child) for TF topics; optional when the topic holds a single transform.

    Returns
    -------
    Trajectory with (N,) header stamps (s) and (N, 4, 4) poses (child/body in parent/world).

    Raises
    ------
    DataError
        unreadable bag, missing topic (the message lists the bag's topics) or non-pose type.
    """
    path = Path(path)
    with _open_reader(path) as reader:
        return _read_trajectory(reader, path, topic, frames)


def _looks_like_ground_truth(topic: str) -> bool:
    name = topic.lower()
    return "groundtruth" in name.replace("_", "").replace("-", "") or "gt" in re.split(r"[/_\-\s]+", name)


def _camera_from_info(msg, rectified: bool, source: str) -> Camera | None:
    """A bag's CameraInfo read as the node reads one; None for an uncalibrated one (K or, when
    rectified, P all zeros), so that the ``camera`` config section applies."""
    def field(name):  # ROS 2 lower case, ROS 1 upper case
        return getattr(msg, name) if hasattr(msg, name) else getattr(msg, name.upper())

    k, p = np.asarray(field("k"), dtype=np.float64), np.asarray(field("p"), dtype=np.float64)
    if not np.any(p if rectified else k):
        return None
    model = msg.distortion_model
    return camera_from_info(k, field("d"), model, int(msg.width), int(msg.height), p=p, rectified=rectified,
                            source=source)


def _decode(msg, msgtype: str) -> np.ndarray:
    if msgtype == "sensor_msgs/msg/CompressedImage":
        return decode_compressed_msg(msg)
    return decode_image_msg(msg)


def read_bag(path: Path, *, image_topic: str | None = None, camera_info_topic: str | None = None,
             gt_topic: str | None = None, max_frames: int | None = None,
             camera: CameraConfig | None = None) -> Sequence:
    """A bag as a :class:`Sequence`.

    The image topic is found automatically when the bag has exactly one (a raw topic wins over
    its ``/compressed`` twin); likewise the CameraInfo topic and a ground-truth pose topic whose
    name contains ``ground_truth``/``groundtruth``/``gt``. Frame stamps are header stamps.
    """
    with _open_reader(path) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        image_candidates = {t: m for t, m in topics.items() if m in IMAGE_TYPES}
        if image_topic is None and len(image_candidates) == 2:
            raw = [t for t, m in image_candidates.items() if m == IMAGE_TYPES[0]]
            if len(raw) == 1 and f"{raw[0]}/compressed" in image_candidates:
                image_topic = raw[0]
        topic = _pick_topic(topics, image_topic, IMAGE_TYPES, "image", path, "--image-topic")
        if topic is None:
            raise DataError(f"{path}: bag has no image topic (sensor_msgs/Image or CompressedImage); "
                            f"topics: {_topics_text(topics)}")
        img_type = topics[topic]
        img_conns = [c for c in reader.connections if c.topic == topic]

        stamps = []
        first = None
        for conn, log_ns, raw in reader.messages(connections=img_conns):
            msg = reader.deserialize(raw, conn.msgtype)
            if first is None:
                first = _decode(msg, img_type)
            stamps.append(_stamp(msg, log_ns))
            if max_frames is not None and len(stamps) >= max_frames:
                break
        if first is None:
            raise DataError(f"{path}: image topic '{topic}' has no messages")

        cam_files = None
        info_topic = _pick_topic(topics, camera_info_topic, (CAMERA_INFO_TYPE,), "CameraInfo", path,
                                 "--camera-info-topic")
        if info_topic is not None:
            conns = [c for c in reader.connections if c.topic == info_topic]
            for conn, _, raw in reader.messages(connections=conns):
                cam_files = _camera_from_info(reader.deserialize(raw, conn.msgtype),
                                              camera is not None and camera.rectified, f"{path}: {info_topic}")
                break

        if gt_topic is None:
            gt_like = [t for t, m in topics.items() if m in POSE_TYPES and m != "tf2_msgs/msg/TFMessage"
                       and _looks_like_ground_truth(t)]
            gt_topic = gt_like[0] if len(gt_like) == 1 else None
        gt = None
        if gt_topic is not None:
            gt_raw = _read_trajectory(reader, path, gt_topic, None)
            gt = resample(gt_raw, np.asarray(stamps), max_gap=0.5, tolerance=0.02)

    camera_obj = resolve_camera(cam_files, camera, first, str(path))
    n = len(stamps)

    def images() -> Iterator[np.ndarray]:
        with _open_reader(path) as rd:
            conns = [c for c in rd.connections if c.topic == topic]
            for i, (conn, _, raw) in enumerate(rd.messages(connections=conns)):
                if i >= n:
                    break
                yield _decode(rd.deserialize(raw, conn.msgtype), img_type)

    bp = bag_path(path)
    name = bp.stem if bp.is_file() else bp.name
    return Sequence(name, "bag", camera_obj, np.asarray(stamps), images, ground_truth=gt)
