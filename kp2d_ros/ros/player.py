"""Play a rosbag2's images and camera infos to a running ``vo_node`` and record its odometry.

The bag is read with ``rosbags`` (no rosbag2_py needed) and its CDR payloads are published as they
are (``publisher.publish(bytes)``), so nothing is converted on the way. With ``lockstep`` each image
waits for the node's odometry of that image before the next one goes out, so the node processes
every frame whatever its speed (the newest-frame-wins node would otherwise drop frames).

Recorded poses (``record_frame``):
    ``camera``  T_cam0_cam: the camera optical frame in the first camera's optical frame, the same
                convention as :class:`kp2d_ros.types.PoseEstimate` and ``kp2d replay`` (default).
    ``base``    the odometry message as is: ``ros.base_frame`` in ``ros.odom_frame``.
"""
from __future__ import annotations

import importlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from kp2d_ros.errors import DataError
from kp2d_ros.types import Trajectory

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


@dataclass
class PlayResult:
    """Outcome of :func:`play_bag`.

    Attributes
    ----------
    images_published : images sent (retries not counted).
    odometry : recorded poses, (N,) stamps and (N, 4, 4) poses in ``frame``.
    missing_stamps : stamps (s) of the images the node did not process (no odometry arrived; ``dropped``).
    frame : ``camera`` or ``base`` (see the module docstring).
    wall_s : playback wall time.
    dropped : the numbers of the images the node dropped, in the bag's image order (0 = the first image): the
        frame numbers of ``kp2d replay`` on the same bag, so :func:`kp2d_ros.data.faults.drop_spec` of them replays
        the frames the node processed, deterministically (``kp2d play --record-drops``). None when that cannot be
        told (:func:`dropped_images`).
    """

    images_published: int
    odometry: Trajectory
    missing_stamps: list[float] = field(default_factory=list)
    frame: str = "camera"
    wall_s: float = 0.0
    dropped: list[int] | None = field(default_factory=list)


def _msg_class(msgtype: str):
    pkg, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def _stamp_ns(raw: bytes) -> int:
    """Header stamp of a CDR message whose first field is a std_msgs/Header."""
    little = raw[1] in (1, 3)  # CDR_LE / PL_CDR_LE encapsulation
    order = "little" if little else "big"
    sec = int.from_bytes(raw[4:8], order, signed=True)
    nsec = int.from_bytes(raw[8:12], order)
    return sec * 1_000_000_000 + nsec


def _select(connections, wanted: str | None, types: tuple[str, ...], what: str):
    cands = [c for c in connections if c.msgtype in types and (wanted is None or c.topic == wanted)]
    if not cands:
        have = ", ".join(f"{c.topic} ({c.msgtype})" for c in connections)
        raise DataError(f"bag has no {what} topic{f' {wanted}' if wanted else ''}; topics: {have}")
    return cands[0]


