"""``kp2d play BAG``: publish a bag's images to a running ``vo_node`` and record its odometry.

The node must run already (``ros2 run kp2d_ros vo_node --ros-args -r image:=/camera/image_raw
-r camera_info:=/camera/camera_info``). ``--record-odom`` writes a TUM file of the camera optical
frame in the first camera's frame (``--frame camera``, comparable with ``kp2d replay``) or of
``ros.base_frame`` in ``ros.odom_frame`` (``--frame base``).

Without ``--lockstep`` the node drops the frames that arrive while it is busy (the newest image wins), as on a
robot. ``--record-drops FILE`` writes those frames as a ``--simulate`` SPEC, so that the same frames go through the
offline pipeline, deterministically: ``kp2d replay BAG --simulate "$(cat FILE)"`` (with the node's config and
``--backend-lag N`` for its late windows) tells what the drops cost from what the threads cost.
"""
from __future__ import annotations

import argparse
import sys


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="play a bag's images to vo_node and record its odometry",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", help="rosbag2 folder (sqlite3 or mcap)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (<= 0: as fast as possible)")
    p.add_argument("--lockstep", action="store_true",
                   help="wait for the node's odometry of each image before the next (every frame processed)")
    p.add_argument("--record-odom", metavar="FILE.tum", help="write the received odometry as a TUM file")
    p.add_argument("--record-drops", metavar="FILE",
                   help="write the frames the node dropped (no odometry) as a --simulate SPEC for kp2d replay")
    p.add_argument("--frame", choices=("camera", "base"), default="camera", help="pose recorded (see above)")
    p.add_argument("--config", metavar="YAML", help="the node's params file (for ros.camera_to_base)")
    p.add_argument("--image-topic", help="bag image topic to play (default: the first image topic)")
    p.add_argument("--camera-info-topic", help="bag CameraInfo topic (default: the first one)")
    p.add_argument("--odom-topic", default="odom", help="the node's odometry topic (default: odom)")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the node (default: 30)")
    p.add_argument("--frame-timeout", type=float, default=20.0, help="lockstep: seconds per image (default: 20)")
    return p


def run(args) -> int:
    from kp2d_ros.config import load_config
    from kp2d_ros.data import write_tum
    from kp2d_ros.data.faults import drop_spec
    from kp2d_ros.ros.conversions import xyzquat_to_matrix
    from kp2d_ros.ros.player import play_bag

    cfg = load_config(args.config)

    def progress(i: int, n: int) -> None:
        if i == n or i % 50 == 0:
            print(f"\rplayed {i}/{n} images", end="" if i < n else "\n", file=sys.stderr, flush=True)

    res = play_bag(args.bag, rate=args.rate, lockstep=args.lockstep, image_topic=args.image_topic,
                   camera_info_topic=args.camera_info_topic, odom_topic=args.odom_topic, wait_s=args.wait,
                   frame_timeout_s=args.frame_timeout, record_frame=args.frame,
                   T_base_cam=xyzquat_to_matrix(cfg.ros.camera_to_base), progress=progress)
    print(f"images published: {res.images_published}, odometry received: {len(res.odometry)}, "
          f"without odometry: {len(res.missing_stamps)}, {res.wall_s:.1f} s")
    if args.record_odom:
        write_tum(res.odometry, args.record_odom)
        print(f"odometry ({args.frame} frame) written to {args.record_odom}")
    if args.record_drops:
        if res.dropped is None:
            print("error: --record-drops: the node restamped only some of the images with a zero header stamp: "
                  "which of them it dropped cannot be told", file=sys.stderr)
            return 1
        spec = drop_spec(res.dropped) or ""
        with open(args.record_drops, "w") as f:
            f.write(spec + "\n")
        print(f"dropped frames ({len(res.dropped)}) written to {args.record_drops}"
              + (f"; replay them: kp2d replay {args.bag} --simulate \"$(cat {args.record_drops})\"" if spec else ""))
    return 0
