"""``kp2d replay PATH``: run the VO pipeline offline on a dataset folder or bag and score it.

PATH is a KITTI odometry folder, a TUM RGB-D folder, an EuRoC folder, a synthetic sequence
folder, or a ROS bag (ROS 1 .bag, rosbag2 sqlite3 folder/.db3, .mcap). ``--simulate`` replays a
variant with a stop, dropped frames or a lower frame rate (ground truth follows). Writes to DIR:
report.json and trajectory_est.tum (the odometry as published, frame by frame: REP 105's odom, continuous,
without the backend's corrections), trajectory_gt.tum (when there is ground truth), with the backend
trajectory_map.tum and map.json (each frame's pose in map as TF map -> base had it then, and its ATE/RPE),
trajectory_path.tum and path.json (the trajectory as the node's path ends up: each frame against its
keyframe's last refined pose, and its ATE/RPE), backend.json (with the backend: windows taken, how many keyframes
late they landed, their time, why others were not taken), trajectory.png and config.yaml (the effective
configuration).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="run VO offline on a dataset or bag and evaluate it", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="dataset folder or bag")
    add_common_arguments(p)
    p.add_argument("--out", default="out/replay", help="output directory (default: out/replay)")
    add_input_arguments(p)
    p.add_argument("--backend-threaded", action="store_true",
                   help="optimise backend windows on a worker thread, as the node does (default: wait for each "
                        "window, so that runs are reproducible)")
    p.add_argument("--backend-lag", type=int, default=0, metavar="N",
                   help="take each backend window N frames after its keyframe, as the node's worker does (N = 2: "
                        "it keeps up, each window lands at the next frame; more on a busy CPU), reproducibly (the "
                        "window is optimised in this thread; a keyframe that finds it running gets none; 0: wait "
                        "for each window)")
    p.add_argument("--simulate", default=None, metavar="SPEC",
                   help="robustness variant of the input: comma-separated stop=K:R (R copies of frame K, a stop), "
                        "drop=A:B (frames A..B missing; drop=K one frame; drop may repeat), every=N (every N-th "
                        "frame), frames=S:E (a clip), gain=A:B:P (frames A..B at P percent of their brightness: "
                        "an auto-exposure step), occlude=A:B (frames A..B filled by a textured panel sliding "
                        "sideways: something moving on its own in front of the camera), jitter=P (every stamp moved by up "
                        "to +-P percent of the frame interval: a driver stamping on receipt), repeat=A:B (frames A..B "
                        "show frame A-1's image again: a stalled camera), body=P (the bottom P percent of every frame "
                        "show one fixed textured panel: the robot's own body in view), passer=W (with stop: a textured "
                        "panel W percent of the width wide crosses the view during the stop: a vehicle passing a robot "
                        "that waits; passer=W:A:B during frames A..B instead); "
                        "frame numbers of the original sequence (see kp2d_ros/data/faults.py)")
    return p


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """How the input is read (shared with ``kp2d stress``; :func:`open_input`)."""
    p.add_argument("--max-frames", type=int, default=None, help="process at most N frames")
    p.add_argument("--image-topic", default=None, help="bag image topic (default: the only one)")
    p.add_argument("--camera-info-topic", default=None, help="bag CameraInfo topic (default: the only one)")
    p.add_argument("--gt-topic", default=None, help="bag ground-truth pose topic (PoseStamped/Odometry)")


def open_input(args, cfg):
    """The sequence at ``args.path``, read as :func:`add_input_arguments`' options say.

    Raises
    ------
    DataError
        ``--max-frames`` not positive, or an unreadable input.
    """
    from kp2d_ros.data import open_sequence
    from kp2d_ros.errors import DataError

    if args.max_frames is not None and args.max_frames <= 0:
        raise DataError(f"--max-frames must be > 0, got {args.max_frames}")
    return open_sequence(args.path, image_topic=args.image_topic, camera_info_topic=args.camera_info_topic,
                         gt_topic=args.gt_topic, max_frames=args.max_frames, camera=cfg.camera)


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared with ``kp2d demo``."""
    p.add_argument("--frontend", choices=("orb", "sift", "kp2d"), default=None,
                   help="keypoint frontend (overrides frontend.type of the config)")
    p.add_argument("--config", default=None, help="VO config YAML (default: config/vo.yaml, else built-in defaults)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="dotted config overrides with YAML values (e.g. frontend.num_features=1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def default_config_path() -> Path | None:
    """config/vo.yaml of a source checkout, else of the installed package share dir, else None."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "config" / "vo.yaml",
                  Path(sys.prefix) / "share" / "kp2d_ros" / "config" / "vo.yaml"]
    try:  # a sourced ROS workspace
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("kp2d_ros")) / "config" / "vo.yaml")
    except Exception:
        pass
    return next((c for c in candidates if c.is_file()), None)


def load_effective_config(args):
    """VOConfig from --config (or the default file), --set and --frontend."""
    from kp2d_ros.config import load_config, parse_overrides

    overrides = parse_overrides(args.set)
    if args.frontend is not None:
        overrides["frontend.type"] = args.frontend
    path = args.config if args.config is not None else default_config_path()
    return load_config(path, overrides=overrides)


def write_outputs(result, sequence, cfg, out_dir: Path) -> dict:
    """report.json, scale.json (a replay's scale sources), backend.json (with the backend), trajectory_est.tum, trajectory_gt.tum,
    trajectory_map.tum + map.json, trajectory_path.tum + path.json (with the backend), trajectory.png, config.yaml; returns the report."""
    from kp2d_ros.errors import DataError

    try:
        return _write_outputs(result, sequence, cfg, out_dir)
    except OSError as e:
        raise DataError(f"cannot write results to {out_dir}: {e.strerror or e}") from None


def _write_outputs(result, sequence, cfg, out_dir: Path) -> dict:
    from kp2d_ros.config import dump_config
    from kp2d_ros.eval.metrics import write_tum
    from kp2d_ros.eval.plots import plot_replay

    out_dir.mkdir(parents=True, exist_ok=True)
    report = result.report()
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if getattr(result, "scale", None) is not None:
        (out_dir / "scale.json").write_text(json.dumps(result.scale, indent=2) + "\n")
    backend_json = out_dir / "backend.json"
    if getattr(result, "backend", None) is not None:
        backend_json.write_text(json.dumps(result.backend, indent=2) + "\n")
    else:
        backend_json.unlink(missing_ok=True)  # a stale file from an earlier run would be misleading
    write_tum(result.estimate, out_dir / "trajectory_est.tum")
    for name, trajectory, summary in (("path", getattr(result, "refined", None), result.refined_report),
                                      ("map", getattr(result, "in_map", None), result.in_map_report)):
        tum, summary_json = out_dir / f"trajectory_{name}.tum", out_dir / f"{name}.json"
        if trajectory is not None:
            write_tum(trajectory, tum)
            summary_json.write_text(json.dumps(summary(), indent=2) + "\n")
        else:
            for stale in (tum, summary_json):
                stale.unlink(missing_ok=True)
    gt_file = out_dir / "trajectory_gt.tum"
    if sequence.ground_truth is not None and len(sequence.ground_truth):
        write_tum(sequence.ground_truth, gt_file)
    elif gt_file.exists():
        gt_file.unlink()  # a stale file from an earlier run would be misleading
    plot_replay(result, out_dir / "trajectory.png")
    dump_config(cfg, out_dir / "config.yaml")
    return report


def print_summary(result, report: dict, out_dir: Path) -> None:
    def fmt(v, unit, digits=3):
        return "n/a (no ground truth)" if v is None else f"{v:.{digits}f} {unit}"

    tracked = "" if report["tracked_frames"] is None else f", {report['tracked_frames']} tracked"
    print(f"sequence {result.sequence}: {report['frames']} frames{tracked}, frontend {report['frontend']}")
    if report["path_length_m"] is not None:
        print(f"  path length   {report['path_length_m']:.2f} m")
    print(f"  ATE (Sim3)    {fmt(report['ate_rmse_m'], 'm')}")
    print(f"  RPE rotation  {fmt(report['rpe_rot_deg'], 'deg/frame')}")
    print(f"  RPE transl.   {fmt(report['rpe_trans_m'], 'm/frame')}")
    if report["ate_se3_m"] is not None:
        print(f"  ATE (SE3)     {fmt(report['ate_se3_m'], 'm')} (no scale; Sim3 scale {report['sim3_scale']:.3f}, "
              f"1 = metric)")
    if report["drift_pct"] is not None:
        print(f"  drift         {report['drift_pct']:.2f} %, {report['drift_deg_per_m']:.4f} deg/m over "
              f"{report['segment_m']:g} m segments (un-rescaled estimate)")
    if getattr(result, "scale", None) is not None:
        print(f"  scale         {result.scale['verdict']} (scale.json)")
    path = result.refined_report() if getattr(result, "refined", None) is not None else None
    if path is not None and path["ate_rmse_m"] is not None:
        print(f"  refined path  ATE {path['ate_rmse_m']:.3f} m, RPE {path['rpe_rot_deg']:.3f} deg / "
              f"{path['rpe_trans_m']:.3f} m per frame (the node's path after the backend; path.json)")
    in_map = result.in_map_report() if getattr(result, "in_map", None) is not None else None
    if in_map is not None and in_map["ate_rmse_m"] is not None:
        print(f"  in map        ATE {in_map['ate_rmse_m']:.3f} m, RPE {in_map['rpe_rot_deg']:.3f} deg / "
              f"{in_map['rpe_trans_m']:.3f} m per frame (TF map -> base at each frame, with the backend's "
              f"corrections; map.json)")
    b = getattr(result, "backend", None)
    if b is not None:
        lag, t = b["lag_keyframes"], b["time_ms"]
        late = "" if lag["median"] is None else (f", landing {lag['median']:g} keyframes late (median; max "
                                                 f"{lag['max']:g}), {t['median']:.0f} ms each (median)")
        busy = f", {b['skipped_busy']} keyframes found the worker busy" if b["skipped_busy"] else ""
        print(f"  backend       {b['windows_taken']} windows taken for {b['keyframes']} keyframes ({b['mode']}){late}"
              f"{busy} (backend.json)")
    if report.get("camera_k1") is not None:
        print(f"  camera k1     {report['camera_k1']:+.4f} (residual radial distortion, backend self-calibration)")
    if report["fps"] is not None:
        print(f"  speed         {report['fps']:.1f} FPS (pipeline only)")
    print(f"  results in    {out_dir}")


def run(args) -> int:
    from kp2d_ros.errors import DataError
    from kp2d_ros.eval.replay import replay

    if args.backend_lag < 0 or args.backend_lag and args.backend_threaded:
        raise DataError("--backend-lag must be >= 0, and not combined with --backend-threaded")
    cfg = load_effective_config(args)
    cfg.backend.threaded = bool(args.backend_threaded)  # deterministic unless asked
    seq = open_input(args, cfg)
    if args.simulate:
        from kp2d_ros.data.faults import simulate

        seq = simulate(seq, args.simulate)
    result = replay(seq, cfg, progress=not args.no_progress, backend_lag=args.backend_lag)
    out_dir = Path(args.out)
    report = write_outputs(result, seq, cfg, out_dir)
    print_summary(result, report, out_dir)
    return 0
