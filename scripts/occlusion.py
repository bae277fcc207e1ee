#!/usr/bin/env python3
"""Something that moves on its own fills the view for frames A..B: the trajectory before, during and after it, with
the rejoin after a loss (``pipeline.rejoin_frames``) as configured and turned off.

    python scripts/occlusion.py SEQ A:B [--config config/vo.yaml] [--fault occlude|drop] [--set KEY=VALUE ...]
        [--out out/occlusion.json]

Each run is ``kp2d replay SEQ --simulate occlude=A:B`` (``--fault drop``: the same frames dropped instead, the gap
without the occluder), each backend window waited for. A replay's ATE mixes the occluded frames in; here the
trajectory is Sim(3)-aligned on the frames outside A..B and its RMSE is split into the frames before, during and
after them, for the published odometry (``odom``) and the pose in ``map`` (TF map -> base at each frame). Prints a
table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def split_ate(est, gt, frame_of: np.ndarray, a: int, b: int) -> dict:
    """RMSE (m) of ``est`` against ``gt`` before, during and after original frames a..b, after a Sim(3) alignment on
    the frames outside them. ``frame_of``: the original frame number of each of ``est``'s poses."""
    from kp2d_ros.eval.metrics import align, apply_alignment
    from kp2d_ros.types import Trajectory

    outside = (frame_of < a) | (frame_of > b)
    pick = lambda t, m: Trajectory(t.stamps[m], t.poses[m])  # noqa: E731
    aligned = apply_alignment(est, align(pick(est, outside), pick(gt, outside)))
    err = np.linalg.norm(aligned.poses[:, :3, 3] - gt.poses[:, :3, 3], axis=1)
    rmse = lambda m: float(np.sqrt(np.mean(err[m] ** 2))) if m.any() else None  # noqa: E731
    return {"before": rmse(frame_of < a), "during": rmse(~outside), "after": rmse(frame_of > b)}


def run(seq_path: str, a: int, b: int, fault: str, cfg) -> dict:
    from kp2d_ros.data.dataset import open_sequence
    from kp2d_ros.data.faults import simulate
    from kp2d_ros.eval.replay import replay
    from kp2d_ros.types import Trajectory

    base = open_sequence(seq_path)
    seq = simulate(base, f"{fault}={a}:{b}")
    res = replay(seq, cfg, progress=False)
    gt = seq.ground_truth
    # the poses with a ground truth at their stamps (every frame of the sequences used here), and their frame numbers
    idx = np.searchsorted(res.estimate.stamps, gt.stamps)
    frame_of = np.searchsorted(base.stamps, gt.stamps)
    out = {"frames": len(seq.stamps), "ate_m": res.metrics.ate.rmse if res.metrics else None,
           "lost_frames": int(sum(s.name == "LOST" for s in res.statuses))}
    for name, traj in (("odom", res.estimate), ("map", res.in_map if res.in_map is not None else res.estimate)):
        out[name] = split_ate(Trajectory(traj.stamps[idx], traj.poses[idx]), gt, frame_of, a, b)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sequence", help="a sequence kp2d replay reads, with ground truth")
    p.add_argument("frames", help="A:B, the original frames occluded (or dropped)")
    p.add_argument("--config", default=str(REPO / "config" / "vo.yaml"))
    p.add_argument("--fault", choices=("occlude", "drop"), default="occlude")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--out", default=None, help="JSON report")
    args = p.parse_args(argv)
    from kp2d_ros.config import VOConfig, load_config, parse_overrides, to_dict
    from kp2d_ros.errors import Kp2dError

    try:
        a, b = (int(v) for v in args.frames.split(":"))
        cfg = load_config(args.config, cls=VOConfig, overrides=parse_overrides(args.set))
    except ValueError:
        print(f"error: frames must be A:B, got {args.frames!r}", file=sys.stderr)
        return 2
    except Kp2dError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg.backend.threaded = False  # each window waited for, as kp2d replay
    effective = to_dict(cfg)
    rows = []
    print(f"{'rejoin_frames':>13s} {'lost':>5s} {'odom before/during/after m':>28s} {'map before/during/after m':>28s}")
    for rejoin in dict.fromkeys((cfg.pipeline.rejoin_frames, 0)):
        cfg.pipeline.rejoin_frames = rejoin
        try:
            r = run(args.sequence, a, b, args.fault, cfg)
        except Kp2dError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        r["rejoin_frames"] = rejoin
        rows.append(r)
        fmt = lambda d: " ".join("-" if d[k] is None else f"{d[k]:8.3f}" for k in ("before", "during", "after"))  # noqa: E731
        print(f"{rejoin:13d} {r['lost_frames']:5d} {fmt(r['odom']):>28s} {fmt(r['map']):>28s}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"sequence": args.sequence, "frames": [a, b], "fault": args.fault,
                                              "config": args.config, "overrides": args.set, "rows": rows,
                                              "effective_config": effective}, indent=1) + "\n")
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
