"""How late the node's backend windows land, and what that costs: a threaded replay (the node's mode) that records
every taken window's lag.

    python scripts/backend_lag.py ../shared/data/vo/kitti07_f0000-0159 [--config config/vo_classical.yaml]
        [--set backend.worker_idle=false] [--out out/backend_lag.json]

Prints and saves: ATE / RPE of the published odometry, windows taken, the lag of each (keyframes made while it was
optimised: ``BackendStatus.lag_keyframes``), its median and 90th percentile. The replay is unpaced, so the front end
keeps the CPU busy, as in a node whose camera is faster than it: not reproducible run to run (``kp2d replay
--backend-lag N`` is).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from kp2d_ros.cli.replay import load_effective_config
    from kp2d_ros.data import open_sequence
    from kp2d_ros.eval.replay import replay
    from kp2d_ros.pipeline import VOPipeline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="dataset folder or bag")
    p.add_argument("--config", default=None, help="VO config (default: config/vo.yaml)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="write the JSON here")
    args = p.parse_args(argv)
    args.frontend = None
    cfg = load_effective_config(args)
    cfg.backend.threaded = True
    if cfg.backend.window <= 0:
        print("error: backend.window is 0: no windows", file=sys.stderr)
        return 2

    lags: list[int] = []

    class Recording(VOPipeline):
        def process(self, frame, *a, **kw):
            windows = self.backend_revision
            est = super().process(frame, *a, **kw)
            if self.backend_revision > windows:
                lags.append(self.backend_status().lag_keyframes)
            return est

    pipeline = Recording(cfg)
    try:
        result = replay(open_sequence(args.path, camera=cfg.camera), cfg, progress=False, pipeline=pipeline)
    finally:
        pipeline.close()
    report = result.report()
    out = {"sequence": Path(args.path).name, "frontend": cfg.frontend.type, "worker_idle": cfg.backend.worker_idle,
           "ate_rmse_m": report["ate_rmse_m"], "rpe_rot_deg": report["rpe_rot_deg"], "fps": report["fps"],
           "frames": report["frames"], "windows_taken": len(lags), "lag_keyframes": lags,
           "lag_median": float(np.median(lags)) if lags else None,
           "lag_p90": float(np.percentile(lags, 90)) if lags else None}
    print(json.dumps({k: v for k, v in out.items() if k != "lag_keyframes"}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
