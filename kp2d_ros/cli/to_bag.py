"""``kp2d to-bag SEQUENCE OUT``: write a dataset folder (or any sequence ``kp2d replay`` reads) as a rosbag2 bag.

Images (``sensor_msgs/Image``, or PNG ``CompressedImage`` on ``<topic>/compressed``), a ``CameraInfo`` per image
with the sequence's intrinsics and distortion, and the ground truth as ``PoseStamped`` at the image stamps (when
the sequence has it). The bag then feeds ``vo_node`` like a camera would: ``ros2 bag play OUT`` or
``kp2d play OUT --record-odom odom.tum``, and ``kp2d evaluate odom.tum OUT`` scores what the node published.

Example::

    kp2d to-bag ../shared/data/vo/kitti07_f0000-0159 out/kitti07_bag --stamp-offset 1000
    vo_node --ros-args --params-file config/vo.yaml -r image:=/camera/image_raw -r camera_info:=/camera/camera_info &
    kp2d play out/kitti07_bag --lockstep --record-odom out/k07_node.tum
    kp2d evaluate out/k07_node.tum out/kitti07_bag --out out/k07_node_eval

``--stamp-offset S`` adds S seconds to every stamp: KITTI's first frame is stamped 0, which a node takes for "no
stamp" and restamps.
"""
from __future__ import annotations

import argparse


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="write a dataset folder as a rosbag2 bag (images, CameraInfo, ground truth)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sequence", help="KITTI / TUM / EuRoC folder, synthetic sequence or bag (as kp2d replay reads)")
    p.add_argument("out", help="bag folder to create (must not exist)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage (default: mcap)")
    p.add_argument("--encoding", default="auto",
                   help="Image encoding: auto (mono8 for grey images, rgb8 for colour), or mono8, rgb8, bgr8, ...")
    p.add_argument("--compressed", action="store_true", help="PNG CompressedImage on IMAGE_TOPIC/compressed")
    p.add_argument("--image-topic", default="/camera/image_raw")
    p.add_argument("--camera-info-topic", default="/camera/camera_info")
    p.add_argument("--gt-topic", default="/ground_truth/pose", help="ground-truth PoseStamped topic ('none': leave out)")
    p.add_argument("--max-frames", type=int, default=None, help="only the first N frames")
    p.add_argument("--stamp-offset", type=float, default=0.0, metavar="S", help="seconds added to every stamp")
    return p


def run(args) -> int:
    import dataclasses
    import itertools

    from kp2d_ros.data import open_sequence, write_bag
    from kp2d_ros.errors import DataError
    from kp2d_ros.types import Trajectory

    if args.max_frames is not None and args.max_frames < 1:
        raise DataError(f"--max-frames must be >= 1, got {args.max_frames}")
    seq = open_sequence(args.sequence, max_frames=args.max_frames)
    frames = iter(seq)
    first = next(frames, None)
    if first is None:
        raise DataError(f"{args.sequence}: no frames")
    encoding = args.encoding
    if encoding == "auto":
        encoding = "mono8" if first.image.ndim == 2 else "rgb8"
    offset = float(args.stamp_offset)

    def shifted():  # one frame in memory at a time
        for frame in itertools.chain([first], frames):
            yield dataclasses.replace(frame, stamp=frame.stamp + offset) if offset else frame

    gt = seq.ground_truth
    if gt is not None and offset:
        gt = Trajectory(stamps=gt.stamps + offset, poses=gt.poses)
    gt_topic = None if args.gt_topic.lower() == "none" else args.gt_topic
    out = write_bag(args.out, shifted(), storage=args.storage, image_topic=args.image_topic,
                    camera_info_topic=args.camera_info_topic, gt_topic=gt_topic, encoding=encoding,
                    compressed=args.compressed, ground_truth=gt, camera=seq.camera)
    n = len(seq)
    print(f"wrote {n} images ({'PNG compressed' if args.compressed else encoding}) + CameraInfo"
          + (f" + ground truth on {gt_topic}" if gt is not None and gt_topic else "") + f" to {out} ({args.storage})")
    return 0
