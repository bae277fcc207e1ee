"""How close is each keyframe pair's ground plane to the truth? A diagnostic for issue 12.

Replays a sequence with ground truth and, at every keyframe pair where the pipeline measures the ground
plane, fits it four ways: the corners tracked plainly by Lucas-Kanade or along the homography of the plane
the first tracks show (``GroundPoints``, what the pipeline does), and the plane fitted in 3-D (RANSAC + total
least squares) or refitted in the images (``fit_ground_plane`` with the views, what the pipeline does). The
truth: the camera height over the pair's ground-truth baseline (a pair's unit translation is that long), so

    ratio = fitted height / (camera_height_m / |c_cur - c_ref|)    (1: right; > 1: scale too short)

Prints, per variant, the median ratio, the robust spread of log(ratio) (1.4826 MAD), its plain standard
deviation and the fit's own mean log-sigma, over the pairs with a ground-truth baseline of at least
``--min-baseline`` metres; writes every pair to JSON.

Example::

    python scripts/ground_plane_accuracy.py ../shared/data/vo/kitti07_f0000-0159 --config config/vo_classical.yaml \\
        --out out/ground_plane_accuracy_sift.json
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
    ap.add_argument("--height", type=float, default=1.65, help="geometry.camera_height_m (KITTI: 1.65)")
    ap.add_argument("--min-baseline", type=float, default=0.3)
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--out", default="out/ground_plane_accuracy.json")
    args = ap.parse_args(argv)

    from kp2d_ros.config import load_config
    from kp2d_ros.data import open_sequence
    from kp2d_ros.pipeline import VOPipeline
    from kp2d_ros.scale import GroundObservation, GroundPoints, fit_ground_plane, ground_direction

    cfg = load_config(args.config, overrides={"geometry.camera_height_m": args.height})
    seq = open_sequence(args.sequence, camera=cfg.camera, max_frames=args.max_frames)
    if seq.ground_truth is None:
        print("the sequence has no ground truth", file=sys.stderr)
        return 2
    centres = np.asarray(seq.ground_truth.poses)[:, :3, 3]
    down = ground_direction(cfg)
    pipe = VOPipeline(cfg)
    tracked = pipe.ground_points  # what the pipeline uses (predicted homography)
    plain = GroundPoints(cfg, predict=False)
    state = {"frame": 0, "ref": 0}
    rows = []

    def measure(ref_image, cur_image, camera, R, t):
        obs = tracked(ref_image, cur_image, camera, R, t)
        i, ref = state["frame"], state["ref"]
        baseline = float(np.linalg.norm(centres[i] - centres[ref]))
        row = {"ref": ref, "cur": i, "baseline_m": baseline}
        for name, o in (("warped", obs), ("plain", plain(ref_image, cur_image, camera, R, t))):
            for fit, oo in (("image", o), ("3d", GroundObservation(o.rays, o.inv_depth, o.inv_depth_sigma))):
                res = fit_ground_plane(oo, cfg, down)
                ok = res.plane is not None and baseline > 0
                row[f"{name}_{fit}"] = res.plane.height * baseline / args.height if ok else None
                row[f"{name}_{fit}_log_sigma"] = res.plane.log_sigma if ok else None
        rows.append(row)
        return obs

    pipe.ground_points = measure
    for i, frame in enumerate(seq):
        state["frame"] = i
        est = pipe.process(frame)
        if est.is_keyframe:
            state["ref"] = i
    pipe.close()

    summary = {}
    print(f"{'tracking + fit':16s} {'pairs':>5s} {'median':>7s} {'robust sd':>9s} {'sd':>7s} {'fit sigma':>9s}")
    for name in ("plain_3d", "plain_image", "warped_3d", "warped_image"):
        use = [r for r in rows if r[name] is not None and r["baseline_m"] >= args.min_baseline]
        lr = np.log([r[name] for r in use])
        if not len(lr):
            continue
        s = {"pairs": len(lr), "median_ratio": float(np.exp(np.median(lr))),
             "robust_sd_log": float(1.4826 * np.median(np.abs(lr - np.median(lr)))), "sd_log": float(np.std(lr)),
             "mean_fit_log_sigma": float(np.mean([r[name + "_log_sigma"] for r in use]))}
        summary[name] = s
        print(f"{name:16s} {s['pairs']:5d} {s['median_ratio']:7.4f} {s['robust_sd_log']:9.4f} {s['sd_log']:7.4f} "
              f"{s['mean_fit_log_sigma']:9.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
