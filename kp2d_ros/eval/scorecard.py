"""The project's headline numbers in one run: VO on every dev sequence, the keypoints alone, the speed, and
issues 10's and 13's targets checked against them (``kp2d scorecard``).

Every number comes from the same library calls as ``kp2d replay`` (deterministic: each backend window is waited
for), ``kp2d eval-homography`` and ``kp2d bench``, for two configurations side by side: the default
(``config/vo.yaml``, the learned frontend) and the baseline (``config/vo_classical.yaml``, SIFT). The verdicts
(:func:`issue10_targets`, :func:`issue13_targets`) compare them within this one run, on this machine, as the issues
ask ("in the same run").

Parts (any subset): ``vo`` (KITTI 07, TUM fr2/desk, EuRoC static from the data folder, and the synthetic street
of ``kp2d demo`` rendered here), ``keypoints`` (Oxford, KP2D protocol, 320x240/top-300 and 640x480/top-1000,
KeyPointNet against SIFT), ``speed`` (``kp2d bench`` at 1226x370 on KITTI 07 frames, median of ``repeat`` runs),
``backend`` (issue 13: every replay, and every speed round when ``speed`` runs, again with ``backend.window=0``,
labelled ``default_w0`` / ``baseline_w0``; it implies ``vo``).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from kp2d_ros.config import VOConfig
from kp2d_ros.errors import DataError
from kp2d_ros.eval.homography import MethodSummary

PARTS = ("vo", "keypoints", "speed", "backend")
WITHOUT_BACKEND = "_w0"  # label suffix of a configuration's twin with backend.window=0 (the backend part)
# name -> folder under the data root; "synthetic" is rendered (kp2d demo's street: 80 frames, seed 0)
VO_SEQUENCES = {
    "kitti07": "vo/kitti07_f0000-0159",
    "tum_fr2_desk": "vo/tum_fr2_desk_20f",
    "euroc_static": "vo/euroc_v101_static_19f",
    "synthetic": None,
}
KEYPOINT_SETTINGS = (((320, 240), 300), ((640, 480), 1000))
SPEED_IMAGE_SIZE = (1226, 370)


@dataclass
class VORow:
    """One configuration on one sequence: the published odometry's accuracy (``kp2d replay``'s report.json)."""

    sequence: str
    config: str  # the label: "default" or "baseline"
    frontend: str
    frames: int
    tracked_frames: int
    ate_rmse_m: float | None
    rpe_rot_deg: float | None
    rpe_trans_m: float | None
    fps: float


@dataclass
class KeypointRow:
    """One method at one resolution / top-k (``kp2d eval-homography``): its averages over the pairs
    (``summary.pairs`` left empty)."""

    method: str
    resolution: list[int]
    top_k: int
    summary: MethodSummary


@dataclass
class SpeedRow:
    """``kp2d bench`` of one configuration: median FPS over ``repeat`` runs, stage medians, the load."""

    config: str
    frontend: str
    image_size: list[int]
    fps: float
    fps_runs: list[float]
    stages_ms: dict
    cpu_ms: float | None
    load_average_before: list[float] | None
    load_average_after: list[float] | None


@dataclass
class Target:
    """One of an issue's "done when" lines: ``met`` is None when the part it needs was not run."""

    issue: int
    name: str
    value: float | None
    bound: float | None
    rule: str  # "<=" or ">="
    met: bool | None
    text: str


@dataclass
class Scorecard:
    vo: list[VORow] = field(default_factory=list)
    keypoints: list[KeypointRow] = field(default_factory=list)
    speed: list[SpeedRow] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def vo_row(self, sequence: str, config: str) -> VORow | None:
        return next((r for r in self.vo if r.sequence == sequence and r.config == config), None)

    def keypoint_row(self, method: str, resolution: tuple[int, int]) -> KeypointRow | None:
        return next((r for r in self.keypoints if r.method == method and tuple(r.resolution) == tuple(resolution)),
                    None)

    def speed_row(self, config: str) -> SpeedRow | None:
        return next((r for r in self.speed if r.config == config), None)


