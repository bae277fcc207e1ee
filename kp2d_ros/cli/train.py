"""``kp2d train``: self-supervised KP2D training (homography adaptation) on an image folder.

Single process: ``kp2d train --config config/train.yaml --data ../shared/data/train_images --out runs/kp2d``.
Multi-GPU/multi-process: ``torchrun --nproc_per_node=N -m kp2d_ros.cli train ...`` (DDP).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="train KeyPointNet + IO-Net (self-supervised)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="training YAML (default: built-in defaults)")
    p.add_argument("--data", required=True, help="image folder (searched recursively)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics, weights)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    p.add_argument("--steps", type=int, default=None, help="override steps")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="dotted overrides, YAML values (e.g. batch_size=8 keypoint_net.width_multiplier=0.5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    from kp2d_ros.config import TrainConfig, load_config, parse_overrides
    from kp2d_ros.training.trainer import Trainer

    overrides = parse_overrides(args.set)
    if args.steps is not None:
        overrides["steps"] = args.steps
    cfg = load_config(args.config, cls=TrainConfig, overrides=overrides)
    trainer = Trainer(cfg, args.data, args.out, resume=args.resume)
    rank0 = int(os.environ.get("RANK", 0)) == 0
    bar = None
    if rank0 and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=trainer.step, unit="step", dynamic_ncols=True)

    # SIGINT / SIGTERM stop the run after the step in flight, which a checkpoint then keeps. A handler of its own
    # because a shell starts background jobs with SIGINT ignored (`timeout -s INT ... &` in scripts/gpu_check.sh)
    stop_signal: list[int] = []

    def callback(result):
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{result.losses[k]:.3f}" for k in ("total", "descriptor", "io", "repeat3px")
                             if k in result.losses})
        if stop_signal:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, lambda signum, frame: stop_signal.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.time()
    start = trainer.step
    try:
        ckpt = trainer.train(cfg.steps, callback)
    except KeyboardInterrupt:
        trainer.save_checkpoint()
        if rank0:
            print(f"stopped at step {trainer.step} (signal {stop_signal[0] if stop_signal else 'SIGINT'}); "
                  f"checkpoint {args.out}/checkpoint.pt", file=sys.stderr)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if bar is not None:
            bar.close()
    if rank0:
        print(f"trained steps {start}..{trainer.step} in {time.time() - t0:.0f} s on {trainer.device}; "
              f"checkpoint {ckpt}, weights {args.out}/keypoint_net.pt, {args.out}/io_net.pt", file=sys.stderr)
    return 0
