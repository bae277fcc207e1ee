"""Benchmark a running ``vo_node`` process over DDS: image -> odometry latency, drops, node memory.

:func:`bench_node` first sends ``warmup`` frames in lockstep (one at a time, waiting for each
odometry) to measure the node's processing rate, then publishes ``frames`` images (the given
frames reused cyclically, fresh increasing stamps) at ``rate_factor`` times that rate. Latency is
measured from the moment an image is published to the moment its odometry arrives, both on this
process's monotonic clock. A frame without odometry was dropped by the node (newest frame wins).
The node's resident memory is read from ``/proc/<pid>/status`` while the benchmark runs. The node's
own publication costs (median ms per call of odom, keypoints, TF on the worker thread; path on its
timer) are read from its diagnostics at the end.

:func:`bench_path_publication` measures the path at a given length (10 000 poses: ~17 min at 10 Hz,
which no benchmark run reaches) with the node's own :class:`kp2d_ros.ros.outputs.PathBuffer`.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kp2d_ros.errors import DataError
from kp2d_ros.types import Frame


@dataclass
class NodeBenchResult:
    """Numbers of one :func:`bench_node` run (``asdict`` gives the JSON report)."""

    frames: int  # images published in the measured phase
    received: int  # odometry messages received for them
    drop_rate: float  # 1 - received / frames
    publish_rate_hz: float  # achieved publishing rate
    node_rate_hz: float  # processing rate measured in lockstep during warm-up
    latency_ms_median: float
    latency_ms_p95: float
    latency_ms_mean: float
    latency_ms_max: float
    rss_mb_start: float  # after warm-up
    rss_mb_max: float
    rss_mb_end: float
    image_width: int
    image_height: int
    encoding: str
    wall_s: float
    # the node's median publication cost per call (ms; None: not published, e.g. TF without tf2 packages)
    publish_ms: dict = field(default_factory=dict)
    path_poses: int = 0  # path length the node reached
    # the backend's windows during the measured phase, from the node's diagnostics (1 Hz samples of the last landed
    # window): {"windows": taken, "lag_keyframes_median", "lag_keyframes_max", "samples"}, and its work in the node's
    # image thread, ms per frame (the mean over its last 200 frames): "before_pose_ms" (before the odometry goes out)
    # and "after_pose_ms" (VOPipeline.finish(): on a saturated node it costs frames processed, not latency); {} with
    # the backend off
    backend: dict = field(default_factory=dict)
    # the node's own split of its latency (receipt -> odometry out, ms), over its last 200 frames (the warm-up's among
    # them), from its diagnostics: {"median_ms", "wait_median_ms" (the image waiting for the image thread: about half
    # the publishing period when saturated), "work_median_ms" (each frame's latency less its wait)}; {} when not sent
    node_latency: dict = field(default_factory=dict)


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (0 when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def bench_node(frames: list[Frame], node_pid: int, *, n_frames: int = 1000, rate_factor: float = 2.0,
               rate_hz: float = 0.0, warmup: int = 10, image_topic: str = "image", camera_info_topic: str = "camera_info",
               odom_topic: str = "odom", path_topic: str = "path", wait_s: float = 60.0,
               frame_timeout_s: float = 30.0, progress=None) -> NodeBenchResult:
    """Publish ``frames`` cyclically to a running vo_node (process ``node_pid``) and measure it: at ``rate_hz``
    when > 0, else at ``rate_factor`` times the rate measured in warm-up. Latency includes the time an image
    waits for the node (on average half the publishing period when the node is saturated), so two
    configurations compare like for like only at the same ``rate_hz``.

    Raises
    ------
    DataError
        no frames, or the node does not come up / answer within the timeouts.
    """
    import rclpy
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Path as PathMsg
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import CameraInfo, Image

    from kp2d_ros.ros import conversions as conv
    from kp2d_ros.ros.spinning import Spinner
    from kp2d_ros.ros.player import wait_for_stamp

    if not frames:
        raise DataError("bench_node: no frames")
    images = [conv.array_to_image(f.image, Image, frame_id="camera_optical_frame") for f in frames]
    cam = frames[0].camera
    info = CameraInfo(width=cam.width, height=cam.height, distortion_model="plumb_bob")
    info.k = [float(v) for v in np.asarray(cam.K).ravel()]
    info.d = [float(v) for v in np.asarray(cam.dist).ravel()]

    arrived: dict[int, float] = {}
    cond = threading.Condition()
    diagnostics: list = []

    def on_odom(msg: Odometry) -> None:
        t = time.monotonic()
        with cond:
            arrived[conv.stamp_to_ns(msg.header.stamp)] = t
            cond.notify_all()

    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    spinner = Spinner(executor)
    sent: dict[int, float] = {}
    rss: list[float] = []
    stamp_ns = time.time_ns()
    try:
        node = rclpy.create_node("kp2d_bench", context=ctx)
        q = QoSProfile(depth=10)
        pub_img = node.create_publisher(Image, image_topic, q)
        pub_info = node.create_publisher(CameraInfo, camera_info_topic, q)
        node.create_subscription(Odometry, odom_topic, on_odom, QoSProfile(depth=1000))
        node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, QoSProfile(depth=10))
        node.create_subscription(PathMsg, path_topic, lambda msg: None, QoSProfile(depth=1))  # as RViz would
        executor.add_node(node)
        spinner.start()
        deadline = time.monotonic() + wait_s
        while pub_img.get_subscription_count() == 0 or node.count_publishers(odom_topic) == 0:
            if time.monotonic() > deadline:
                raise DataError(f"no vo_node on {image_topic} / {odom_topic} within {wait_s:.0f} s")
            time.sleep(0.05)
        time.sleep(0.5)

        def send(i: int) -> int:
            nonlocal stamp_ns
            stamp_ns = max(time.time_ns(), stamp_ns + 1000)
            stamp = Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
            msg = images[i % len(images)]
            msg.header.stamp = stamp
            info.header = msg.header
            pub_info.publish(info)
            pub_img.publish(msg)
            sent[stamp_ns] = time.monotonic()
            return stamp_ns

        def wait_for(ns: int, timeout: float) -> bool:
            return wait_for_stamp(cond, arrived, ns, timeout)

        # warm-up in lockstep: the node's processing rate
        round_trips = []
        for i in range(max(warmup, 1)):
            ns = send(i)
            if not wait_for(ns, frame_timeout_s):
                raise DataError(f"vo_node sent no odometry within {frame_timeout_s:.0f} s during warm-up")
            round_trips.append(arrived[ns] - sent[ns])
        node_rate = 1.0 / max(float(np.median(round_trips)), 1e-6)
        period = 1.0 / rate_hz if rate_hz > 0 else 1.0 / (rate_factor * node_rate)
        sent.clear()
        rss.append(rss_mb(node_pid))  # after warm-up: models loaded, buffers allocated

        # measured phase: publish at rate_factor x the node's rate
        diag_start = len(diagnostics)
        t0 = time.monotonic()
        next_rss = t0
        last = 0
        for i in range(n_frames):
            delay = t0 + i * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            last = send(i)
            if time.monotonic() >= next_rss:
                rss.append(rss_mb(node_pid))
                next_rss += 0.5
            if progress is not None:
                progress(i + 1, n_frames)
        t_pub = time.monotonic() - t0
        wait_for(last, frame_timeout_s)  # the newest frame is always processed
        rss.append(rss_mb(node_pid))
        wall = time.monotonic() - t0
        n_diag = len(diagnostics)
        deadline = time.monotonic() + 3.0  # one more diagnostics message (1 Hz) after the last frame
        while len(diagnostics) == n_diag and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        spinner.stop()  # the last turn and a callback in progress finish before the context goes
        rclpy.try_shutdown(context=ctx)

    with cond:
        lat = np.array([(arrived[k] - t) * 1e3 for k, t in sent.items() if k in arrived])
    if lat.size == 0:
        raise DataError("vo_node published no odometry during the benchmark")
    values = _values(diagnostics[-1]) if diagnostics else {}
    publish_ms = {}
    for k in ("odom", "keypoints", "tf", "path"):
        v = float(values.get(f"publish_ms_{k}", "nan"))
        publish_ms[k] = None if np.isnan(v) else v
    backend = _backend_during(diagnostics, diag_start)
    node_latency = {name: float(values[key]) for name, key in (("median_ms", "latency_ms_median"),
                                                               ("wait_median_ms", "latency_wait_ms_median"),
                                                               ("work_median_ms", "latency_work_ms_median"))
                    if key in values}
    return NodeBenchResult(
        frames=len(sent), received=int(lat.size), drop_rate=1.0 - lat.size / len(sent),
        publish_rate_hz=len(sent) / t_pub if t_pub > 0 else 0.0, node_rate_hz=node_rate,
        latency_ms_median=float(np.median(lat)), latency_ms_p95=float(np.percentile(lat, 95)),
        latency_ms_mean=float(lat.mean()), latency_ms_max=float(lat.max()),
        rss_mb_start=rss[0], rss_mb_max=max(rss), rss_mb_end=rss[-1],
        image_width=int(images[0].width), image_height=int(images[0].height), encoding=images[0].encoding,
        wall_s=wall, publish_ms=publish_ms, path_poses=int(values.get("path_poses", 0)), backend=backend,
        node_latency=node_latency)


def _values(diagnostics) -> dict[str, str]:
    """The key-value pairs of the node's status in a DiagnosticArray."""
    return {kv.key: kv.value for kv in diagnostics.status[0].values}