def _check(issue: int, name: str, value: float | None, rule: str, bound: float | None, text: str) -> Target:
    met = None
    if value is not None and bound is not None:
        met = bool(value <= bound) if rule == "<=" else bool(value >= bound)
    return Target(issue, name, value, bound, rule, met, text)


def _get(row, attr):
    return None if row is None else getattr(row, attr)


def _times(value, k):
    return None if value is None else k * value


def without_backend(configs: dict[str, VOConfig]) -> dict[str, VOConfig]:
    """Each configuration's twin with the backend off (``backend.window=0``), labelled ``LABEL_w0``."""
    out = {}
    for label, cfg in configs.items():
        twin = copy.deepcopy(cfg)
        twin.backend.window = 0
        out[label + WITHOUT_BACKEND] = twin
    return out


def issue10_targets(card: Scorecard) -> list[Target]:
    """Issue 10's "done when", each against the numbers of this one run (None where a part was skipped, and for
    the VO lines when the sequences were clipped: ``settings["max_frames"]``)."""

    def summary(method, resolution):
        row = card.keypoint_row(method, resolution)
        return None if row is None else row.summary

    kp320, sift320 = summary("kp2d", (320, 240)), summary("sift", (320, 240))
    kp640, sift640 = summary("kp2d", (640, 480)), summary("sift", (640, 480))
    street_d, street_b = card.vo_row("synthetic", "default"), card.vo_row("synthetic", "baseline")
    k07_d, k07_b = card.vo_row("kitti07", "default"), card.vo_row("kitti07", "baseline")
    fps_d, fps_b = card.speed_row("default"), card.speed_row("baseline")
    if card.settings.get("max_frames") is not None:  # clipped sequences: the issue's targets are on whole ones
        street_d = street_b = k07_d = k07_b = None
    return [
        _check(10, "keypoints_loc_320", _get(kp320, "localization_error"), "<=", 0.85,
               "KeyPointNet localisation error at 320x240/top-300 <= 0.85 px"),
        _check(10, "keypoints_ms_320", _get(kp320, "matching_score"), ">=",
               _times(_get(sift320, "matching_score"), 1.3),
               "KeyPointNet matching score at 320x240/top-300 >= 1.3x SIFT's"),
        _check(10, "keypoints_c3_640", _get(kp640, "c3"), ">=", _get(sift640, "c3"),
               "KeyPointNet C3 at 640x480/top-1000 >= SIFT's"),
        _check(10, "demo_ate", _get(street_d, "ate_rmse_m"), "<=", _times(_get(street_b, "ate_rmse_m"), 2.0),
               "synthetic street (make demo): default ATE <= 2x the baseline's"),
        _check(10, "kitti07_ate", _get(k07_d, "ate_rmse_m"), "<=", 0.40, "KITTI 07: default ATE <= 0.40 m"),
        _check(10, "kitti07_ate_vs_baseline", _get(k07_d, "ate_rmse_m"), "<=", _get(k07_b, "ate_rmse_m"),
               "KITTI 07: default ATE <= the baseline's"),
        _check(10, "kitti07_rpe_rot", _get(k07_d, "rpe_rot_deg"), "<=", 0.040,
               "KITTI 07: default RPE rot <= 0.040 deg/frame"),
        _check(10, "speed_1226x370", _get(fps_d, "fps"), ">=", _get(fps_b, "fps"),
               "kp2d bench 1226x370: default FPS >= the baseline's"),
    ]


