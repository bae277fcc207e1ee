#!/usr/bin/env python3
"""Diagnostic: a replay with the residual radial distortion k1 held fixed, in the front end and in every window
(the windows do not estimate it), to see how much of a result is the lens self-calibration's.

    python scripts/fixed_k1_probe.py CONFIG K1 OUT_DIR [--sequence PATH] [--set KEY=VALUE ...]
    # e.g. config/vo.yaml 0.015 out/k1fix_kp2d; --set frontend.model_path=OTHER.pt for other weights

Patches the pipeline and the backend's map for this process only (the product has no such setting): each window's
snapshot is built without k1 among its unknowns and with K1 as its lens, and the front end undistorts with K1 from
the first frame on. Deterministic replay (``kp2d replay``'s, default sequence KITTI 07); writes its outputs to
OUT_DIR and prints ATE, RPE rot, RPE trans. ``backend.self_calibration`` must be on (the default), or the front end
does not take a k1 at all.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def hold_k1(k1: float):
    """Within the block, :class:`~kp2d_ros.pipeline.VOPipeline` and :class:`~kp2d_ros.backend.LocalMap` use ``k1``
    in the front end and in every window, and no window estimates it; restored on leaving."""
    from kp2d_ros import backend as B
    from kp2d_ros import pipeline as P

    snapshot, after, reset = B.LocalMap.snapshot, P.VOPipeline._after_backend, P.VOPipeline.reset

    def fixed_snapshot(self, sigma, k1_=0.0, calibrate=False):
        return snapshot(self, sigma, k1, False)

    def fixed_after(self, result):
        after(self, result)
        self.k1 = k1

    def fixed_reset(self):
        reset(self)
        self.k1 = k1

    B.LocalMap.snapshot, P.VOPipeline._after_backend, P.VOPipeline.reset = fixed_snapshot, fixed_after, fixed_reset
    try:
        yield
    finally:
        B.LocalMap.snapshot, P.VOPipeline._after_backend, P.VOPipeline.reset = snapshot, after, reset


def calibrating_config(config: str, sets: list[str]):
    """CONFIG with the dotted overrides ``sets``, for a deterministic replay (``backend.threaded`` off); raises
    ValueError when ``backend.self_calibration`` is off (the front end would not take a k1)."""
    from kp2d_ros.config import load_config, parse_overrides

    cfg = load_config(config, overrides=parse_overrides(sets))
    if not cfg.backend.self_calibration:
        raise ValueError("backend.self_calibration is off: the front end would not take a k1")
    cfg.backend.threaded = False
    return cfg


def replay_within(cfg, sequence: str, out: Path, *patches) -> dict:
    """Replay ``sequence`` with ``cfg`` while the context managers ``patches`` (not yet entered) are entered, write
    ``kp2d replay``'s outputs to ``out`` and return its report."""
    from contextlib import ExitStack

    from kp2d_ros.cli.replay import write_outputs
    from kp2d_ros.data import open_sequence
    from kp2d_ros.eval.replay import replay

    seq = open_sequence(sequence, camera=cfg.camera)
    with ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        result = replay(seq, cfg, progress=False)
    return write_outputs(result, seq, cfg, Path(out))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("k1", type=float)
    ap.add_argument("out")
    ap.add_argument("--sequence", default="../shared/data/vo/kitti07_f0000-0159")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted config overrides")
    args = ap.parse_args(argv)

    from kp2d_ros.errors import Kp2dError

    try:
        cfg = calibrating_config(args.config, args.set)
        rep = replay_within(cfg, args.sequence, Path(args.out), hold_k1(args.k1))
    except (Kp2dError, ValueError, OSError) as e:
        print(f"fixed_k1_probe: {e}", file=sys.stderr)
        return 2
    print(args.out, args.k1, rep["ate_rmse_m"], rep["rpe_rot_deg"], rep["rpe_trans_m"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
