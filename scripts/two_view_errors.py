"""Two-view accuracy of the front end over many frame pairs: a measure of keypoints for VO that one clip's ATE is not.

A 160-frame ATE moves by tens of percent with any small change of the keypoints (a 0.02 px jitter: KITTI 07 0.057 to
0.081 m), because the scale carried through a turn compounds. This script scores each frame pair (i, i + gap) on its
own instead: a fresh pipeline (the config's detection, matching, IO-Net, LK refinement and essential matrix; the
backend off) poses frame i + gap against frame i, and the pose is compared with the ground truth's relative pose:

- rotation error (degrees), the angle of R_gt^T R_est;
- translation-direction error (degrees), the angle between the two translations (a monocular pair has no length).

Prints the median and mean of both per ``SEQUENCE:GAP:STRIDE`` (with ``--ranges A:B ...`` also the medians of the
pairs whose first frame index is in each [A, B), e.g. KITTI 07's turns 10:45 118:152) and writes JSON with every pair.
``street`` is the demo's synthetic street (80 frames, seed 0), written to a temporary folder.

Example (models/README.md, *Stage 4*: the shipped weights against stage 4's)::

    python scripts/two_view_errors.py --set frontend.model_path=out/kpn_snap4.pt matching.io_net_path=out/io_snap4.pt \\
        --pairs ../shared/data/vo/kitti07_f0000-0159:1:1 ../shared/data/vo/kitti07_f0000-0159:3:3 \\
        ../shared/data/vo/tum_fr2_desk_20f:1:1 street:2:2 --out out/two_view_snap4.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def two_view_errors(sequence, cfg, gap: int = 1, stride: int = 1, pairs=None) -> dict:
    """Pose each pair (i, i + gap), i = 0, stride, ..., of ``sequence`` (a :class:`kp2d_ros.data.sequence.Sequence`
    with ground truth at its frames' stamps) with a reset pipeline of ``cfg`` (its backend is turned off here).
    ``pairs``: explicit (i, j) positions in the sequence's frame list instead of ``gap`` and ``stride``.

    Returns {"pairs": [{"first", "second", "status", "rot_err_deg", "t_dir_err_deg"}] (``first``/``second``: the
    frames' indices), "rot_err_deg_median", "rot_err_deg_mean", "t_dir_err_deg_median", "t_dir_err_deg_mean"};
    ``t_dir_err_deg`` is None where either translation is zero (a static or rotation-only estimate).

    Raises
    ------
    ValueError
        no ground truth, a frame without a ground-truth pose at its stamp, or no pair.
    """
    import copy

    from kp2d_ros.geometry import angle_between_deg, rotation_angle_deg
    from kp2d_ros.pipeline import VOPipeline

    truth = sequence.ground_truth
    if truth is None:
        raise ValueError("the sequence has no ground truth")
    frames = list(sequence)
    if pairs is None:
        if gap < 1 or stride < 1 or len(frames) <= gap:
            raise ValueError(f"no pair: {len(frames)} frames, gap {gap}, stride {stride}")
        pairs = [(i, i + gap) for i in range(0, len(frames) - gap, stride)]
    pairs = list(pairs)
    if not pairs or any(not 0 <= k < len(frames) for pair in pairs for k in pair):
        raise ValueError(f"no pair, or a pair outside the {len(frames)} frames: {pairs}")

    def pose_at(frame) -> np.ndarray:
        j = int(np.argmin(np.abs(truth.stamps - frame.stamp)))
        if abs(truth.stamps[j] - frame.stamp) > 1e-3:
            raise ValueError(f"no ground-truth pose at frame {frame.index} ({frame.stamp:.3f} s)")
        return truth.poses[j]

    cfg = copy.deepcopy(cfg)
    cfg.backend.window = 0
    vo = VOPipeline(cfg)
    rows = []
    try:
        for i, j in pairs:
            a, b = frames[i], frames[j]
            vo.reset()
            vo.process(a)  # the world frame
            est = vo.process(b)
            truth_ab = np.linalg.inv(pose_at(a)) @ pose_at(b)
            rot = rotation_angle_deg(truth_ab[:3, :3].T @ est.T_world_cam[:3, :3])
            t_dir = angle_between_deg(truth_ab[:3, 3], est.T_world_cam[:3, 3])  # NaN when either is zero
            rows.append({"first": a.index, "second": b.index, "status": est.status.value, "rot_err_deg": float(rot),
                         "t_dir_err_deg": None if np.isnan(t_dir) else t_dir})
    finally:
        vo.close()
    rot = np.array([r["rot_err_deg"] for r in rows])
    t_dir = np.array([r["t_dir_err_deg"] for r in rows if r["t_dir_err_deg"] is not None])
    return {"gap": gap, "stride": stride, "pairs": rows,
            "rot_err_deg_median": float(np.median(rot)), "rot_err_deg_mean": float(np.mean(rot)),
            "t_dir_err_deg_median": float(np.median(t_dir)) if len(t_dir) else None,
            "t_dir_err_deg_mean": float(np.mean(t_dir)) if len(t_dir) else None}


def by_range(result: dict, ranges: list[tuple[int, int]]) -> dict:
    """Median rotation and direction errors of the pairs of ``result`` (:func:`two_view_errors`) whose first frame
    index lies in each [a, b) of ``ranges`` (e.g. a clip's turns), keyed "a:b"; None where a range has no pair."""
    out = {}
    for a, b in ranges:
        rows = [r for r in result["pairs"] if a <= r["first"] < b]
        t_dir = [r["t_dir_err_deg"] for r in rows if r["t_dir_err_deg"] is not None]
        out[f"{a}:{b}"] = {"pairs": len(rows),
                           "rot_err_deg_median": float(np.median([r["rot_err_deg"] for r in rows])) if rows else None,
                           "t_dir_err_deg_median": float(np.median(t_dir)) if t_dir else None}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", required=True, metavar="SEQUENCE:GAP:STRIDE",
                    help="a sequence folder or bag with ground truth (or 'street'), the frame gap and the stride")
    ap.add_argument("--config", default="config/vo.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted config overrides")
    ap.add_argument("--ranges", nargs="*", default=[], metavar="A:B",
                    help="also the medians of the pairs whose first frame index is in [A, B), e.g. a clip's turns")
    ap.add_argument("--out", default=None, help="JSON file")
    args = ap.parse_args(argv)
    try:
        ranges = [tuple(int(v) for v in r.split(":")) for r in args.ranges]
        if any(len(r) != 2 for r in ranges):
            raise ValueError
    except ValueError:
        print(f"two_view_errors: --ranges takes A:B, got {args.ranges}", file=sys.stderr)
        return 2

    from kp2d_ros.config import load_config, parse_overrides
    from kp2d_ros.data import open_sequence
    from kp2d_ros.data.synthetic import write_synthetic_sequence
    from kp2d_ros.errors import Kp2dError

    results = {"config": args.config, "overrides": args.set, "runs": {}}
    try:
        cfg = load_config(args.config, overrides=parse_overrides(args.set))
        with tempfile.TemporaryDirectory() as tmp:
            for spec in args.pairs:
                path, gap, stride = spec.rsplit(":", 2)
                if path == "street":
                    path = write_synthetic_sequence(Path(tmp) / "street", n_frames=80, seed=0)
                r = two_view_errors(open_sequence(path, camera=cfg.camera), cfg, int(gap), int(stride))
                results["runs"][spec] = r
                t_med = r["t_dir_err_deg_median"]
                print(f"{spec:<50} pairs {len(r['pairs']):>4}  rotation error median {r['rot_err_deg_median']:.4f} "
                      f"mean {r['rot_err_deg_mean']:.4f} deg  direction error median "
                      f"{float('nan') if t_med is None else t_med:.3f} deg", flush=True)
                if ranges:
                    r["ranges"] = by_range(r, ranges)
                    for key, g in r["ranges"].items():
                        rot_med, dir_med = (float("nan") if v is None else v
                                            for v in (g["rot_err_deg_median"], g["t_dir_err_deg_median"]))
                        print(f"  first frame in [{key}): pairs {g['pairs']:>4}  rotation error median {rot_med:.4f} "
                              f"deg  direction error median {dir_med:.3f} deg", flush=True)
    except (Kp2dError, ValueError, OSError) as e:
        print(f"two_view_errors: {e}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
