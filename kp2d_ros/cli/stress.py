"""``kp2d stress PATH``: replay one sequence under what a robot and a busy node do, and report the spread.

Each variant (late backend windows, a busy node's dropped frames, half the frame rate, a stop; see
:mod:`kp2d_ros.eval.stress`) is a deterministic ``kp2d replay``; its results go to DIR/<variant>/ as
``kp2d replay`` writes them. DIR/stress.json holds every variant's ATE (published odometry, the node's path, the
pose in map) and their median, geometric mean and maximum; DIR/config.yaml the effective configuration. Compare
two configurations or commits on these distributions rather than on one replay of a short clip: ``--compare
OTHER/stress.json`` prints each trajectory's geometric mean ATE (and the odometry's RPE rotation) against an earlier
run's over the variants both ran, and in how many of them this run is lower (also saved in stress.json as
``compared_with``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from kp2d_ros.cli.replay import (add_common_arguments, add_input_arguments, load_effective_config, open_input,
                                 write_outputs)


def add_parser(sub, name: str):
    from kp2d_ros.eval.stress import DEFAULT_VARIANTS

    p = sub.add_parser(name, help="replay a sequence under late windows, dropped frames, a lower rate and a stop; "
                                  "report the spread", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="dataset folder or bag (as kp2d replay takes it)")
    add_common_arguments(p)
    p.add_argument("--out", default="out/stress", help="output directory (default: out/stress)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help="comma-separated: clean, lagN, dropsS, dropsS+lagN, everyN, stop, shade, glare, jitterP "
                        "(default: %(default)s)")
    p.add_argument("--drop-rate", type=float, default=0.1,
                   help="share of frames a dropsS variant drops (default: 0.1, as the live node on KITTI 07 at 4 Hz "
                        "dropped 3-19 %%)")
    p.add_argument("--compare", default=None, metavar="STRESS_JSON",
                   help="an earlier run's stress.json (another config or commit): print each trajectory's geometric "
                        "mean ATE (and the odometry's RPE rotation) against it over the variants both ran, and in "
                        "how many this run is lower")
    add_input_arguments(p)
    return p


def _fmt(v, digits=4):
    return "-" if v is None else f"{v:.{digits}f}"


def run(args) -> int:
    from kp2d_ros.config import dump_config
    from kp2d_ros.data.faults import simulate
    from kp2d_ros.errors import DataError
    from kp2d_ros.eval.replay import replay
    from kp2d_ros.eval.stress import compare, outcome, stress_variants, summarize

    base = None
    if args.compare is not None:
        try:
            base = json.loads(Path(args.compare).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"--compare: cannot read {args.compare}: {e}") from None
        if not (isinstance(base, dict) and isinstance(base.get("variants"), list)
                and all(isinstance(v, dict) and "name" in v for v in base["variants"])):
            raise DataError(f"--compare: {args.compare} is not a kp2d stress result (stress.json)")
    cfg = load_effective_config(args)
    cfg.backend.threaded = False  # every variant is reproducible
    sequence = open_input(args, cfg)  # read once (a bag's stamps are read in full): every variant iterates it anew
    variants = stress_variants(len(sequence), [v.strip() for v in args.variants.split(",") if v.strip()],
                               drop_rate=args.drop_rate)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out_dir / "config.yaml")
    print(f"{'variant':<14} {'frames':>6} {'tracked':>7} {'odom ATE':>9} {'path ATE':>9} {'map ATE':>9} {'RPE rot':>8}")
    outcomes = []
    for variant in variants:
        seq = simulate(sequence, variant.simulate) if variant.simulate else sequence
        result = replay(seq, cfg, progress=not args.no_progress, backend_lag=variant.backend_lag)
        write_outputs(result, seq, cfg, out_dir / variant.name)
        o = outcome(variant, result)
        outcomes.append(o)
        print(f"{o.name:<14} {o.frames:>6} {'-' if o.tracked_frames is None else o.tracked_frames:>7} "
              f"{_fmt(o.odom_ate_m):>9} {_fmt(o.path_ate_m):>9} {_fmt(o.map_ate_m):>9} "
              f"{_fmt(o.odom_rpe_rot_deg):>8}", flush=True)
    summary = summarize(sequence.name, cfg.frontend.type, outcomes).to_json()
    if base is not None:
        summary["compared_with"] = {"file": str(args.compare), "stats": compare(base, summary)}
    (out_dir / "stress.json").write_text(json.dumps(summary, indent=2) + "\n")
    for key, s in summary["stats"].items():
        print(f"{key:<5} ATE over {s['n']} variants: median {s['median']:.4f} m, geometric mean {s['gmean']:.4f} m, "
              f"max {s['max']:.4f} m ({s['worst']})")
    if base is not None:
        for key, c in summary["compared_with"]["stats"].items():
            what, unit = ("RPE rot", "deg/frame") if key == "odom_rpe_rot" else (f"{key:<5} ATE", "m")
            print(f"{what} against {args.compare}: geometric mean {c['base_gmean']:.4f} -> {c['new_gmean']:.4f} {unit} "
                  f"(x{c['ratio']:.3f}) over {c['n']} common variants, lower in {c['new_lower']} of them")
    print(f"results in {out_dir} (stress.json)")
    return 0
