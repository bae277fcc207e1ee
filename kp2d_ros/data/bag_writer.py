"""Write image sequences as rosbag2 bags (sqlite3 or MCAP) with the ``rosbags`` writer.

Used to build test bags from the image folders (no recorded bag with images is available) and by
the ROS node helpers. Messages: ``sensor_msgs/Image`` (or ``CompressedImage`` PNG),
``sensor_msgs/CameraInfo`` per frame and, where the ground truth covers a frame,
``geometry_msgs/PoseStamped`` (T_world_cam, frame ``world``). Log time = header stamp.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np

from kp2d_ros.data.bags import default_typestore
from kp2d_ros.data.camera_info import info_model_name
from kp2d_ros.data.images import encode_compressed, encode_image
from kp2d_ros.data.sequence import Sequence
from kp2d_ros.data.trajectory_io import tq_from_poses
from kp2d_ros.errors import DataError
from kp2d_ros.types import Camera, Frame, Trajectory


def stamp_to_ns(stamp: float) -> int:
    """Seconds -> integer nanoseconds (whole seconds kept exact)."""
    sec = math.floor(stamp)
    return int(sec) * 1_000_000_000 + int(round((stamp - sec) * 1e9))


def write_bag(out_path: str | Path, frames: Sequence | Iterable[Frame], *, storage: str = "sqlite3",
              image_topic: str = "/camera/image_raw", camera_info_topic: str | None = "/camera/camera_info",
              gt_topic: str | None = "/ground_truth/pose", encoding: str = "rgb8", compressed: bool = False,
              ground_truth: Trajectory | None = None, camera: Camera | None = None,
              frame_id: str = "camera_optical_frame", gt_tolerance: float = 1e-6) -> Path:
    """Write ``frames`` into a new rosbag2 bag.

    Parameters
    ----------
    out_path : bag folder to create (must not exist).
    frames : a :class:`Sequence` (its camera and ground truth are used) or Frames.
    storage : ``sqlite3`` or ``mcap``.
    image_topic : raw image topic; with ``compressed=True`` PNG ``CompressedImage`` messages go to
        ``<image_topic>/compressed`` (image_transport convention).
    camera_info_topic, gt_topic : None to leave the topic out.
    encoding : Image encoding (``rgb8``, ``bgr8``, ``mono8``, ``mono16``, ``rgba8``, ...).
    ground_truth : T_world_cam poses; a frame gets a PoseStamped when a GT stamp is within
        ``gt_tolerance`` s of it. Defaults to the sequence's ground truth.
    camera : intrinsics for CameraInfo; defaults to the sequence's / each frame's camera.

    Returns
    -------
    Path of the bag folder.

    Raises
    ------
    DataError
        existing output, unknown storage or encoding.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

    out_path = Path(out_path)
    plugins = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
    if storage not in plugins:
        raise DataError(f"unknown bag storage '{storage}' (sqlite3 or mcap)")
    if out_path.exists():
        raise DataError(f"{out_path} exists already; bags are never overwritten")
    if isinstance(frames, Sequence):
        ground_truth = frames.ground_truth if ground_truth is None else ground_truth
        camera = frames.camera if camera is None else camera
    encode_image(np.zeros((2, 2), np.uint8), encoding)  # validate the encoding up front

    ts = default_typestore()
    T = ts.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]

    def header(stamp: float, fid: str):
        ns = stamp_to_ns(stamp)
        return Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id=fid)

    gt_stamps = None if ground_truth is None else np.asarray(ground_truth.stamps, dtype=np.float64)
    try:
        writer = Writer(out_path, version=8, storage_plugin=plugins[storage])
    except WriterError as e:
        raise DataError(f"cannot create bag {out_path}: {e}") from None
    with writer:
        if compressed:
            img_type = "sensor_msgs/msg/CompressedImage"
            img_conn = writer.add_connection(f"{image_topic.rstrip('/')}/compressed", img_type, typestore=ts)
        else:
            img_type = "sensor_msgs/msg/Image"
            img_conn = writer.add_connection(image_topic, img_type, typestore=ts)
        info_conn = (writer.add_connection(camera_info_topic, "sensor_msgs/msg/CameraInfo", typestore=ts)
                     if camera_info_topic else None)
        gt_conn = (writer.add_connection(gt_topic, "geometry_msgs/msg/PoseStamped", typestore=ts)
                   if gt_topic and ground_truth is not None else None)

        for frame in frames:
            ns = stamp_to_ns(frame.stamp)
            hdr = header(frame.stamp, frame_id)
            img = frame.image
            if compressed:
                msg = T[img_type](header=hdr, format=("mono8" if img.ndim == 2 else "rgb8") + "; png compressed ",
                                  data=encode_compressed(img, "png"))
            else:
                data, step = encode_image(img, encoding)
                msg = T[img_type](header=hdr, height=img.shape[0], width=img.shape[1], encoding=encoding,
                                  is_bigendian=0, step=step, data=data)
            writer.write(img_conn, ns, ts.serialize_cdr(msg, img_type))

            if info_conn is not None:
                cam = camera if camera is not None else frame.camera
                K = np.asarray(cam.K, dtype=np.float64)
                d = np.asarray(cam.dist, dtype=np.float64).ravel()
                roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                             do_rectify=False)
                info = T["sensor_msgs/msg/CameraInfo"](
                    header=hdr, height=img.shape[0], width=img.shape[1],
                    distortion_model=info_model_name(cam),
                    d=d, k=K.ravel(), r=np.eye(3).ravel(), p=np.hstack([K, np.zeros((3, 1))]).ravel(),
                    binning_x=0, binning_y=0, roi=roi)
                writer.write(info_conn, ns, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))

            if gt_conn is not None and gt_stamps.size:
                j = int(np.argmin(np.abs(gt_stamps - frame.stamp)))
                if abs(gt_stamps[j] - frame.stamp) <= gt_tolerance:
                    t, q = tq_from_poses(ground_truth.poses[j][None])
                    P = T["geometry_msgs/msg/Point"](x=t[0, 0], y=t[0, 1], z=t[0, 2])
                    Q = T["geometry_msgs/msg/Quaternion"](x=q[0, 0], y=q[0, 1], z=q[0, 2], w=q[0, 3])
                    pose = T["geometry_msgs/msg/PoseStamped"](header=header(frame.stamp, "world"),
                                                              pose=T["geometry_msgs/msg/Pose"](position=P,
                                                                                               orientation=Q))
                    writer.write(gt_conn, ns, ts.serialize_cdr(pose, "geometry_msgs/msg/PoseStamped"))
    return out_path
