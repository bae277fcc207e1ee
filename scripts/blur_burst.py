#!/usr/bin/env python3
"""Diagnostic (stops 27-28): a burst of blurred frames (a bump, a fast pan) in a sequence with ground truth.

    python scripts/blur_burst.py SEQUENCE [--config config/vo.yaml] [--first 40] [--count 5] [--sigma 6]
                                 [--set KEY=VALUE ...] [--out FILE.json]

Frames ``first`` .. ``first + count - 1`` are blurred by a Gaussian of ``sigma`` px (0: none) before the pipeline
sees them; the backend waits for each window (deterministic, as ``kp2d replay``). Prints each frame's status around
the burst and the published odometry's ATE (Sim3-aligned, metres), and saves them as JSON with ``--out``.
``--set pipeline.blur_ratio=0`` turns the blur gate off. The synthetic street (``make demo``'s) is written by
``python -c "from kp2d_ros.data.synthetic import write_synthetic_sequence as w; w('out/street', 80)"``.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import cv2
import numpy as np

from kp2d_ros.config import load_config, parse_overrides
from kp2d_ros.data import open_sequence
from kp2d_ros.eval.metrics import evaluate
from kp2d_ros.pipeline import VOPipeline
from kp2d_ros.types import Trajectory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sequence")
    p.add_argument("--config", default="config/vo.yaml")
    p.add_argument("--first", type=int, default=40)
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--sigma", type=float, default=6.0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--out")
    args = p.parse_args(argv)
    overrides = {"backend.threaded": False, **parse_overrides(args.set)}
    cfg = load_config(args.config, overrides=overrides)
    seq = open_sequence(args.sequence, camera=cfg.camera)
    if seq.ground_truth is None:
        print(f"{args.sequence}: no ground truth", file=sys.stderr)
        return 2
    burst = range(args.first, args.first + args.count)
    vo = VOPipeline(cfg)
    stamps, poses, frames = [], [], []
    try:
        for i, frame in enumerate(seq):
            if i in burst and args.sigma > 0:
                frame = replace(frame, image=cv2.GaussianBlur(frame.image, (0, 0), args.sigma))
            est = vo.process(frame)
            stamps.append(frame.stamp)
            poses.append(est.T_odom_cam if est.T_odom_cam is not None else est.T_world_cam)
            if args.first - 2 <= i < args.first + args.count + 3:
                frames.append({"frame": i, "status": est.status.value, "keyframe": est.is_keyframe,
                               "matches": est.num_matches, "inliers": est.num_inliers,
                               "motion_model": est.motion_model})
                print(f"{i:4d} {est.status.value:9s} {'kf' if est.is_keyframe else '  '} matches {est.num_matches:5d} "
                      f"inliers {est.num_inliers:5d} {est.motion_model}")
    finally:
        vo.close()
    m = evaluate(Trajectory(np.array(stamps), np.stack(poses)), seq.ground_truth)
    lost = sum(f["status"] == "lost" for f in frames)
    result = {"sequence": args.sequence, "config": args.config, "set": args.set, "first": args.first,
              "count": args.count, "sigma": args.sigma, "ate_m": round(m.ate.rmse, 4),
              "rpe_rot_deg": round(m.rpe.rot_rmse_deg, 4) if m.rpe is not None else None, "lost_near_burst": lost,
              "frames": frames}
    print(json.dumps({k: v for k, v in result.items() if k != "frames"}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
