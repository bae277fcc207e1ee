#!/usr/bin/env python3
"""How the choice of points biases the ratio method's scale, with true poses (stop 54: why a long patrol shrinks).

    python scripts/scale_selection_bias.py [--noise-px 0.5] [--step 0.4] [--trials 4] [--out out/selection_bias.json]

Three views ``--step`` metres apart along the optical axis (a camera driving forward), 200 000 points on a
street-like volume (x in [-7, 7] m, y in [-1.5, 1.6] m, z in [3, 38] m) seen by all three, Gaussian noise on the
normalised coordinates (``--noise-px`` at f = 500). The reference's inverse depths come from the pair (0, 1) along
view 1's rays and this pair's from (1, 2) along the same rays (``kp2d_ros.geometry.inverse_depths`` with the true
unit-length translation: the true ratio is 1). Per threshold (standard deviations of inverse depth), the median log
ratio of the points each rule keeps:

- ``each``: both pairs' depths pass on their own (the pipeline's ratio method, ``VOPipeline._scale``);
- ``none``: every point with both depths positive;
- ``fused``: the two depths fused by their inverse variances pass against the fused standard deviation;
- ``fused_summed``: the fused depth passes against the square root of the summed variances (each vote as precise).

A rule whose choice depends on one pair's noise more than the other's biases the median; prints and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from kp2d_ros.geometry import inverse_depths

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noise-px", type=float, default=0.5)
    p.add_argument("--step", type=float, default=0.4, help="metres between the views")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--thresholds", default="4,6,9,12", help="standard deviations, comma-separated")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    f, n = 500.0, 200000
    noise = args.noise_px / f
    X = np.c_[rng.uniform(-7, 7, n), rng.uniform(-1.5, 1.6, n), rng.uniform(3, 38, n)]
    views, seen = [], np.ones(n, bool)
    for z in (-args.step, 0.0, args.step):
        x = X - [0.0, 0.0, z]
        uv = x[:, :2] / x[:, 2:]
        seen &= (np.abs(uv[:, 0]) < 0.64) & (np.abs(uv[:, 1]) < 0.48)
        views.append(uv)
    views = [uv[seen] for uv in views]
    R, t = np.eye(3), np.array([0.0, 0.0, -1.0])
    thresholds = [float(v) for v in args.thresholds.split(",")]
    rows: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.trials):
        v = [u + rng.normal(0, noise, u.shape) for u in views]
        _, rho_ref, _, sin1 = inverse_depths(v[0], v[1], R, t)
        rho, _, sin0, _ = inverse_depths(v[1], v[2], R, t)
        # standard deviations of inverse depth: noise / sin of the ray's angle to the baseline (per coordinate)
        sig_ref, sig = noise / np.maximum(sin1, 1e-12), noise / np.maximum(sin0, 1e-12)
        w_ref, w_new = 1.0 / sig_ref ** 2, 1.0 / sig ** 2
        fused = (w_ref * rho_ref + w_new * rho) / (w_ref + w_new)
        positive = (rho_ref > 0) & (rho > 0)
        for k in thresholds:
            rules = {"each": (rho_ref > k * sig_ref) & (rho > k * sig), "none": positive,
                     "fused": positive & (fused > k / np.sqrt(w_ref + w_new)),
                     "fused_summed": positive & (fused > k * np.hypot(sig_ref, sig))}
            for name, keep in rules.items():
                row = rows.setdefault(f"{name}@{k:g}", {"median_log_ratio": [], "points": []})
                row["median_log_ratio"].append(float(np.median(np.log(rho[keep] / rho_ref[keep]))))
                row["points"].append(int(keep.sum()))
    summary = {key: {"median_log_ratio": float(np.mean(r["median_log_ratio"])),
                     "trial_std": float(np.std(r["median_log_ratio"])), "points": float(np.mean(r["points"]))}
               for key, r in rows.items()}
    print(f"{'rule@sd':18s} {'median log ratio':>17s} {'trial sd':>9s} {'points':>8s}   (true: 0)")
    for key, r in summary.items():
        print(f"{key:18s} {r['median_log_ratio'] * 100:+16.3f}% {r['trial_std'] * 100:8.3f}% {r['points']:8.0f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "rules": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
