"""``kp2d`` command line: one module per sub-command, each with ``add_parser(sub)`` and ``run(args)``.

The sub-command modules only parse arguments, call the library and do I/O. Library errors
(:class:`kp2d_ros.errors.Kp2dError`) become one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> module in this package
COMMANDS = {
    "demo": "demo",
    "replay": "replay",
    "stress": "stress",
    "evaluate": "evaluate",
    "bench": "bench",
    "train": "train",
    "train-io": "train_io",
    "eval-homography": "eval_homography",
    "export-onnx": "export_onnx",
    "play": "play",
    "bench-node": "bench_node",
    "scorecard": "scorecard",
    "to-bag": "to_bag",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kp2d", description="KP2D visual odometry tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{module}":
                continue  # command not available in this build
            raise
        p = mod.add_parser(sub, name)
        p.set_defaults(func=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from kp2d_ros.errors import Kp2dError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Kp2dError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
