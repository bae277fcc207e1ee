"""``kp2d scorecard``: the project's headline numbers and issues 10's and 13's targets, in one run on this machine.

Runs the default config (config/vo.yaml: KeyPointNet) and the baseline (config/vo_classical.yaml: SIFT) side by
side: deterministic ``kp2d replay`` on KITTI 07, TUM fr2/desk, EuRoC static and the synthetic street of ``kp2d
demo``; ``kp2d eval-homography --methods kp2d,sift`` on the Oxford sets (320x240/top-300, 640x480/top-1000);
``kp2d bench`` at 1226x370 on KITTI 07 frames (median of --repeat runs; run it on an idle machine); with the part
``backend`` (issue 13) every replay and speed round again with ``backend.window=0`` (labels default_w0,
baseline_w0). Then checks issue 10's and issue 13's "done when" against those numbers. Writes OUT/scorecard.json,
OUT/scorecard.md, the configs, and each replay's outputs (OUT/vo/LABEL/SEQUENCE/, as ``kp2d replay --out`` writes
them). 10 min on a 2-core CPU (6 min without the backend part).

Example: ``kp2d scorecard ../shared/data --out out/scorecard`` (``make scorecard``)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    from kp2d_ros.eval.scorecard import PARTS, VO_SEQUENCES

    p = sub.add_parser(name, help="headline numbers (VO, keypoints, speed) and issues 10's and 13's targets in one run",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="the data folder (../shared/data: vo/, homography/)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", default=None, help="the default config (default: config/vo.yaml)")
    p.add_argument("--baseline", default=None, help="the baseline config (default: config/vo_classical.yaml)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="dotted overrides of the default config (the baseline stays as it is)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--sequences", default=",".join(VO_SEQUENCES),
                   help=f"VO sequences (default: all of {','.join(VO_SEQUENCES)})")
    p.add_argument("--max-frames", type=int, default=None, help="replay only the first N frames of each sequence")
    p.add_argument("--repeat", type=int, default=3, help="speed: runs per config (default 3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run(args) -> int:
    from kp2d_ros.cli.demo import classical_config_path
    from kp2d_ros.cli.replay import default_config_path, write_outputs
    from kp2d_ros.config import dump_config, load_config, parse_overrides
    from kp2d_ros.errors import DataError
    from kp2d_ros.eval.bench import machine_info
    from kp2d_ros.eval.scorecard import (PARTS, VO_SEQUENCES, Scorecard, check_data, issue10_targets,
                                         issue13_targets, run_keypoints, run_speed, run_vo, to_markdown,
                                         without_backend)

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in PARTS for p in parts):
        raise DataError(f"--parts: expected a subset of {','.join(PARTS)}, got {args.parts!r}")
    if args.max_frames is not None and args.max_frames < 3:
        raise DataError(f"--max-frames must be >= 3, got {args.max_frames}")
    if args.repeat < 1:
        raise DataError(f"--repeat must be >= 1, got {args.repeat}")
    data, out = Path(args.data), Path(args.out)
    sequences = [s.strip() for s in args.sequences.split(",") if s.strip()]
    check_data(data, parts, sequences)
    default_path = args.config if args.config is not None else default_config_path()
    baseline_path = args.baseline if args.baseline is not None else classical_config_path()
    if baseline_path is None:
        raise DataError("config/vo_classical.yaml not found: pass --baseline")
    configs = {"default": load_config(default_path, overrides=parse_overrides(args.set)),
               "baseline": load_config(baseline_path)}
    if "backend" in parts:  # issue 13: each configuration against its twin without the backend
        configs |= without_backend(configs)
    out.mkdir(parents=True, exist_ok=True)
    for label, cfg in configs.items():
        dump_config(cfg, out / f"config_{label}.yaml")
    card = Scorecard(settings={"data": str(data), "parts": parts, "default_config": str(default_path),
                               "baseline_config": str(baseline_path), "overrides": args.set,
                               "max_frames": args.max_frames, "repeat": args.repeat, "commit": _commit(),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                     machine=machine_info())

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def on_result(label, name, seq, cfg, result):
        r = write_outputs(result, seq, cfg, out / "vo" / label / name)
        log(f"  {name:<13} {label:<8} {cfg.frontend.type:<5} ATE {r['ate_rmse_m'] or float('nan'):.4f} m  "
            f"RPE rot {r['rpe_rot_deg'] or float('nan'):.4f} deg  {r['fps']:.1f} FPS")

    t0 = time.time()
    if "vo" in parts or "backend" in parts:
        log("VO (deterministic replays) ...")
        card.vo = run_vo(data, configs, out, sequences=sequences, max_frames=args.max_frames,
                         progress=not args.no_progress, on_result=on_result)
    if "keypoints" in parts:
        log("keypoints (Oxford, KP2D protocol) ...")
        card.keypoints = run_keypoints(data / "homography", configs["default"].frontend.model_path)
    if "speed" in parts:
        log(f"speed (kp2d bench 1226x370, {args.repeat} runs per config) ...")
        card.speed = run_speed(data / VO_SEQUENCES["kitti07"], configs, repeat=args.repeat)
    card.targets = issue10_targets(card) + issue13_targets(card)
    card.settings["seconds"] = round(time.time() - t0, 1)
    (out / "scorecard.json").write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    md = to_markdown(card)
    (out / "scorecard.md").write_text(md)
    print(md)
    print(f"wrote {out / 'scorecard.json'} and {out / 'scorecard.md'} ({card.settings['seconds']:.0f} s)")
    return 0
