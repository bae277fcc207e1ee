#!/usr/bin/env python3
"""What a ground robot does and a car does not, on the synthetic street: turns on the spot, backs up, stops and
turns, strafes, shakes on rough ground. Each scenario is rendered from a known path
(``kp2d_ros.data.synthetic.robot_trajectory``, ``SHAKE`` for the rough ground) and replayed with a config as
``kp2d replay`` does (each backend window waited for); the published odometry is scored.

    python scripts/robot_moves.py [--config config/vo.yaml] [--scenarios turn_in_place,reverse] [--set KEY=VALUE ...]
        [--out out/robot_moves.json]

Per scenario: ATE (Sim(3)-aligned) and RPE rotation, the path length, how far the estimate moved while the truth
stood or turned on the spot (``moved_while_still_m``, at the ATE's scale), and the step lengths' ratio to the truth
(median before and after the first stop or turn, the worst step, and per driving leg ``leg_step_ratios``: its
median, and the medians of its first and last fifth); a scenario that raised keeps its error.
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (frames, forward m, sideways m, yaw deg) per step, see robot_trajectory
SCENARIOS: dict[str, list[tuple[int, float, float, float]]] = {
    "turn_in_place": [(11, 0.2, 0, 0), (15, 0, 0, 6), (12, 0.2, 0, 0)],  # 90 deg on the spot
    "fast_turn": [(9, 0.2, 0, 0), (6, 0, 0, 15), (10, 0.2, 0, 0)],  # 90 deg at 15 deg/frame, to the plain side wall
    "stop_turn_go": [(10, 0.2, 0, 0), (7, 0, 0, 0), (12, 0, 0, 5), (10, 0.2, 0, 0)],  # stop, turn 60 deg, drive on
    "reverse": [(11, 0.2, 0, 0), (5, 0, 0, 0), (14, -0.2, 0, 0)],  # drive, stop, back up
    "reverse_at_once": [(11, 0.2, 0, 0), (14, -0.2, 0, 0)],  # back up without a stop between
    "back_and_forth": [(7, 0.2, 0, 0), (8, -0.2, 0, 0), (8, 0.2, 0, 0), (8, -0.2, 0, 0)],
    "arc_in_reverse": [(9, 0.2, 0, 0), (3, 0, 0, 0), (12, -0.15, 0, -3)],
    "strafe": [(9, 0.2, 0, 0), (12, 0, 0.15, 0), (10, 0.2, 0, 0)],  # sideways (a holonomic base)
    "start_turning": [(8, 0, 0, 4), (12, 0.2, 0, 0)],  # turn on the spot before the first metre
    "slow_spin": [(8, 0.2, 0, 0), (45, 0, 0, 2), (8, 0.2, 0, 0)],  # 90 deg on the spot at 2 deg/frame
    # stop, turn 60 deg on the spot, drive on at half the speed: only landmarks seen across the turn tell
    "slower_after_turn": [(10, 0.2, 0, 0), (7, 0, 0, 0), (12, 0, 0, 5), (10, 0.1, 0, 0)],
    # from standing, speeding up to 0.2 m/frame over 8 frames (a robot pulling away; KITTI 07 starts so)
    "pull_away": [(4, 0, 0, 0)] + [(1, 0.025 * k, 0, 0) for k in range(1, 9)] + [(16, 0.2, 0, 0)],
    # up the street and back, turning 180 deg on the spot at each end: on the way back the view is the ground alone
    "patrol": [(75, 0.2, 0, 0), (30, 0, 0, 6), (50, 0.2, 0, 0), (30, 0, 0, 6), (10, 0.2, 0, 0)],
    # 30 m straight on: a scale that drifts with no turn at all (leg_step_ratios' first and last fifth; stop 54)
    "straight": [(150, 0.2, 0, 0)],
    # three laps of it: 65 m, six turns (506 frames)
    "long_patrol": [(25, 0.2, 0, 0)] + [(50, 0.2, 0, 0), (30, 0, 0, 6), (50, 0.2, 0, 0), (30, 0, 0, 6)] * 3,
    # rough ground (SHAKE): down the street and through a curve while the camera shakes about its mount
    "shaky_drive": [(30, 0.2, 0, 0), (20, 0.2, 0, 1), (30, 0.2, 0, 0)],
    "shaky_turn": [(10, 0.2, 0, 0), (15, 0, 0, 6), (15, 0.2, 0, 0)],  # a turn on the spot on rough ground
}
# (pitch and roll standard deviation in degrees, vertical in metres) per frame, independent frame to frame
SHAKE: dict[str, tuple[float, float]] = {"shaky_drive": (1.0, 0.01), "shaky_turn": (1.0, 0.01)}


def score(name: str, steps, cfg) -> dict:
    from kp2d_ros.data.synthetic import robot_sequence
    from kp2d_ros.eval.replay import replay

    shake_deg, shake_m = SHAKE.get(name, (0.0, 0.0))
    seq = robot_sequence(steps, shake_deg=shake_deg, shake_m=shake_m)
    t0 = time.perf_counter()
    res = replay(seq, cfg, progress=False)
    est = np.array([T[:3, 3] for T in res.estimate.poses])
    gt = np.array([T[:3, 3] for T in seq.ground_truth.poses])
    k = res.metrics.ate.alignment.scale
    step_est = k * np.linalg.norm(np.diff(est, axis=0), axis=1)
    step_gt = np.linalg.norm(np.diff(gt, axis=0), axis=1)
    moving = step_gt > 0
    first_still = int(np.argmin(moving)) if not moving.all() else len(moving)
    ratio = np.where(moving, step_est / np.where(moving, step_gt, 1.0), np.nan)
    before, after = ratio[:first_still][moving[:first_still]], ratio[first_still:][moving[first_still:]]
    with np.errstate(divide="ignore"):  # a step the estimate held (ratio 0: too slow to see) is the worst
        worst = float(ratio[moving][np.argmax(np.abs(np.log(ratio[moving])))]) if moving.any() else None
    # per leg (each (frames, ...) entry that drives): the median step ratio, so that a scale that drifts leg by leg
    # shows (long_patrol's six 10 m legs), and its first and last fifth within the leg
    legs, first = [], 0
    for n, forward, sideways, _ in steps:
        leg = np.arange(max(first - 1, 0), min(first + n - 1, len(ratio)))  # the steps into this entry's frames
        leg = leg[moving[leg]]
        if (forward or sideways) and leg.size:
            fifth = max(leg.size // 5, 1)
            legs.append([float(np.median(ratio[leg])), float(np.median(ratio[leg[:fifth]])),
                         float(np.median(ratio[leg[-fifth:]]))])
        first += n
    return {
        "scenario": name, "steps": [list(s) for s in steps], "frames": len(seq.stamps),
        "path_length_m": float(step_gt.sum()), "ate_m": float(res.metrics.ate.rmse),
        "rpe_rot_deg": float(res.metrics.rpe.rot_rmse_deg),
        "moved_while_still_m": float(step_est[~moving].sum()),
        "step_ratio_before": float(np.median(before)) if before.size else None,
        "step_ratio_after": float(np.median(after)) if after.size else None,
        "step_ratio_worst": worst,
        "leg_step_ratios": legs,  # per driving leg: [median, median of its first fifth, of its last fifth]
        "statuses": sorted({s.name for s in res.statuses}), "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "config" / "vo.yaml"))
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--out", default=None, help="JSON report")
    args = p.parse_args(argv)
    from kp2d_ros.config import VOConfig, load_config, parse_overrides, to_dict
    from kp2d_ros.errors import Kp2dError

    names = [n for n in args.scenarios.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"error: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, cls=VOConfig, overrides=parse_overrides(args.set))
    except Kp2dError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg.backend.threaded = False  # each window waited for, as kp2d replay
    rows = []
    print(f"{'scenario':16s} {'frames':>6s} {'path m':>7s} {'ATE m':>8s} {'RPE rot':>8s} {'moved still m':>13s} "
          f"{'steps before/after/worst':>26s}")
    for name in names:
        try:
            r = score(name, SCENARIOS[name], cfg)
        except Exception as e:  # noqa: BLE001 - a crash is this scenario's result, the others still run
            rows.append({"scenario": name, "steps": [list(s) for s in SCENARIOS[name]],
                         "error": f"{type(e).__name__}: {e}"})
            print(f"{name:16s} failed: {type(e).__name__}: {e}", flush=True)
            continue
        rows.append(r)
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{name:16s} {r['frames']:6d} {r['path_length_m']:7.2f} {r['ate_m']:8.4f} {r['rpe_rot_deg']:8.4f} "
              f"{r['moved_while_still_m']:13.3f} {fmt(r['step_ratio_before']):>8s} {fmt(r['step_ratio_after']):>8s} "
              f"{fmt(r['step_ratio_worst']):>8s}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"config": args.config, "overrides": args.set, "rows": rows,
                                              "effective_config": to_dict(cfg)}, indent=1) + "\n")
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
