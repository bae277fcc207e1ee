#!/usr/bin/env python3
"""Time of the two-view pose (``estimate_relative_pose``) on the calls a replay made, and a digest of its results.

    python scripts/pose_timing.py SEQUENCE [--config config/vo.yaml] [--frames 80] [--rounds 3]
                                  [--inputs FILE.pkl] [--code DIR] [--out out/pose_timing.json]

Replays the first ``--frames`` frames of SEQUENCE deterministically (``backend.threaded`` off) and records the
arguments of every ``estimate_relative_pose`` call the pipeline makes; with ``--inputs`` they are saved to FILE
or, when FILE exists, read from it instead of replaying. Then times the recorded calls ``--rounds`` times on one
OpenCV thread (``time.perf_counter``; prints and saves the per-call mean of each round and their median) and
writes a SHA-256 digest of every result (R, t, inliers, triangulated points). ``--code DIR`` imports ``kp2d_ros``
from another checkout (``git worktree add DIR COMMIT``). Two commits on the same FILE: equal digests say they
compute the same poses bit for bit, and the times compare like for like (stop 55: the cheirality vote on a sample).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def record(sequence: str, config: str, frames: int) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) of every ``estimate_relative_pose`` call in a deterministic replay of ``frames`` frames."""
    import kp2d_ros.pipeline as pipeline_module
    from kp2d_ros.config import load_config
    from kp2d_ros.data import open_sequence

    calls = []
    real = pipeline_module.estimate_relative_pose

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    cfg = load_config(config)
    cfg.backend.threaded = False
    pipeline_module.estimate_relative_pose = spy
    try:
        vo = pipeline_module.VOPipeline(cfg)
        for frame in open_sequence(sequence, max_frames=frames):
            vo.process(frame)
        vo.close()
    finally:
        pipeline_module.estimate_relative_pose = real
    return calls


def digest(results) -> str:
    """SHA-256 over every result's arrays (None as a marker)."""
    h = hashlib.sha256()
    for g in results:
        if g is None:
            h.update(b"none")
            continue
        for a in (g.R, g.t, g.inliers, g.points3d, g.point_match_idx):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sequence")
    p.add_argument("--config", default=str(REPO / "config" / "vo.yaml"))
    p.add_argument("--frames", type=int, default=80)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--inputs", default=None, help="pickle of the recorded calls: read when it exists, else written")
    p.add_argument("--code", default=str(REPO), help="the checkout whose kp2d_ros is timed (default: this one)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(args.code).resolve()))

    import cv2

    from kp2d_ros.geometry import estimate_relative_pose

    inputs = Path(args.inputs) if args.inputs else None
    if inputs is not None and inputs.exists():
        with open(inputs, "rb") as f:  # our own recording (trusted)
            calls = pickle.load(f)
    else:
        calls = record(args.sequence, args.config, args.frames)
        if inputs is not None:
            inputs.parent.mkdir(parents=True, exist_ok=True)
            with open(inputs, "wb") as f:
                pickle.dump(calls, f)
    if not calls:
        print("no estimate_relative_pose call recorded", file=sys.stderr)
        return 1
    cv2.setNumThreads(1)
    per_call_ms, results = [], None
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        results = [estimate_relative_pose(*a, **k) for a, k in calls]
        per_call_ms.append((time.perf_counter() - t0) / len(calls) * 1e3)
    import kp2d_ros

    report = {"code": str(Path(kp2d_ros.__file__).parent.parent), "sequence": args.sequence, "config": args.config,
              "calls": len(calls),
              "points_median": float(np.median([len(a[0]) for a, _ in calls])),
              "per_call_ms": per_call_ms, "per_call_ms_median": float(np.median(per_call_ms)),
              "digest": digest(results)}
    print(f"{len(calls)} calls, {report['points_median']:.0f} points (median): "
          f"{report['per_call_ms_median']:.2f} ms per call (rounds: {', '.join(f'{t:.2f}' for t in per_call_ms)}); "
          f"digest {report['digest'][:16]}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
