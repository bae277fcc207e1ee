#!/usr/bin/env python3
"""Whether the rule that skips the configured lens's pure-rotation fit (``geometry.LENS_PARALLAX_MARGIN``, stop 65)
changes any decision: runs a command with every fit run (the margin set to infinity, the code before stop 65),
records both fits of each pair (the self-calibrated lens's parallax, the configured lens's, the two lenses' median
shift d, the pair's threshold), and counts the pairs where the rule would have skipped a fit that decides (the
configured lens's parallax below the threshold).

    python scripts/lens_gate_check.py [--out out/lens_gate.json] -- replay ../shared/data/vo/kitti07_f0000-0159 [...]
    python scripts/lens_gate_check.py --out out/lens_gate_rm.json -- scripts/robot_moves.py [--config ...]

The command after ``--`` is a ``kp2d`` command line, or a script under ``scripts/`` with its arguments, run in this
process. Prints the counts and writes them with every pair to the JSON.
"""
from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class Recorder:
    """Both pure-rotation fits of each pair within ``estimate_relative_pose``: its fit through the front end's lens,
    then (``_lens_shift_px``) the lenses' shift, then the fit through the configured lens."""

    def __init__(self, geometry, pipeline):
        self.pairs: list[dict] = []
        self._threshold = None
        self._last = None  # the parallax of the latest fit
        self._shift = None  # set between the two fits of a pair
        fit, shift, estimate = geometry.pure_rotation_fit, geometry._lens_shift_px, pipeline.estimate_relative_pose

        def recording_fit(*a, **k):
            R, parallax = fit(*a, **k)
            if self._shift is not None:
                self.pairs.append({"calibrated_px": self._last, "configured_px": parallax, "shift_px": self._shift,
                                   "threshold_px": self._threshold})
                self._shift = None
            self._last = parallax
            return R, parallax

        def recording_shift(*a, **k):
            self._shift = shift(*a, **k)
            return self._shift

        def recording_estimate(pts0, pts1, camera, cfg, *a, **k):
            self._threshold = cfg.rotation_only_parallax_px
            return estimate(pts0, pts1, camera, cfg, *a, **k)

        geometry.pure_rotation_fit, geometry._lens_shift_px = recording_fit, recording_shift
        pipeline.estimate_relative_pose = recording_estimate

    def summary(self, margin: float) -> dict:
        p = self.pairs
        cal = np.array([r["calibrated_px"] for r in p])
        cfg = np.array([r["configured_px"] for r in p])
        d = np.array([r["shift_px"] for r in p])
        thr = np.array([r["threshold_px"] for r in p])
        skipped = cal >= thr + margin * d
        decides = cfg < thr
        out = {"margin": margin, "pairs": len(p), "skipped": int(skipped.sum()),
               "changed": int((skipped & decides).sum()),
               "configured_decides": int((decides & (cal >= thr)).sum())}
        if p:
            out["max_calibrated_minus_configured_over_shift"] = float(np.max((cal - cfg) / np.maximum(d, 1e-12)))
        return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: lens_gate_check.py [--out FILE] -- COMMAND ...", file=sys.stderr)
        return 2
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv[:cut])
    command = argv[cut + 1:]
    if not command:
        print("error: no command after --", file=sys.stderr)
        return 2

    import kp2d_ros.geometry as geometry
    import kp2d_ros.pipeline as pipeline

    margin = geometry.LENS_PARALLAX_MARGIN
    geometry.LENS_PARALLAX_MARGIN = float("inf")  # every fit runs: the decisions of the code before the rule
    rec = Recorder(geometry, pipeline)
    if command[0].endswith(".py"):
        saved = sys.argv
        sys.argv = command
        try:
            runpy.run_path(command[0], run_name="__main__")
        except SystemExit as e:
            if e.code not in (0, None):
                return int(e.code) if isinstance(e.code, int) else 1
        finally:
            sys.argv = saved
    else:
        from kp2d_ros.cli import main as kp2d_main

        code = kp2d_main(command)
        if code:
            return code
    summary = rec.summary(margin)
    print(f"lens gate (margin {margin:g}): {summary['pairs']} pairs fitted through both lenses, the rule skips "
          f"{summary['skipped']}, decisions changed {summary['changed']} (the configured lens decided "
          f"{summary['configured_decides']})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"command": command, **summary, "pair_rows": rec.pairs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
