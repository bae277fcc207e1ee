"""``kp2d demo``: render the synthetic sequence and run the VO replay on it (no data needed).

The sequence (textured planes, known camera path, 80 frames 640x480) is written to
OUT/synthetic (reused when it matches --frames/--seed), the replay results (report.json,
trajectories, trajectory.png, config.yaml) to OUT. The same sequence is then replayed with the
classical frontend (config/vo_classical.yaml: SIFT) into OUT/classical and both rows are printed
side by side and saved in OUT/comparison.json (``--compare none`` skips that run).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from kp2d_ros.cli.replay import add_common_arguments


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="VO on a generated synthetic sequence (no data needed)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="output directory (default: a temporary directory)")
    p.add_argument("--frames", type=int, default=80, help="number of synthetic frames (default: 80)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the synthetic images (default: 0)")
    p.add_argument("--compare", default="classical", metavar="CONFIG",
                   help="second run printed beside the first: 'classical' (config/vo_classical.yaml), "
                        "a config YAML, or 'none' (default: classical)")
    p.add_argument("--speed", type=float, default=0.2,
                   help="camera speed in m/frame at 10 Hz (default: 0.2; 0.05 = slow motion on the same street)")
    add_common_arguments(p)
    return p


def classical_config_path() -> Path | None:
    """config/vo_classical.yaml beside the default config/vo.yaml (checkout or installed share dir)."""
    from kp2d_ros.cli.replay import default_config_path

    default = default_config_path()
    path = default.with_name("vo_classical.yaml") if default is not None else None
    return path if path is not None and path.is_file() else None


def run(args) -> int:
    from kp2d_ros.cli.replay import load_effective_config, print_summary, write_outputs
    from kp2d_ros.config import load_config
    from kp2d_ros.data import open_sequence
    from kp2d_ros.data.synthetic import synthetic_matches, write_synthetic_sequence
    from kp2d_ros.errors import DataError
    from kp2d_ros.eval.replay import replay

    if args.frames < 3:
        raise DataError(f"--frames must be >= 3, got {args.frames}")
    if not args.speed > 0:
        raise DataError(f"--speed must be > 0, got {args.speed}")
    cfg = load_effective_config(args)
    compare_cfg = None
    if args.compare != "none":
        path = classical_config_path() if args.compare == "classical" else Path(args.compare)
        if path is None:
            raise DataError("--compare classical: config/vo_classical.yaml not found (use a YAML path or 'none')")
        compare_cfg = load_config(path)
    for c in (cfg, compare_cfg):  # deterministic, as kp2d replay: wait for every backend window
        if c is not None:
            c.backend.threaded = False
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="kp2d_demo_")
        out = Path(tmp.name)
    else:
        out = Path(args.out)
    try:
        seq_dir = out / "synthetic"
        if synthetic_matches(seq_dir, n_frames=args.frames, seed=args.seed, speed=args.speed):
            print(f"using the synthetic sequence in {seq_dir}", file=sys.stderr)
        else:
            print(f"rendering {args.frames} synthetic frames into {seq_dir} ...", file=sys.stderr)
            write_synthetic_sequence(seq_dir, n_frames=args.frames, seed=args.seed, speed=args.speed)
        seq = open_sequence(seq_dir)
        result = replay(seq, cfg, progress=not args.no_progress)
        report = write_outputs(result, seq, cfg, out)
        print_summary(result, report, out)
        if compare_cfg is not None:
            other = replay(seq, compare_cfg, progress=not args.no_progress)
            other_report = write_outputs(other, seq, compare_cfg, out / "classical")
            print_comparison([report, other_report], out / "comparison.json")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def print_comparison(reports: list[dict], path: Path) -> None:
    """One row per run (same sequence), printed and saved as JSON."""
    keys = ("frontend", "tracked_frames", "ate_rmse_m", "rpe_rot_deg", "rpe_trans_m", "fps")
    rows = [{k: r[k] for k in keys} for r in reports]
    path.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{'frontend':<10} {'tracked':>8} {'ATE (Sim3) m':>13} {'RPE rot deg':>12} {'RPE trans m':>12} {'FPS':>6}")
    for r in rows:
        print(f"{r['frontend']:<10} {r['tracked_frames']:>8} {r['ate_rmse_m']:>13.4f} {r['rpe_rot_deg']:>12.4f} "
              f"{r['rpe_trans_m']:>12.4f} {r['fps']:>6.1f}")
    print(f"(same synthetic sequence; saved to {path})")
