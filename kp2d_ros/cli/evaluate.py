"""``kp2d evaluate EST GT``: the replay report for a trajectory estimated elsewhere.

EST is a TUM trajectory file of camera poses: ``vo_node``'s ``ros.trajectory_file`` (``~/save_trajectory``
or written at shutdown), ``kp2d play --record-odom``, or ``kp2d replay``'s ``trajectory_est.tum``.
GT is a TUM file, a KITTI pose file (with ``--gt-times``), or a dataset folder / bag with ground truth
(KITTI, TUM RGB-D, EuRoC, rosbag2, MCAP, ROS 1). The metrics are the ones of ``kp2d replay``
(the same function: Sim(3)-aligned ATE, per-frame RPE); ``tracked_frames`` and ``fps`` are only known
to a replay and are null here. Writes report.json and trajectory.png to --out.

Evaluation of the ROS node with no ``kp2d play``::

    vo_node --ros-args --params-file config/vo.yaml -p ros.trajectory_file:=run.tum -r image:=... &
    ros2 bag play my_bag          # then Ctrl-C the node: run.tum is written
    kp2d evaluate run.tum my_bag
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="score a trajectory file against ground truth (replay's report)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("estimate", help="TUM trajectory file of camera poses")
    p.add_argument("ground_truth", help="TUM or KITTI pose file, dataset folder or bag")
    p.add_argument("--out", default="out/evaluate", help="output directory (default: out/evaluate)")
    p.add_argument("--gt-times", default=None, help="KITTI times.txt for a KITTI pose file")
    p.add_argument("--gt-topic", default=None, help="bag ground-truth pose topic (default: found automatically)")
    p.add_argument("--max-diff", type=float, default=0.01,
                   help="max stamp difference (s) pairing estimate and ground truth (default: 0.01)")
    p.add_argument("--config", default=None,
                   help="the run's config YAML, for the report's frontend (default: config.yaml next to EST)")
    return p


def run(args) -> int:
    from kp2d_ros.cli.replay import print_summary
    from kp2d_ros.config import load_config
    from kp2d_ros.data import read_tum
    from kp2d_ros.data.ground_truth import read_ground_truth
    from kp2d_ros.errors import DataError
    from kp2d_ros.eval.plots import plot_replay
    from kp2d_ros.eval.replay import evaluate_trajectory

    if not args.max_diff > 0:
        raise DataError(f"--max-diff must be > 0, got {args.max_diff}")
    est_path = Path(args.estimate)
    estimate = read_tum(est_path)
    gt, name = read_ground_truth(args.ground_truth, times=args.gt_times, gt_topic=args.gt_topic)
    config = Path(args.config) if args.config else est_path.with_name("config.yaml")
    frontend = load_config(config).frontend.type if (args.config or config.is_file()) else None
    result = evaluate_trajectory(estimate, gt, sequence=name, frontend=frontend, max_diff=args.max_diff)
    if result.metrics is None:
        raise DataError(f"fewer than 3 of the {len(estimate)} poses in {est_path} have ground truth within "
                        f"{args.max_diff} s in {args.ground_truth} (ground truth spans "
                        f"{gt.stamps[0]:.3f}..{gt.stamps[-1]:.3f} s)")
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        report = result.report()
        (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_replay(result, out_dir / "trajectory.png")
    except OSError as e:
        raise DataError(f"cannot write results to {out_dir}: {e.strerror or e}") from None
    print_summary(result, report, out_dir)
    return 0
