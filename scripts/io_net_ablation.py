#!/usr/bin/env python3
"""IO-Net at inference, with and without, on every VO sequence of ../shared/data (issue 10, item 3).

    python scripts/io_net_ablation.py [--config config/vo.yaml] [--data ../shared/data] [--out out/io_ablation.json]
        [--toggle matching.io_net] [--set KEY=VALUE ...]

Sequences: KITTI 07 (160 frames), TUM fr2/desk (20), EuRoC V1_01 static (19), the synthetic street (80) -
replayed with ``kp2d replay``'s code, ATE / RPE / tracked frames - and the KITTI 06 frame pairs (two-view:
rotation and translation-direction errors against poses_06.txt). Every run uses the given config with only
``matching.io_net`` changed (``--toggle``: another boolean key, e.g. ``refine.affine``). Prints a table and
writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from kp2d_ros.config import load_config, parse_overrides
from kp2d_ros.data import open_sequence
from kp2d_ros.data.synthetic import write_synthetic_sequence
from kp2d_ros.eval.replay import replay

sys.path.insert(0, str(Path(__file__).resolve().parent))
from two_view_errors import two_view_errors  # noqa: E402  (a script beside this one)

KITTI06_PAIRS = ((12, 13), (435, 436), (1, 12))


def kitti06_two_view(path: Path, cfg) -> dict:
    """Relative pose of each of ``KITTI06_PAIRS`` (KITTI frame numbers) against the ground truth: rotation error (deg)
    and translation-direction error (deg), by ``two_view_errors.py``."""
    numbers = [int(p.stem) for p in sorted((path / "image_0").glob("*.png"))]
    r = two_view_errors(open_sequence(path, camera=cfg.camera), cfg,
                        pairs=[(numbers.index(a), numbers.index(b)) for a, b in KITTI06_PAIRS])
    rows = [{"pair": [a, b], **{k: row[k] for k in ("status", "rot_err_deg", "t_dir_err_deg")}}
            for (a, b), row in zip(KITTI06_PAIRS, r["pairs"])]
    return {"pairs": rows, "rot_err_deg_mean": r["rot_err_deg_mean"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="config/vo.yaml")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", default="out/io_ablation.json")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--toggle", default="matching.io_net", help="the boolean key run on and off")
    args = p.parse_args()
    data = Path(args.data)
    results = {"config": args.config, "overrides": args.set, "toggle": args.toggle, "runs": {}}
    name_on = "io_net" if args.toggle == "matching.io_net" else args.toggle
    with tempfile.TemporaryDirectory() as tmp:
        sequences = {
            "kitti07": data / "vo" / "kitti07_f0000-0159",
            "tum_fr2_desk": data / "vo" / "tum_fr2_desk_20f",
            "euroc_static": data / "vo" / "euroc_v101_static_19f",
            "synthetic": write_synthetic_sequence(Path(tmp) / "synthetic", n_frames=80, seed=0),
        }
        for io in (True, False):
            overrides = parse_overrides(args.set)
            overrides[args.toggle] = io
            cfg = load_config(args.config, overrides=overrides)
            cfg.backend.threaded = False  # deterministic, as kp2d replay (the scores are its report.json's)
            key = name_on if io else "no_" + name_on
            runs = results["runs"].setdefault(key, {})
            for name, path in sequences.items():
                seq = open_sequence(path, camera=cfg.camera)
                r = replay(seq, cfg, progress=False).report()
                runs[name] = {k: r[k] for k in ("tracked_frames", "frames", "ate_rmse_m", "rpe_rot_deg", "rpe_trans_m")}
                print(f"{key:<14} {name:<14} tracked {r['tracked_frames']:>3}/{r['frames']:<3} ATE {r['ate_rmse_m']:.4f} m "
                      f"RPE rot {r['rpe_rot_deg']:.4f} deg trans {r['rpe_trans_m']:.4f} m", flush=True)
            runs["kitti06_pairs"] = kitti06_two_view(data / "vo" / "kitti06_pairs", cfg)
            print(f"{key:<14} kitti06_pairs  rot err mean {runs['kitti06_pairs']['rot_err_deg_mean']:.4f} deg "
                  + " ".join(f"{r['pair']}: {r['rot_err_deg']:.3f}/{r['t_dir_err_deg'] or float('nan'):.2f}"
                             for r in runs["kitti06_pairs"]["pairs"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