def issue13_targets(card: Scorecard) -> list[Target]:
    """Issue 13's "done when" that one run can judge, each configuration (default, baseline) against its own twin
    without the backend (``LABEL_w0``) in this run: KITTI 07 ATE <= 0.75x and RPE rot not worse; TUM fr2/desk and
    EuRoC static ATE not worse; ``kp2d bench`` FPS >= 0.8x. None where a row is missing (the backend part or
    ``speed`` not run) or the sequences were clipped. ``vo_node``'s latency is ``kp2d bench-node --against
    backend.window=0``'s to measure, not this one's."""
    clipped = card.settings.get("max_frames") is not None
    targets = []
    for label in ("default", "baseline"):
        def vo(sequence, attr, twin=False):
            row = None if clipped else card.vo_row(sequence, label + (WITHOUT_BACKEND if twin else ""))
            return _get(row, attr)

        targets += [
            _check(13, f"kitti07_ate_backend_{label}", vo("kitti07", "ate_rmse_m"), "<=",
                   _times(vo("kitti07", "ate_rmse_m", True), 0.75),
                   f"KITTI 07, {label}: ATE with the backend <= 0.75x without"),
            _check(13, f"kitti07_rpe_rot_backend_{label}", vo("kitti07", "rpe_rot_deg"), "<=",
                   vo("kitti07", "rpe_rot_deg", True), f"KITTI 07, {label}: RPE rot with the backend not worse"),
            _check(13, f"tum_ate_backend_{label}", vo("tum_fr2_desk", "ate_rmse_m"), "<=",
                   vo("tum_fr2_desk", "ate_rmse_m", True), f"TUM fr2/desk, {label}: ATE with the backend not worse"),
            _check(13, f"euroc_static_ate_backend_{label}", vo("euroc_static", "ate_rmse_m"), "<=",
                   vo("euroc_static", "ate_rmse_m", True),
                   f"EuRoC static, {label}: ATE with the backend not worse"),
            _check(13, f"speed_backend_{label}", _get(card.speed_row(label), "fps"), ">=",
                   _times(_get(card.speed_row(label + WITHOUT_BACKEND), "fps"), 0.8),
                   f"kp2d bench 1226x370, {label}: FPS with the backend >= 0.8x without"),
        ]
    return targets


def check_data(data_root: Path, parts, sequences=None) -> None:
    """Raise :class:`DataError` naming the first data folder a run of ``parts`` would miss (before hours of work)."""
    names = list(VO_SEQUENCES) if sequences is None else list(sequences)
    unknown = [n for n in names if n not in VO_SEQUENCES]
    if unknown:
        raise DataError(f"scorecard: unknown sequence {unknown[0]!r} (known: {', '.join(VO_SEQUENCES)})")
    replays = "vo" in parts or "backend" in parts
    needed = [VO_SEQUENCES[n] for n in names if replays and VO_SEQUENCES[n] is not None]
    needed += ["homography"] if "keypoints" in parts else []
    needed += [VO_SEQUENCES["kitti07"]] if "speed" in parts else []
    for rel in needed:
        if not (Path(data_root) / rel).exists():
            raise DataError(f"scorecard: {Path(data_root) / rel} not found (the data folder's README lists the sequences)")


def run_vo(data_root: Path, configs: dict[str, VOConfig], work_dir: Path, *, sequences=None,
           max_frames: int | None = None, progress: bool = False, on_result: Callable | None = None) -> list[VORow]:
    """Deterministic replays of every configuration on every sequence (missing data folders raise).

    ``on_result(label, name, sequence, cfg, result)`` is called after each replay (the CLI writes its outputs)."""
    from kp2d_ros.data import open_sequence
    from kp2d_ros.data.synthetic import synthetic_matches, write_synthetic_sequence
    from kp2d_ros.eval.replay import replay

    names = list(VO_SEQUENCES) if sequences is None else list(sequences)
    check_data(data_root, ("vo",), names)
    rows = []
    for name in names:
        if VO_SEQUENCES[name] is None:
            path = work_dir / "synthetic"
            if not synthetic_matches(path):
                write_synthetic_sequence(path)
        else:
            path = data_root / VO_SEQUENCES[name]
        for label, cfg in configs.items():
            cfg = copy.deepcopy(cfg)
            cfg.backend.threaded = False  # deterministic, as kp2d replay
            seq = open_sequence(path, max_frames=max_frames, camera=cfg.camera)
            result = replay(seq, cfg, progress=progress)
            r = result.report()
            rows.append(VORow(name, label, cfg.frontend.type, r["frames"], r["tracked_frames"], r["ate_rmse_m"],
                              r["rpe_rot_deg"], r["rpe_trans_m"], r["fps"]))
            if on_result is not None:
                on_result(label, name, seq, cfg, result)
    return rows


