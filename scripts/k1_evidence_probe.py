#!/usr/bin/env python3
"""Diagnostic (stop 27): does a window's self-calibrated k1 rest on evidence in its observations?

    python scripts/k1_evidence_probe.py lrt WINDOWS.pkl -- replay ARGS...   # capture every window, then the test
    python scripts/k1_evidence_probe.py gate T -- replay ARGS...            # a window frees k1 only if that gains >= T
    python scripts/k1_evidence_probe.py frontend-ignores -- replay ARGS...  # windows calibrate, the front end keeps 0

ARGS are ``kp2d replay``'s (deterministic mode). The pipeline is patched for this process only; the product has no
such setting.

* ``lrt``: runs the replay with every window captured, then re-solves each calibrating window twice, k1 free (as the
  product) and k1 held at 0, and prints how much freeing k1 lowers the window's robust (Cauchy, ``backend.kernel_px``)
  cost, in px^2 at the configured ``backend.noise_px`` (a chi-square with one degree of freedom if that noise were
  the tracks'), with the estimates.
* ``gate T``: every calibrating window is solved both ways; the k1-free solution (and its k1 estimate) is taken only
  when it lowers that cost by >= T (3.84: the 95 % quantile), else the solution with k1 held at the front end's
  value.
* ``frontend-ignores``: the windows estimate k1 as usual but the front end never undistorts with it.
"""
from __future__ import annotations

import dataclasses
import pickle
import sys

import numpy as np

import kp2d_ros.pipeline as P
from kp2d_ros.backend import bundle_adjust, reprojection_errors
from kp2d_ros.geometry import cauchy_cost


def pixel_errors(problem, result, k1: float, focal: float) -> np.ndarray:
    """(M,) reprojection error (px) of each observation under ``result``'s poses and landmarks (inf: behind)."""
    poses = np.stack([result.poses[int(k)] for k in problem.keyframe_ids])
    return reprojection_errors(problem, poses, result.positions, k1) * focal


def evidence(problem, cfg, focal, k1_held: float):
    """(free result, held result, cost decrease from freeing k1) or None when either solve fails."""
    free = bundle_adjust(problem, cfg, focal)
    held = bundle_adjust(dataclasses.replace(problem, calibrate=False, k1=k1_held), cfg, focal)
    if not (free.optimised and held.optimised):
        return None
    a, b = pixel_errors(problem, held, k1_held, focal), pixel_errors(problem, free, free.k1, focal)
    ok = np.isfinite(a) & np.isfinite(b)
    c = cfg.kernel_px  # the Cauchy cost in px^2 (c^2 log(1 + (e/c)^2)), at the configured noise
    gain = c * c * (cauchy_cost(a[ok], c) - cauchy_cost(b[ok], c)) / cfg.noise_px ** 2
    return free, held, float(gain)


def main() -> int:
    mode = sys.argv[1]
    rest = sys.argv[sys.argv.index("--") + 1:]
    log: list = []
    orig = P.bundle_adjust
    if mode == "lrt":
        def patched(problem, cfg, focal=1.0):
            log.append((problem, cfg, focal))
            return orig(problem, cfg, focal)
    elif mode == "gate":
        threshold = float(sys.argv[2])

        def patched(problem, cfg, focal=1.0):
            if not problem.calibrate:
                return orig(problem, cfg, focal)
            got = evidence(problem, cfg, focal, problem.k1)
            if got is None:
                return orig(problem, cfg, focal)
            free, held, gain = got
            log.append((problem.k1, free.k1, gain))
            return free if gain >= threshold else held
    elif mode == "frontend-ignores":
        patched = orig
        after = P.VOPipeline._after_backend

        def after_ignoring(self, result):
            after(self, result)
            self.k1 = 0.0
        P.VOPipeline._after_backend = after_ignoring
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    P.bundle_adjust = patched
    from kp2d_ros.cli import main as cli

    rc = cli(rest)
    if mode == "gate" and log:
        gains = np.array([g for _, _, g in log])
        print(f"gate {threshold}: {int((gains >= threshold).sum())} of {len(gains)} windows took their k1; "
              f"gain median {np.median(gains):.2f}")
    if mode == "lrt":
        with open(sys.argv[2], "wb") as f:
            pickle.dump(log, f)
        rows = []
        for problem, cfg, focal in log:
            if problem.calibrate:
                got = evidence(problem, cfg, focal, 0.0)
                if got is not None:
                    rows.append((got[0].k1, got[2]))
        rows = np.array(rows)
        print(f"{len(rows)} calibrating windows: k1 p10/p50/p90 " + " ".join(f"{v:+.4f}" for v in
              np.percentile(rows[:, 0], [10, 50, 90])) + "; cost decrease from freeing k1 (from 0) p10/p50/p90 "
              + " ".join(f"{v:.1f}" for v in np.percentile(rows[:, 1], [10, 50, 90])))
    return rc


if __name__ == "__main__":
    sys.exit(main())
