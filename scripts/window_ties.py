#!/usr/bin/env python3
"""Diagnostic: how many landmarks tie each window's held keyframes to its free ones (stop 36, issue 13: why the
learned frontend's scale in KITTI 07's second turn is the more fragile).

    python scripts/window_ties.py CONFIG OUT.json [SEQUENCE]    # default SEQUENCE: ../shared/data/vo/kitti07_f0000-0159

Deterministic replay; every window's snapshot is read as it goes to the solver (the pipeline is patched for this
process only). Writes one row per window (newest keyframe, keyframes, held, landmarks, observations, landmarks seen
by a held and a free keyframe, landmarks seen by a held keyframe and the newest, mean track length) and prints the
medians over KITTI 07's segments (first turn, straight, second turn, end; by the newest keyframe's frame).
"""
import json
import sys

import numpy as np

from kp2d_ros import pipeline as P
from kp2d_ros.config import load_config
from kp2d_ros.data import open_sequence
from kp2d_ros.eval.replay import replay

SEGMENTS = ((0, 60, "first turn"), (60, 118, "straight"), (118, 145, "second turn"), (145, 10**9, "end"))


def ties(problem) -> dict:
    """The window's held-to-free ties (``problem``: a :class:`kp2d_ros.backend.WindowProblem`)."""
    n_kf, held_n = len(problem.keyframe_ids), problem.num_fixed
    kf, lm, n_lm = problem.obs_keyframe, problem.obs_landmark, len(problem.landmark_ids)
    held, free, newest = (np.zeros(n_lm, bool) for _ in range(3))
    held[lm[kf < held_n]] = True
    free[lm[kf >= held_n]] = True
    newest[lm[kf == n_kf - 1]] = True
    return dict(newest=int(problem.keyframe_ids[-1]), keyframes=n_kf, held=held_n, landmarks=n_lm,
                observations=int(len(lm)), held_to_free=int((held & free).sum()),
                held_to_newest=int((held & newest).sum()),
                track_mean=float(np.bincount(lm, minlength=n_lm).mean()) if n_lm else 0.0)


def main() -> int:
    cfg_path, out = sys.argv[1], sys.argv[2]
    seq_path = sys.argv[3] if len(sys.argv) > 3 else "../shared/data/vo/kitti07_f0000-0159"
    rows = []
    solve = P.bundle_adjust

    def spy(problem, cfg, focal):
        rows.append(ties(problem))
        return solve(problem, cfg, focal)

    P.bundle_adjust = spy
    cfg = load_config(cfg_path)
    cfg.backend.threaded = False
    replay(open_sequence(seq_path), cfg, progress=False)
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)
    for lo, hi, name in SEGMENTS:
        seg = [r for r in rows if lo <= r["newest"] < hi]
        if seg:
            med = {k: float(np.median([r[k] for r in seg])) for k in seg[0] if k != "newest"}
            print(f"{name:12s} windows {len(seg):3d} " + " ".join(f"{k} {v:.4g}" for k, v in med.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