def run_keypoints(homography_root: Path, model_path: str) -> list[KeypointRow]:
    """``kp2d eval-homography ROOT --methods kp2d,sift`` at both of the issue's settings."""
    from kp2d_ros.eval.homography import evaluate_homography

    rows = []
    for resolution, top_k in KEYPOINT_SETTINGS:
        results = evaluate_homography(homography_root, ["kp2d", "sift"], resolution, top_k, model_path, "cpu")
        for method, summary in results.items():
            rows.append(KeypointRow(method, list(resolution), top_k, dataclasses.replace(summary, pairs=[])))
    return rows


def run_speed(sequence_path: Path, configs: dict[str, VOConfig], *, repeat: int = 3, frames: int = 30,
              warmup: int = 3) -> list[SpeedRow]:
    """``kp2d bench --resolution 1226x370 --sequence KITTI07`` for each configuration, ``repeat`` rounds with the
    configurations interleaved (default, baseline, default, ...), so that a load that drifts during the run weighs
    on both alike; FPS is the median over the rounds, as ``kp2d bench --repeat``."""
    from kp2d_ros.data import open_sequence
    from kp2d_ros.eval.bench import bench_interleaved, config_for_image_size

    cfgs = {label: config_for_image_size(cfg, *SPEED_IMAGE_SIZE) for label, cfg in configs.items()}
    setups = {label: (open_sequence(sequence_path, max_frames=frames + warmup, camera=cfg.camera), cfg)
              for label, cfg in cfgs.items()}
    results = bench_interleaved(setups, repeat, frames, warmup)
    rows = []
    for label, cfg in cfgs.items():
        r = results[label].report()
        rows.append(SpeedRow(label, cfg.frontend.type, list(SPEED_IMAGE_SIZE), r["fps"], r["fps_runs"],
                             r["stages_ms"], r.get("cpu_ms"), r["load_average_before"], r["load_average_after"]))
    return rows


def _fmt(v, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _sig(v) -> str:
    """Four significant digits: the targets' values run from 1e-4 m (a static camera's ATE) to 1 px."""
    return "–" if v is None else f"{v:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def to_markdown(card: Scorecard) -> str:
    """The scorecard as Markdown tables (what ``kp2d scorecard`` prints and writes as scorecard.md)."""
    lines = []
    if card.vo:
        lines += _table(["sequence", "config", "frontend", "tracked", "ATE (m)", "RPE rot (°/frame)",
                         "RPE trans (m/frame)", "FPS"],
                        [[r.sequence, r.config, r.frontend, f"{r.tracked_frames}/{r.frames}", _fmt(r.ate_rmse_m, 4),
                          _fmt(r.rpe_rot_deg, 4), _fmt(r.rpe_trans_m, 4), f"{r.fps:.1f}"] for r in card.vo])
    if card.keypoints:
        lines += _table(["method", "resolution / top-k", "repeatability", "loc. error (px)", "C1", "C3", "C5",
                         "matching score"],
                        [[r.method, f"{r.resolution[0]}x{r.resolution[1]} / {r.top_k}",
                          *(f"{v:.3f}" for v in (r.summary.repeatability, r.summary.localization_error, r.summary.c1,
                                                  r.summary.c3, r.summary.c5, r.summary.matching_score))]
                         for r in card.keypoints])
    if card.speed:
        lines += _table(["config", "frontend", "image", "FPS (median)", "runs", "network ms", "total ms",
                         "load before / after"],
                        [[r.config, r.frontend, f"{r.image_size[0]}x{r.image_size[1]}", f"{r.fps:.2f}",
                          ", ".join(f"{v:.2f}" for v in r.fps_runs), f"{r.stages_ms.get('network', 0.0):.0f}",
                          f"{r.stages_ms.get('total', 0.0):.0f}", f"{r.load_average_before} / {r.load_average_after}"]
                         for r in card.speed])
    if card.targets:
        lines += _table(["issue", "target", "value", "bound", "met"],
                        [[str(t.issue), t.text, _sig(t.value), f"{t.rule} {_sig(t.bound)}",
                          "–" if t.met is None else ("yes" if t.met else "**no**")] for t in card.targets])
    return "\n".join(lines)
