"""``kp2d demo``: render the synthetic sequence and run the VO replay on it (no data needed).

The sequence (textured planes, known camera path, 80 frames 640x480) is written to
OUT/synthetic (reused when it matches --frames/--seed), the replay results (report.json,
trajectories, trajectory.png, config.yaml) to OUT.
"""
from __future__ import annotations

import argparse
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
    p.add_argument("--speed", type=float, default=0.2,
                   help="camera speed in m/frame at 10 Hz (default: 0.2; 0.05 = slow motion on the same street)")
    add_common_arguments(p)
    return p


def run(args) -> int:
    from kp2d_ros.cli.replay import load_effective_config, print_summary, write_outputs
    from kp2d_ros.data import open_sequence
    from kp2d_ros.data.synthetic import synthetic_matches, write_synthetic_sequence
    from kp2d_ros.errors import DataError
    from kp2d_ros.eval.replay import replay

    if args.frames < 3:
        raise DataError(f"--frames must be >= 3, got {args.frames}")
    if not args.speed > 0:
        raise DataError(f"--speed must be > 0, got {args.speed}")
    cfg = load_effective_config(args)
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
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0
