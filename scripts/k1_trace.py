"""Diagnostic: the self-calibrated lens window by window. A deterministic replay that records, for every window
the front end takes, its own k1 estimate, that estimate's standard deviation (Ceres) and the k1 the front end
undistorts with after it; optionally each window gets a prior on its k1 around the front end's.

    python scripts/k1_trace.py CONFIG OUT_DIR [--sequence PATH] [--set KEY=VALUE ...] [--window-prior SIGMA]

``--window-prior SIGMA`` (a probe, not a product setting) adds to each Ceres window, once the front end has an
estimate, the residual ``(k1 - k1_front) / SIGMA`` on the camera's parameters: a steadier lens, each window held
near what the earlier ones found. Writes the replay's outputs and ``k1_trace.json`` to OUT_DIR and prints ATE, the
final k1 and the trace's spread. Default sequence: KITTI 07.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def trace_k1(rows: list[dict]):
    """Within the block every window :class:`~kp2d_ros.pipeline.VOPipeline` takes with a k1 appends a row to
    ``rows``: its newest keyframe, its k1 and standard deviation, and the front end's k1 after it."""
    from kp2d_ros import pipeline as P

    after = P.VOPipeline._after_backend

    def traced(self, result):
        after(self, result)
        if result.k1 is not None and result.poses:
            rows.append({"newest_keyframe": int(max(result.poses)), "k1": float(result.k1),
                         "k1_sigma": None if result.k1_sigma is None else float(result.k1_sigma),
                         "front_k1": float(self.k1)})

    P.VOPipeline._after_backend = traced
    try:
        yield rows
    finally:
        P.VOPipeline._after_backend = after


@contextmanager
def window_prior(sigma: float, rows: list[dict]):
    """Within the block each self-calibrating Ceres window gets a prior of standard deviation ``sigma`` on its k1
    around the front end's (the problem's starting k1) once the front end has one: from the third estimate in
    ``rows`` (:func:`trace_k1`'s) on, as the pipeline."""
    from kp2d_ros import backend as B

    add = B._add_centre_priors

    def with_prior(ceres_problem, rec, problem, config, poses):
        alive = add(ceres_problem, rec, problem, config, poses)
        params = rec.camera(1).params  # a view of the camera's parameter block (f, cx, cy, k1)
        if problem.calibrate and len(rows) >= 3 and ceres_problem.has_parameter_block(params):
            cost = _k1_prior(float(problem.k1), sigma)
            ceres_problem.add_residual_block(cost, None, [params])
            alive += [cost, params]
        return alive

    B._add_centre_priors = with_prior
    try:
        yield
    finally:
        B._add_centre_priors = add


def _k1_prior(mean: float, sigma: float):
    """A pyceres cost ``(k1 - mean) / sigma`` on a SIMPLE_RADIAL camera's 4 parameters."""
    import pyceres

    class K1Prior(pyceres.CostFunction):
        def __init__(self):
            pyceres.CostFunction.__init__(self)
            self.set_num_residuals(1)
            self.set_parameter_block_sizes([4])

        def Evaluate(self, parameters, residuals, jacobians):
            residuals[0] = (parameters[0][3] - mean) / sigma
            if jacobians is not None and jacobians[0] is not None:
                jacobians[0][:] = [0.0, 0.0, 0.0, 1.0 / sigma]
            return True

    return K1Prior()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("out")
    ap.add_argument("--sequence", default="../shared/data/vo/kitti07_f0000-0159")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted config overrides")
    ap.add_argument("--window-prior", type=float, default=0.0, metavar="SIGMA",
                    help="prior on each window's k1 around the front end's (0: none, the product's behaviour)")
    args = ap.parse_args(argv)

    import numpy as np
    from fixed_k1_probe import calibrating_config, replay_within  # (scripts/, beside this one)

    from kp2d_ros.errors import Kp2dError

    try:
        if args.window_prior < 0:
            raise ValueError("--window-prior must be >= 0")
        cfg = calibrating_config(args.config, args.set)
        if cfg.backend.solver != "ceres":
            raise ValueError("needs backend.solver ceres (the window prior and k1's standard deviation are Ceres')")
        rows: list[dict] = []
        prior = [window_prior(args.window_prior, rows)] if args.window_prior > 0 else []
        out = Path(args.out)
        rep = replay_within(cfg, args.sequence, out, trace_k1(rows), *prior)
    except (Kp2dError, ValueError, OSError) as e:
        print(f"k1_trace: {e}", file=sys.stderr)
        return 2
    (out / "k1_trace.json").write_text(json.dumps({"window_prior": args.window_prior, "windows": rows}, indent=1))
    k1 = np.array([r["k1"] for r in rows]) if rows else np.zeros(0)
    spread = f"window k1 {k1.min():+.4f} .. {k1.max():+.4f}" if len(k1) else "no window estimated k1"
    final = f"{rows[-1]['front_k1']:+.4f}" if rows else "none"
    print(f"{args.out}: ATE {rep['ate_rmse_m']:.4f} m, front-end k1 at the end {final}, {len(rows)} windows, {spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
