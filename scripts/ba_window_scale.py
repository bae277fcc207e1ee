"""Is the backend's window optimum biased in scale? A diagnostic for issue 13.

Replays a sequence with ground truth (deterministic backend), and every ``--every`` frames optimises the
current window once more and compares its length ratio with the ground truth's:

    ratio = |c_newest - c_oldest| / |c_second - c_oldest|     (c: keyframe centres; the two oldest are fixed)

``ratio(BA) / ratio(GT)`` above 1 means the window stretches the trajectory beyond its fixed first step (the
scale grows towards the newest keyframes). Prints one row per window and writes JSON.

Example::

    python scripts/ba_window_scale.py ../shared/data/vo/kitti07_f0000-0159 --config config/vo_classical.yaml \\
        --frames 60 --window 5 --out out/ba_window_scale.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sequence")
    ap.add_argument("--config", default="config/vo.yaml")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--fixed", type=int, default=2, help="backend.fixed_keyframes (held; < --window)")
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, as kp2d replay's")
    ap.add_argument("--out", default="out/ba_window_scale.json")
    args = ap.parse_args(argv)

    from kp2d_ros.backend import WindowProblem, bundle_adjust
    from kp2d_ros.config import load_config, parse_overrides
    from kp2d_ros.data import open_sequence
    from kp2d_ros.geometry import focal_length
    from kp2d_ros.pipeline import VOPipeline

    cfg = load_config(args.config, overrides=parse_overrides(args.set))
    cfg.backend.window, cfg.backend.fixed_keyframes, cfg.backend.threaded = args.window, args.fixed, False
    seq = open_sequence(args.sequence, camera=cfg.camera, max_frames=args.frames)
    if seq.ground_truth is None:
        print("the sequence has no ground truth", file=sys.stderr)
        return 2
    gt = seq.ground_truth.poses
    pipe = VOPipeline(cfg)
    frame_of: dict[int, int] = {}
    rows = []

    def ratio(P: np.ndarray) -> float:
        return float(np.linalg.norm(P[-1] - P[0]) / np.linalg.norm(P[1] - P[0]))

    for i, frame in enumerate(seq):
        est = pipe.process(frame)
        if est.is_keyframe:
            frame_of[pipe.ref.id] = i
        if i < 3 * args.window or i % args.every:
            continue
        f = focal_length(frame.camera) if frame.camera is not None else 1.0
        problem = pipe.map.problem(cfg.backend.noise_px / f)
        if not isinstance(problem, WindowProblem):
            continue
        ids = [int(k) for k in problem.keyframe_ids]
        if any(k not in frame_of for k in ids):
            continue
        result = bundle_adjust(problem, cfg.backend, f)
        if not result.optimised:
            continue
        G = np.stack([gt[frame_of[k]][:3, 3] for k in ids])
        B = np.stack([result.poses[k][:3, 3] for k in ids])
        rows.append({"frame": i, "keyframes": len(ids), "observations": result.num_observations,
                     "ratio_ba_over_gt": ratio(B) / ratio(G)})
        print(f"frame {i:4d}  {len(ids)} keyframes  ratio BA/GT {rows[-1]['ratio_ba_over_gt']:.3f}")
    pipe.close()
    r = np.array([row["ratio_ba_over_gt"] for row in rows])
    summary = {"windows": len(rows), "median": float(np.median(r)) if len(r) else None,
               "share_above_1": float(np.mean(r > 1.0)) if len(r) else None}
    print(f"{summary['windows']} windows, median ratio {summary['median']:.4f}, above 1: {summary['share_above_1']:.0%}"
          if len(r) else "no window optimised")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