def _backend_during(diagnostics: list, start: int) -> dict:
    """How late the node's backend windows landed from diagnostics message ``start`` on (see
    :attr:`NodeBenchResult.backend`); {} when the node runs without the backend or sent no diagnostics."""
    samples = [_values(d) for d in diagnostics[start:]]
    if not samples or samples[-1].get("backend", "off") == "off":
        return {}
    before = _values(diagnostics[start - 1]) if start > 0 else {}
    lags = [int(v["backend_lag_keyframes"]) for v in samples]
    windows = int(samples[-1]["backend_windows"]) - int(before.get("backend_windows", 0))
    if windows < 0:  # the node's tracking was reset (a new map counts from 0)
        windows = int(samples[-1]["backend_windows"])
    last = samples[-1]
    return {"windows": windows,
            "lag_keyframes_median": float(np.median(lags)), "lag_keyframes_max": max(lags), "samples": len(lags),
            **{f"{k}_ms": float(last.get(f"backend_{k}_ms", "nan")) for k in ("before_pose", "after_pose")}}


def bench_path_publication(n_poses: int = 10000, repeats: int = 5) -> dict:
    """Cost of the node's path output at ``n_poses`` poses, with one subscriber over DDS.

    Returns
    -------
    dict with ``poses``; ``append_us``: median cost of the worker's per-frame ``PathBuffer.append``;
    ``publish_ms``: median of building the Path and publishing it (the path timer's work, every
    ``ros.path_period_s``; before, the worker did this for every frame); ``message_bytes``.
    """
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Path as PathMsg
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile
    from rclpy.serialization import serialize_message

    from kp2d_ros.ros.outputs import PathBuffer
    from kp2d_ros.ros.spinning import Spinner

    buf = PathBuffer(n_poses)
    appends = []
    for i in range(n_poses):
        msg = PoseStamped()
        msg.header.stamp.sec = i
        t = time.perf_counter()
        buf.append(msg)
        appends.append(time.perf_counter() - t)
    got: list = []
    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    spinner = Spinner(executor)
    times = []
    try:
        node = rclpy.create_node("kp2d_bench_path", context=ctx)
        pub = node.create_publisher(PathMsg, "kp2d_bench_path", QoSProfile(depth=10))
        node.create_subscription(PathMsg, "kp2d_bench_path", got.append, QoSProfile(depth=10))
        executor.add_node(node)
        spinner.start()
        deadline = time.monotonic() + 10.0
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        size = 0
        for i in range(repeats):
            buf.append(PoseStamped())  # a change since the last message, as each new frame makes
            t = time.perf_counter()
            msg = buf.message(PathMsg, "odom")
            pub.publish(msg)
            times.append(time.perf_counter() - t)
            size = len(serialize_message(msg))
        deadline = time.monotonic() + 10.0
        while len(got) < repeats and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        spinner.stop()  # the last turn and a callback in progress finish before the context goes
        rclpy.try_shutdown(context=ctx)
    if not got or len(got[-1].poses) != n_poses:
        raise DataError(f"bench_path_publication: the {n_poses}-pose path did not arrive")
    return {"poses": n_poses, "append_us": float(np.median(appends) * 1e6),
            "publish_ms": float(np.median(times) * 1e3), "message_bytes": size, "received": len(got)}


