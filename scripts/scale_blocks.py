"""Where a monocular trajectory's scale drifts: step-length ratio to the ground truth per block of frames.

Reads the ``trajectory_est.tum`` / ``trajectory_gt.tum`` pair that ``kp2d replay`` writes (rows paired in
order, as the replay writes them), scales the estimate by the median ratio of the ground truth's step lengths to
its own over all steps (so 1.00 = the trajectory's typical scale), and prints, per block of ``--block`` steps, the
ground truth's speed (m/step), its rotation (deg/step) and the median step-length ratio. A block above 1 is
stretched against the rest of the trajectory; a run of rising blocks is scale drift. Several replay folders can be
compared side by side. Writes JSON.

Example (docs/results.md's *Local bundle adjustment* diagnosis)::

    kp2d replay ../shared/data/vo/kitti07_f0000-0159 --config config/vo_classical.yaml --out out/k07_sift
    python scripts/scale_blocks.py out/k07_sift [out/k07_kp2d ...] --out out/scale_blocks.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def scale_blocks(run_dir: str | Path, block: int = 10) -> dict:
    """Per-block ground-truth speed, rotation and the estimate's step-length ratio of one replay folder.

    Raises
    ------
    FileNotFoundError / DataError
        the folder has no (readable) ``trajectory_est.tum`` / ``trajectory_gt.tum``.
    ValueError
        fewer than 3 poses, or ``block`` < 1.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    from kp2d_ros.data import read_tum
    from kp2d_ros.geometry import rotation_angle_deg

    run = Path(run_dir)
    est, gt = read_tum(run / "trajectory_est.tum").poses, read_tum(run / "trajectory_gt.tum").poses
    n = min(len(est), len(gt))
    if n < 3:
        raise ValueError(f"{run}: {n} poses, need at least 3")
    pe, pg = est[:n, :3, 3], gt[:n, :3, 3]
    se = np.linalg.norm(np.diff(pe, axis=0), axis=1)
    sg = np.linalg.norm(np.diff(pg, axis=0), axis=1)
    rot = np.array([rotation_angle_deg(a[:3, :3].T @ b[:3, :3]) for a, b in zip(gt[: n - 1], gt[1:n])])
    moving = (se > 0) & (sg > 0)
    k = float(np.median(sg[moving] / se[moving])) if moving.any() else 1.0
    ratio = np.where(moving, se * k / np.where(sg > 0, sg, 1.0), np.nan)
    rows = []
    for start in range(0, n - 1, block):
        sl = slice(start, min(start + block, n - 1))
        r = ratio[sl]
        rows.append({"first_step": start, "gt_speed": float(np.median(sg[sl])), "gt_rotation_deg": float(np.median(rot[sl])),
                     "ratio": float(np.nanmedian(r)) if np.isfinite(r).any() else None})
    return {"run": str(run), "steps": n - 1, "scale": k, "blocks": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="kp2d replay output folders")
    ap.add_argument("--block", type=int, default=10, help="steps per block")
    ap.add_argument("--out", default="out/scale_blocks.json")
    args = ap.parse_args(argv)
    from kp2d_ros.errors import DataError

    try:
        results = [scale_blocks(r, args.block) for r in args.runs]
    except (OSError, ValueError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    first = results[0]["blocks"]
    print("steps      " + " ".join(f"{b['first_step']:>5d}" for b in first))
    print("gt m/step  " + " ".join(f"{b['gt_speed']:5.2f}" for b in first))
    print("gt deg/stp " + " ".join(f"{b['gt_rotation_deg']:5.2f}" for b in first))
    for res in results:
        print(f"{Path(res['run']).name[:10]:<10} " + " ".join(
            f"{b['ratio']:5.2f}" if b["ratio"] is not None else "    -" for b in res["blocks"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
