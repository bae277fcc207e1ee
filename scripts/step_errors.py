"""Where a replay's per-frame RPE comes from: each step's error, grouped by frame kind. A diagnostic for issue 11.

Replays a sequence with ground truth, aligns the whole estimate with Sim(3) (as ``kp2d replay`` scores it),
and for every step i-1 -> i prints the tracking status, ``motion_model``, whether frame i became a keyframe,
the ground-truth step and rotation, the step's translation error (mm) and rotation error (degrees), its
length ratio to the truth and the angle between its direction and the truth's. Then the RMS errors and their
share of the squared sums over keyframes / non-keyframes / turning (ground-truth rotation above
``--turn-deg`` per frame) / straight steps, and the steps with the largest rotation errors. Writes JSON.

Example (the slow synthetic street of docs/results.md's *Robustness* section)::

    python scripts/step_errors.py out/syn/street_0.05_320 --config config/vo_classical.yaml \\
        --turn-deg 0.1 --out out/step_errors_slow.json
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sequence")
    ap.add_argument("--config", default="config/vo.yaml")
    ap.add_argument("--set", nargs="*", default=[], help="dotted config overrides (as kp2d replay --set)")
    ap.add_argument("--turn-deg", type=float, default=0.1, help="a step rotating more than this is in a turn")
    ap.add_argument("--worst", type=int, default=10, help="print this many steps with the largest rotation error")
    ap.add_argument("--quiet", action="store_true", help="no per-step rows")
    ap.add_argument("--out", default=None, help="JSON file")
    args = ap.parse_args(argv)

    from kp2d_ros.config import load_config, parse_overrides
    from kp2d_ros.data.dataset import open_sequence
    from kp2d_ros.eval.metrics import evaluate
    from kp2d_ros.geometry import invert_se3, rotation_angle_deg
    from kp2d_ros.pipeline import VOPipeline
    from kp2d_ros.types import Trajectory

    cfg = load_config(args.config, overrides=parse_overrides(args.set) or None)
    seq = open_sequence(args.sequence)
    if seq.ground_truth is None:
        print(f"{args.sequence}: no ground truth", file=sys.stderr)
        return 2
    vo = VOPipeline(cfg)
    try:
        ests = [vo.process(frame) for frame in seq]
    finally:
        vo.close()
    est = Trajectory(np.array([e.stamp for e in ests]), np.array([e.T_world_cam for e in ests]))
    m = evaluate(est, seq.ground_truth)
    if m.matched != len(ests):
        print(f"only {m.matched} of {len(ests)} frames have ground truth", file=sys.stderr)
        return 2
    E, G = m.est_aligned.poses, m.gt.poses
    rows = []
    for i in range(1, len(E)):
        dE, dG = invert_se3(E[i - 1]) @ E[i], invert_se3(G[i - 1]) @ G[i]
        err = invert_se3(dG) @ dE
        lE, lG = np.linalg.norm(dE[:3, 3]), np.linalg.norm(dG[:3, 3])
        cos = dE[:3, 3] @ dG[:3, 3] / max(lE * lG, 1e-12)
        e = ests[i]
        rows.append({"frame": i, "status": e.status.value, "motion_model": e.motion_model,
                     "keyframe": bool(e.is_keyframe), "gt_step": float(lG),
                     "gt_rot_deg": float(rotation_angle_deg(dG[:3, :3])),
                     "trans_err_mm": float(np.linalg.norm(err[:3, 3]) * 1e3),
                     "rot_err_deg": float(rotation_angle_deg(err[:3, :3])),
                     "length_ratio": float(lE / max(lG, 1e-12)),
                     "direction_err_deg": float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))})
        if not args.quiet:
            r = rows[-1]
            print(f"{i:5d} {r['status']:<9} {r['motion_model']:<17} kf={int(r['keyframe'])} "
                  f"gt {r['gt_step']:.4f} {r['gt_rot_deg']:.3f}deg  err {r['trans_err_mm']:7.2f} mm "
                  f"{r['rot_err_deg']:.4f}deg  length x{r['length_ratio']:.3f}  direction {r['direction_err_deg']:.2f}deg")

    t2 = np.array([r["trans_err_mm"] for r in rows]) ** 2
    r2 = np.array([r["rot_err_deg"] for r in rows]) ** 2
    groups = {"all": np.ones(len(rows), bool), "keyframes": np.array([r["keyframe"] for r in rows]),
              "turn": np.array([r["gt_rot_deg"] > args.turn_deg for r in rows])}
    groups["non_keyframes"] = ~groups["keyframes"]
    groups["straight"] = ~groups["turn"]
    summary = {}
    for name, sel in groups.items():
        if sel.any():
            summary[name] = {"steps": int(sel.sum()), "trans_rmse_mm": float(np.sqrt(t2[sel].mean())),
                             "rot_rmse_deg": float(np.sqrt(r2[sel].mean())),
                             "trans_share": float(t2[sel].sum() / t2.sum()), "rot_share": float(r2[sel].sum() / r2.sum())}
    print(f"\n{'steps':<14} {'n':>5} {'trans mm':>9} {'rot deg':>8} {'share t':>8} {'share r':>8}")
    for name, s in summary.items():
        print(f"{name:<14} {s['steps']:5d} {s['trans_rmse_mm']:9.2f} {s['rot_rmse_deg']:8.4f} "
              f"{s['trans_share']:8.2f} {s['rot_share']:8.2f}")
    worst = np.argsort(-r2)[:args.worst]
    print(f"\n{args.worst} largest rotation errors ({r2[worst].sum() / r2.sum():.0%} of the squared sum): frames "
          + ", ".join(str(rows[k]["frame"]) for k in worst))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"sequence": args.sequence, "config": args.config, "overrides": args.set,
                       "ate_rmse_m": m.ate.rmse, "rpe_trans_m": m.rpe.trans_rmse_m, "rpe_rot_deg": m.rpe.rot_rmse_deg,
                       "summary": summary, "steps": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
