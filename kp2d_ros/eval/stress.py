"""One sequence replayed under what robots and busy nodes do, reproducibly, and the spread of the results.

A single replay of a short clip decides little: KITTI 07's 160-frame clip moves ±30 % in ATE with any small
change of the configuration (docs/results.md, *Local bundle adjustment → Threads*, stop 33), so two settings or two
commits compared on one run are compared on noise. :func:`stress_variants` lists deterministic variants of one
sequence that a node meets; ``kp2d stress`` replays each and :func:`summarize` reports each variant's numbers
and their median, geometric mean and maximum, so that an A/B compares distributions.

The variants (names as ``--variants`` takes them):

``clean``        every frame, each backend window waited for (``kp2d replay``'s default);
``lagN``         every window lands N frames after its keyframe (:class:`kp2d_ros.backend.LaggedWorker`):
                 2 = the node's worker when the CPU keeps up, 3 or more = a busy CPU;
``dropsS``       a busy node's dropped frames: each frame after the first dropped with probability
                 ``drop_rate``, seed S (:func:`random_drops`), windows waited for;
``dropsS+lagN``  the same drops with late windows (what a live node on a busy CPU does);
``everyN``       every N-th frame (a lower camera rate);
``stop``         the middle frame repeated for ``stop_frames`` intervals (a robot that stops);
``shade``        from the middle frame on, the images at half their brightness (an auto-exposure step as a
                 robot drives into shade: ``--simulate gain=M:E:50``);
``glare``        from the middle frame on, at 1.8x their brightness, saturating (``gain=M:E:180``);
``jitterP``      every stamp moved by up to +-P % of the frame interval, the images and their order unchanged (a
                 driver that stamps each image when the host receives it: ``--simulate jitter=P``, P < 50);
``repeatN``      the N frames after the middle one show its image again, byte for byte, with their own stamps and
                 ground truth (a stalled camera or a driver that sends its last image again while the robot moves
                 on: ``--simulate repeat=A:B``). Their poses cannot follow the motion, so compare the frames after.

``shade``, ``glare``, ``jitterP`` and ``repeatN`` are not among the defaults (:data:`DEFAULT_VARIANTS`, which earlier runs were
compared over); name them with ``--variants``.

Everything here is deterministic: the same sequence, configuration and variants give the same numbers.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from kp2d_ros.data.faults import drop_spec
from kp2d_ros.errors import ConfigError

_NAME = re.compile(r"^(clean|stop|shade|glare|lag(\d+)|every(\d+)|drops(\d+)(\+lag(\d+))?|jitter(\d+)|repeat(\d+))$")
_EXPOSURE = {"shade": 50, "glare": 180}  # percent of the brightness from the middle frame on


@dataclass(frozen=True)
class StressVariant:
    """One variant of a sequence: a ``--simulate`` spec (None: every frame) and a backend lag (0: wait)."""

    name: str
    simulate: str | None = None
    backend_lag: int = 0


@dataclass
class VariantOutcome:
    """The numbers of one variant's replay (None where the sequence has no ground truth).

    ``odom_ate_m``: the published odometry (REP 105's ``odom``); ``path_ate_m`` / ``map_ate_m``: the node's
    ``path`` after the backend and the pose in ``map`` (None without a backend).
    """

    name: str
    simulate: str | None
    backend_lag: int
    frames: int
    tracked_frames: int | None
    odom_ate_m: float | None
    odom_rpe_rot_deg: float | None
    path_ate_m: float | None = None
    map_ate_m: float | None = None


@dataclass
class StressSummary:
    """Every variant's outcome and, per trajectory (odom / path / map), the median, geometric mean and maximum
    ATE over the variants that have one, with the worst variant's name."""

    sequence: str
    frontend: str
    variants: list[VariantOutcome]
    stats: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"sequence": self.sequence, "frontend": self.frontend, "stats": self.stats,
                "variants": [asdict(v) for v in self.variants]}


def random_drops(n_frames: int, rate: float, seed: int) -> list[int]:
    """Frames a busy node drops: each of frames 1..n-1 with probability ``rate`` (frame 0 starts the run).

    Raises
    ------
    ConfigError
        a rate outside [0, 1).
    """
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"drop rate must be in [0, 1), got {rate}")
    draws = np.random.default_rng(seed).random(max(n_frames - 1, 0))
    return [int(i) + 1 for i in np.flatnonzero(draws < rate)]


DEFAULT_VARIANTS = ("clean", "lag2", "lag3", "drops0", "drops1", "drops2", "drops0+lag2", "drops1+lag2",
                    "drops2+lag2", "every2", "stop")


