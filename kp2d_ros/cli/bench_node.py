"""``kp2d bench-node [SEQUENCE]``: latency, drop rate and memory of vo_node over DDS.

Starts ``vo_node`` as its own process (or uses ``--attach PID``), measures its processing rate in
lockstep, then publishes ``--frames`` images at ``--rate-factor`` times that rate or at a fixed ``--rate`` (frames of
SEQUENCE reused cyclically; the synthetic sequence when none is given) and reports the
image -> odometry latency (median, p95), the share of images without odometry (dropped: newest
frame wins), the node's resident memory and its publication costs (odom, keypoints, TF, path), and
the path output at ``--path-poses`` poses. Prints and, with ``--out``, saves the JSON report.

``--rounds R`` starts the node R times (a fresh process each round) and reports every round and the median of
the rounds' medians: one node run's latency moves by tens of ms with the machine's state. ``--against KEY=VALUE``
adds a second configuration (the same overrides plus these); the rounds alternate, A, B, A, B, ..., at the same
``--rate``, and the report gives B - A per round (paired, so a load that drifts weighs on both alike), their
median and in how many rounds B was slower: e.g. ``--against backend.window=0`` for the backend's cost.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="benchmark vo_node over DDS (latency, drops, memory)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sequence", nargs="?", help="dataset folder or bag (default: the synthetic sequence)")
    p.add_argument("--frames", type=int, default=1000, help="images to publish (default: 1000)")
    p.add_argument("--unique", type=int, default=30, help="distinct frames loaded and reused (default: 30)")
    p.add_argument("--rate-factor", type=float, default=2.0, help="publish rate / node rate (default: 2)")
    p.add_argument("--rate", type=float, default=0.0, metavar="HZ",
                   help="publish at this fixed rate instead (compare two configurations at the same rate: "
                        "latency includes the wait for the node, which depends on it)")
    p.add_argument("--warmup", type=int, default=10, help="lockstep frames measuring the node rate")
    p.add_argument("--config", metavar="YAML", help="params file for the node (default: config/vo.yaml)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="parameter override, e.g. --set frontend.type=orb (repeatable)")
    p.add_argument("--attach", type=int, metavar="PID", help="benchmark an already running vo_node process")
    p.add_argument("--path-poses", type=int, default=10000,
                   help="also measure the path output at this many poses (0: skip; default: 10000)")
    p.add_argument("--rounds", type=int, default=1, help="node runs per configuration, each a fresh process (default: 1)")
    p.add_argument("--against", nargs="+", default=[], metavar="KEY=VALUE",
                   help="a second configuration: --set's overrides plus these; rounds alternate with the first "
                        "(needs --rate), and the report gives the paired latency difference")
    p.add_argument("--out", metavar="FILE.json", help="write the JSON report here")
    return p


def _package_file(rel: str) -> Path:
    """A file shipped in the package share (installed) or the source tree (development)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        p = Path(get_package_share_directory("kp2d_ros")) / rel
        if p.exists():
            return p
    except Exception:  # noqa: BLE001 - not installed through ament
        pass
    return Path(__file__).resolve().parents[2] / rel


def _load_frames(path: str | None, n: int):
    from kp2d_ros.errors import DataError

    if path:
        from kp2d_ros.data import open_sequence

        return list(open_sequence(path, max_frames=n)), str(path)
    try:
        from kp2d_ros.data.synthetic import synthetic_sequence
    except ImportError:
        raise DataError("no SEQUENCE given and the synthetic sequence is not available") from None
    return list(synthetic_sequence(n_frames=n)), "synthetic"


def run(args) -> int:
    from kp2d_ros.config import load_config, parse_overrides
    from kp2d_ros.errors import ConfigError
    from kp2d_ros.ros.bench import paired_difference, report, summarize_rounds

    config = Path(args.config) if args.config else _package_file("config/vo.yaml")
    if args.rate < 0:
        raise ConfigError(f"--rate: a rate in Hz (0: --rate-factor times the node's rate), got {args.rate}")
    if args.rounds < 1:
        raise ConfigError(f"--rounds: at least 1, got {args.rounds}")
    if args.attach and (args.rounds > 1 or args.against):
        raise ConfigError("--rounds and --against start their own nodes: not with --attach")
    if args.against and args.rate <= 0:
        raise ConfigError("--against compares latencies at one publishing rate: give --rate HZ")
    overrides = parse_overrides(args.set)
    against = parse_overrides(args.against)
    cfg = load_config(config, overrides=overrides)  # same validation as the node: fail before starting it
    if against:
        load_config(config, overrides={**overrides, **against})
    frames, source = _load_frames(args.sequence, args.unique)

    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    profile = _package_file("config/fastdds_shm.xml")
    if profile.exists():
        env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE")
                       if k in env})

    context = dict(frontend=cfg.frontend.type, sequence=source, unique_frames=len(frames),
                   rate_factor=None if args.rate > 0 else args.rate_factor, rate_hz=args.rate or None)
    if args.rounds == 1 and not against:
        res = _run_node(config, overrides, frames, args, env)
        out = report(res, **context, created=time.strftime("%Y-%m-%dT%H:%M:%S"), **_path_report(args))
    else:
        setups = {"a": overrides} | ({"b": {**overrides, **against}} if against else {})
        runs: dict[str, list] = {label: [] for label in setups}
        for r in range(args.rounds):
            for label, ov in setups.items():
                print(f"round {r + 1}/{args.rounds}, configuration {label}", file=sys.stderr, flush=True)
                runs[label].append(_run_node(config, ov, frames, args, env))
        out = {**context, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "rounds": args.rounds,
               **{label: {"set": setups[label], **summarize_rounds(runs[label])} for label in setups},
               **({"difference": paired_difference(runs["a"], runs["b"])} if against else {}),
               **_path_report(args)}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


def _path_report(args) -> dict:
    if args.path_poses <= 0:
        return {}
    from kp2d_ros.ros.bench import bench_path_publication

    return {"path_at_length": bench_path_publication(args.path_poses)}


def _run_node(config: Path, overrides: dict, frames: list, args, env: dict):
    """One :func:`kp2d_ros.ros.bench.bench_node` run against a fresh ``vo_node`` process (or ``--attach``)."""
    from kp2d_ros.ros.bench import bench_node

    proc = None
    if args.attach:
        pid = args.attach
    else:
        exe = shutil.which("vo_node") or str(Path(sys.executable).with_name("vo_node"))
        cmd = [exe] if Path(exe).exists() else [sys.executable, "-m", "kp2d_ros.ros.node"]
        cmd += ["--ros-args", "--params-file", str(config)]
        for k, v in overrides.items():
            cmd += ["-p", f"{k}:={json.dumps(v) if not isinstance(v, str) else v}"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        pid = proc.pid

    def progress(i: int, n: int) -> None:
        if i == n or i % 100 == 0:
            print(f"\rpublished {i}/{n}", end="" if i < n else "\n", file=sys.stderr, flush=True)

    try:
        return bench_node(frames, pid, n_frames=args.frames, rate_factor=args.rate_factor, rate_hz=args.rate,
                          warmup=args.warmup, progress=progress)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode not in (0, -signal.SIGINT):
                print(err[-2000:], file=sys.stderr)