def summarize_rounds(runs: list[NodeBenchResult]) -> dict:
    """Several node runs of one configuration: each run's report and the medians over runs of its latency
    median and p95, node rate, drop rate and the node's own work per frame (``work_ms_median``: its latency less the
    image's wait, None when a node did not report it)."""
    if not runs:
        raise DataError("summarize_rounds: no runs")
    med = lambda key: float(np.median([getattr(r, key) for r in runs]))  # noqa: E731
    work = _work_ms(runs)
    return {"latency_ms_median": med("latency_ms_median"), "latency_ms_p95": med("latency_ms_p95"),
            "node_rate_hz": med("node_rate_hz"), "drop_rate": med("drop_rate"),
            "work_ms_median": float(np.median(work)) if work is not None else None, "runs": [asdict(r) for r in runs]}


def _work_ms(runs: list[NodeBenchResult]) -> list[float] | None:
    """Each run's ``node_latency["work_median_ms"]``; None when a run lacks it."""
    work = [r.node_latency.get("work_median_ms") for r in runs]
    return None if any(w is None for w in work) else work


def paired_difference(a: list[NodeBenchResult], b: list[NodeBenchResult]) -> dict:
    """Latency of B minus A, round by round (run i of A and run i of B ran one after the other).

    Returns
    -------
    dict: ``median_ms_per_round`` and ``p95_ms_per_round`` (B - A of each round's median and p95),
    ``median_ms`` (their median), ``b_slower_rounds`` (rounds whose median B > A), ``rounds``; and the same for
    the nodes' own work per frame (``work_ms_per_round``, ``work_ms``, ``b_slower_work_rounds``: the latency less
    the image's wait, which at a saturating rate spreads each round's latency by up to the publishing period;
    None when a node did not report it).
    """
    if len(a) != len(b) or not a:
        raise DataError(f"paired_difference: {len(a)} and {len(b)} runs; need as many of each, at least one")
    diff = [rb.latency_ms_median - ra.latency_ms_median for ra, rb in zip(a, b)]
    p95 = [rb.latency_ms_p95 - ra.latency_ms_p95 for ra, rb in zip(a, b)]
    wa, wb = _work_ms(a), _work_ms(b)
    work = [y - x for x, y in zip(wa, wb)] if wa is not None and wb is not None else None
    return {"median_ms_per_round": diff, "p95_ms_per_round": p95, "median_ms": float(np.median(diff)),
            "p95_ms": float(np.median(p95)), "b_slower_rounds": int(sum(d > 0 for d in diff)), "rounds": len(diff),
            "work_ms_per_round": work, "work_ms": float(np.median(work)) if work is not None else None,
            "b_slower_work_rounds": int(sum(d > 0 for d in work)) if work is not None else None}


def report(result: NodeBenchResult, **extra) -> dict:
    """JSON-ready dict of a result plus context (frontend, sequence, ...)."""
    return {**asdict(result), **extra}