def stress_variants(n_frames: int, names=DEFAULT_VARIANTS, *, drop_rate: float = 0.1,
                    stop_frames: int = 10) -> list[StressVariant]:
    """The variants called ``names`` for a sequence of ``n_frames`` frames (module docstring).

    Raises
    ------
    ConfigError
        an unknown or repeated name, a lag or frame step below 1, a sequence too short to vary.
    """
    if n_frames < 3:
        raise ConfigError(f"stress needs a sequence of at least 3 frames, got {n_frames}")
    out, seen = [], set()
    for name in names:
        m = _NAME.match(name)
        if m is None:
            raise ConfigError(f"unknown stress variant {name!r}: expected clean, lagN, dropsS, dropsS+lagN, "
                              f"everyN, stop, shade, glare, jitterP or repeatN")
        if name in seen:
            raise ConfigError(f"stress variant {name!r} given twice")
        seen.add(name)
        lag = int(m.group(2) or m.group(6) or 0)
        if (m.group(2) or m.group(6)) and lag < 1:
            raise ConfigError(f"stress variant {name!r}: the lag must be >= 1 frame")
        if m.group(1) == "clean":
            out.append(StressVariant(name))
        elif m.group(1) == "stop":
            out.append(StressVariant(name, simulate=f"stop={n_frames // 2}:{stop_frames}"))
        elif m.group(1) in _EXPOSURE:
            out.append(StressVariant(name, simulate=f"gain={n_frames // 2}:{n_frames - 1}:{_EXPOSURE[name]}"))
        elif m.group(2):
            out.append(StressVariant(name, backend_lag=lag))
        elif m.group(8):
            count = int(m.group(8))
            mid = n_frames // 2
            if not 0 < count < n_frames - mid:
                raise ConfigError(f"stress variant {name!r}: repeat needs 0 < N < {n_frames - mid} (frames after the middle)")
            out.append(StressVariant(name, simulate=f"repeat={mid + 1}:{mid + count}"))
        elif m.group(7):
            if not 0 < int(m.group(7)) < 50:
                raise ConfigError(f"stress variant {name!r}: jitter needs 0 < P < 50 (percent of the frame interval)")
            out.append(StressVariant(name, simulate=f"jitter={int(m.group(7))}"))
        elif m.group(3):
            step = int(m.group(3))
            if step < 2:
                raise ConfigError(f"stress variant {name!r}: every needs N >= 2")
            out.append(StressVariant(name, simulate=f"every={step}"))
        else:
            spec = drop_spec(random_drops(n_frames, drop_rate, int(m.group(4))))
            out.append(StressVariant(name, simulate=spec, backend_lag=lag))
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _gmean(values) -> float:
    return float(np.exp(np.mean(np.log(np.maximum(np.asarray(values, float), 1e-12)))))


def _stats(values: list[tuple[str, float]]) -> dict | None:
    finite = [(n, v) for n, v in values if _finite(v)]
    if not finite:
        return None
    vals = np.array([v for _, v in finite])
    worst = max(finite, key=lambda nv: nv[1])
    return {"n": len(finite), "median": float(np.median(vals)), "gmean": _gmean(vals), "max": float(worst[1]),
            "worst": worst[0]}


def summarize(sequence: str, frontend: str, outcomes: list[VariantOutcome]) -> StressSummary:
    """Median / geometric mean / max of each trajectory's ATE over the variants (``stats[odom|path|map]``; a
    trajectory without any finite ATE is left out)."""
    stats = {}
    for key in ("odom", "path", "map"):
        s = _stats([(o.name, getattr(o, f"{key}_ate_m")) for o in outcomes])
        if s is not None:
            stats[key] = s
    return StressSummary(sequence=sequence, frontend=frontend, variants=list(outcomes), stats=stats)


def outcome(variant: StressVariant, result) -> VariantOutcome:
    """A :class:`VariantOutcome` from a :class:`kp2d_ros.eval.replay.ReplayResult`."""
    report, path, in_map = result.report(), result.refined_report(), result.in_map_report()  # None: no backend
    return VariantOutcome(name=variant.name, simulate=variant.simulate, backend_lag=variant.backend_lag,
                          frames=int(report["frames"]), tracked_frames=report["tracked_frames"],
                          odom_ate_m=report["ate_rmse_m"], odom_rpe_rot_deg=report["rpe_rot_deg"],
                          path_ate_m=None if path is None else path["ate_rmse_m"],
                          map_ate_m=None if in_map is None else in_map["ate_rmse_m"])


# compare()'s keys -> the VariantOutcome field compared (ATE in metres, the RPE rotation in degrees per frame)
COMPARED = {"odom": "odom_ate_m", "path": "path_ate_m", "map": "map_ate_m", "odom_rpe_rot": "odom_rpe_rot_deg"}


def compare(base: dict, new: dict) -> dict:
    """``new`` against ``base`` (both :meth:`StressSummary.to_json`) on the variants both ran with a finite value, per
    trajectory's ATE (odom / path / map) and for the odometry's RPE rotation (``odom_rpe_rot``, degrees/frame):
    ``{n, variants, base_gmean, new_gmean, ratio (new / base), new_lower (how many variants new has the lower
    value)}``. A key that no common variant has is left out.

    Raises
    ------
    ConfigError
        the two summaries have no variant in common.
    """
    va = {v["name"]: v for v in base["variants"]}
    vb = {v["name"]: v for v in new["variants"]}
    common = [n for n in vb if n in va]
    if not common:
        raise ConfigError("the two stress runs have no variant in common")
    out = {}
    for key, field in COMPARED.items():
        pairs = [(n, va[n].get(field), vb[n].get(field)) for n in common]
        pairs = [(n, a, b) for n, a, b in pairs if _finite(a) and _finite(b)]
        if not pairs:
            continue
        a, b = np.array([p[1] for p in pairs]), np.array([p[2] for p in pairs])
        ga, gb = _gmean(a), _gmean(b)
        out[key] = {"n": len(pairs), "variants": [p[0] for p in pairs], "base_gmean": ga, "new_gmean": gb,
                    "ratio": gb / ga, "new_lower": int(np.sum(b < a))}
    return out