def play_bag(bag: str | Path, *, rate: float = 1.0, lockstep: bool = False, image_topic: str | None = None,
             camera_info_topic: str | None = None, odom_topic: str = "odom", wait_s: float = 30.0,
             frame_timeout_s: float = 20.0, record_frame: str = "camera", T_base_cam: np.ndarray | None = None,
             max_images: int | None = None, progress: Callable[[int, int], None] | None = None,
             domain_id: int | None = None) -> PlayResult:
    """Publish a bag's images (+ camera infos) and collect the node's odometry.

    Parameters
    ----------
    bag : rosbag2 folder (sqlite3 or mcap) or its ``.mcap``/``.db3`` file.
    rate : playback speed factor on the bag's log times; <= 0 sends as fast as allowed.
    lockstep : wait for the odometry of each image before sending the next one.
    image_topic, camera_info_topic : bag topics to play (default: the first of each type). They are
        published under the same names; remap the node (``-r image:=...``).
    odom_topic : the node's odometry topic.
    wait_s : how long to wait for the node to subscribe / advertise before giving up.
    frame_timeout_s : lockstep: wait per image (the image is sent again once, halfway).
    record_frame : ``camera`` or ``base`` (see the module docstring).
    T_base_cam : camera-to-base extrinsic of the node (``ros.camera_to_base``) for ``camera``.

    Raises
    ------
    DataError
        unreadable bag, missing topics, or no node listening within ``wait_s``.
    """
    import rclpy
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosbags.rosbag2 import Reader

    from kp2d_ros.config import RosConfig
    from kp2d_ros.data.bags import bag_path
    from kp2d_ros.ros import conversions as conv
    from kp2d_ros.ros.spinning import Spinner

    if record_frame not in ("camera", "base"):
        raise DataError(f"record_frame must be 'camera' or 'base', got '{record_frame}'")
    if T_base_cam is None:
        T_base_cam = conv.xyzquat_to_matrix(RosConfig().camera_to_base)
    bp = bag_path(Path(bag))
    if bp is None or bp.suffix == ".bag":
        raise DataError(f"{bag}: not a rosbag2 bag (folder with metadata.yaml, .db3 or .mcap)")
    if bp.is_file():
        bp = bp.parent

    odom: dict[int, np.ndarray] = {}
    cond = threading.Condition()

    def on_odom(msg: Odometry) -> None:
        with cond:
            odom[conv.stamp_to_ns(msg.header.stamp)] = conv.pose_msg_to_matrix(msg.pose.pose)
            cond.notify_all()

    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx, **({"domain_id": domain_id} if domain_id is not None else {}))
    executor = SingleThreadedExecutor(context=ctx)
    spinner = Spinner(executor)
    published = 0
    sent: list[int] = []
    dropped: list[int] | None = []
    missing: list[float] = []
    t_start = time.monotonic()
    try:
        node = rclpy.create_node("kp2d_play", context=ctx)
        executor.add_node(node)
        spinner.start()
        try:
            reader = Reader(bp)
            reader.open()
        except Exception as e:  # noqa: BLE001 - rosbags raises several unrelated types
            raise DataError(f"cannot open bag {bag}: {e}") from None
        try:
            img_conn = _select(reader.connections, image_topic, IMAGE_TYPES, "image")
            info_conn = (_select(reader.connections, camera_info_topic, (CAMERA_INFO_TYPE,), "camera_info")
                         if camera_info_topic or any(c.msgtype == CAMERA_INFO_TYPE for c in reader.connections)
                         else None)
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            pub_img = node.create_publisher(_msg_class(img_conn.msgtype), img_conn.topic, qos)
            pub_info = (node.create_publisher(_msg_class(CAMERA_INFO_TYPE), info_conn.topic, qos)
                        if info_conn is not None else None)
            node.create_subscription(Odometry, odom_topic, on_odom, QoSProfile(depth=1000))

            deadline = time.monotonic() + wait_s
            while pub_img.get_subscription_count() == 0 or node.count_publishers(odom_topic) == 0:
                if time.monotonic() > deadline:
                    raise DataError(f"no vo_node subscribed to {img_conn.topic} / publishing {odom_topic} "
                                    f"within {wait_s:.0f} s")
                time.sleep(0.05)
            time.sleep(0.5)  # let the node's side of the discovery settle

            conns = [img_conn] + ([info_conn] if info_conn is not None else [])
            total = img_conn.msgcount if max_images is None else min(img_conn.msgcount, max_images)
            t0_log = t0_wall = None
            last_info = None
            t_start = time.monotonic()
            for t_log, group in _groups(reader.messages(connections=conns)):
                if published >= total:
                    break
                if t0_log is None:
                    t0_log, t0_wall = t_log, time.monotonic()
                elif rate > 0:
                    delay = t0_wall + (t_log - t0_log) * 1e-9 / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                # camera infos of this instant first: the node needs intrinsics for the image
                for conn, raw in group:
                    if conn is not img_conn:
                        last_info = raw
                        pub_info.publish(raw)
                for conn, raw in group:
                    if conn is not img_conn or published >= total:
                        continue
                    stamp = _stamp_ns(raw)
                    pub_img.publish(raw)
                    published += 1
                    if progress is not None:
                        progress(published, total)
                    sent.append(stamp)
                    if not lockstep:
                        continue
                    ok = wait_for_stamp(cond, odom, stamp, frame_timeout_s / 2)
                    if not ok:  # lost on the way (e.g. before discovery settled): send once more
                        if last_info is not None:
                            pub_info.publish(last_info)
                        pub_img.publish(raw)
                        wait_for_stamp(cond, odom, stamp, frame_timeout_s / 2)
                if lockstep and rate > 0:  # keep the bag's pacing from here on
                    t0_log, t0_wall = t_log, time.monotonic()
            if sent and not lockstep:  # the newest image is always processed: wait for its odometry
                wait_for_stamp(cond, odom, sent[-1], frame_timeout_s)
            with cond:
                dropped = dropped_images(sent, odom)
                gone = set(dropped) if dropped is not None else {i for i, s in enumerate(sent) if s not in odom}
                missing = [sent[i] * 1e-9 for i in sorted(gone)]
        finally:
            reader.close()
    finally:
        spinner.stop(timeout_s=2.0)
        rclpy.try_shutdown(context=ctx)

    with cond:
        keys = sorted(odom)
        poses = np.stack([odom[k] for k in keys]) if keys else np.zeros((0, 4, 4))
    if record_frame == "camera" and len(keys):
        poses = np.stack([conv.base_to_camera_pose(T, T_base_cam) for T in poses])
    traj = Trajectory(stamps=np.asarray(keys, dtype=np.float64) * 1e-9, poses=poses)
    return PlayResult(published, traj, missing, record_frame, time.monotonic() - t_start, dropped)


def dropped_images(sent: list[int], received) -> list[int] | None:
    """Which of the images sent (header stamps in ns, in order) the node dropped, given the stamps of the odometry
    it published (``received``).

    The node publishes one odometry per processed image, stamped with the image's header stamp, except for a
    header stamp of 0, which it replaces with one of its own (``vo_node``'s ``_frame_stamp``). An odometry stamp
    that matches no image sent is such a replacement: when there are as many as zero-stamped images, the node
    processed them all; when there is none, it dropped them all. Otherwise (an unstamped camera whose frames the
    node partly dropped) which ones it dropped cannot be told from the stamps: None.
    """
    received = set(received)
    sent_set = set(sent)
    zero = [i for i, s in enumerate(sent) if s == 0]
    restamped = sum(1 for s in received if s not in sent_set)
    if zero and restamped not in (0, len(zero)):
        return None
    return [i for i, s in enumerate(sent) if (s not in received if s != 0 else restamped == 0)]


def _groups(messages):
    """Yield (log time, [(connection, raw bytes), ...]) for runs of messages with the same log time."""
    t_cur, group = None, []
    for conn, t_log, raw in messages:
        if t_cur is not None and t_log != t_cur:
            yield t_cur, group
            group = []
        t_cur = t_log
        group.append((conn, bytes(raw)))
    if group:
        yield t_cur, group


def wait_for_stamp(cond: threading.Condition, odom: dict, stamp: int, timeout: float) -> bool:
    """Wait on ``cond`` until ``stamp`` is a key of ``odom`` (filled by a subscription); False on timeout."""
    deadline = time.monotonic() + timeout
    with cond:
        while stamp not in odom:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            cond.wait(timeout=left)
    return True
