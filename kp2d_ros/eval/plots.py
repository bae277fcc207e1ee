"""Trajectory figure of a replay (matplotlib Agg canvas; no pyplot global state)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kp2d_ros.eval.replay import ReplayResult


def _top_view_axes(points: np.ndarray) -> tuple[int, int]:
    """The two axes with the largest extent (for optical frames usually x and z)."""
    ext = np.ptp(points, axis=0) if len(points) else np.ones(3)
    a, b = sorted(np.argsort(ext)[-2:])
    return int(a), int(b)


def plotted_estimate(m) -> tuple[np.ndarray, bool]:
    """(N, 3) estimate positions to draw against the ground truth, and whether they are metric: only
    SE(3)-aligned (as published) when ``|sim3_scale - 1| <=`` :data:`~kp2d_ros.eval.metrics.METRIC_SCALE_TOL`,
    else Sim(3)-aligned (rescaled)."""
    from kp2d_ros.eval.metrics import is_metric

    metric = is_metric(m) and m.est_aligned_se3 is not None
    return (m.est_aligned_se3 if metric else m.est_aligned).poses[:, :3, 3], metric


def plot_replay(result: ReplayResult, path: str | Path) -> Path:
    """Write a PNG: top view of the aligned estimate vs ground truth, and ATE over time.

    The estimate is drawn Sim(3)-aligned (rescaled), or only SE(3)-aligned (as it is, in metres) when it is
    metric: ``|sim3_scale - 1| <=`` :data:`~kp2d_ros.eval.metrics.METRIC_SCALE_TOL`. Without ground truth
    only the (unaligned) estimate is drawn.
    """

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = "xyz"
    m = result.metrics
    fig = Figure(figsize=(11, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    if m is not None:
        gt = m.gt.poses[:, :3, 3]
        est, metric = plotted_estimate(m)
        i, j = _top_view_axes(gt)
        ax.plot(gt[:, i], gt[:, j], "k-", lw=2, label="ground truth")
        label = (f"estimate (metric, SE(3) only; Sim(3) s={m.sim3_scale:.3g})" if metric
                 else f"estimate (Sim(3), s={m.sim3_scale:.3g})")
        ax.plot(est[:, i], est[:, j], "C3-", lw=1.5, label=label)
        ax.plot(gt[0, i], gt[0, j], "ko")
        title = f"{result.sequence} / {result.frontend}: ATE {m.ate.rmse:.3f} m"
        if metric:
            title += f", SE(3) {m.ate_se3.rmse:.3f} m"
    else:
        est = result.estimate.poses[:, :3, 3]
        i, j = _top_view_axes(est)
        ax.plot(est[:, i], est[:, j], "C3-", lw=1.5, label="estimate (unscaled)")
        title = f"{result.sequence} / {result.frontend}: no ground truth"
    ax.set_xlabel(f"{names[i]} [m]")
    ax.set_ylabel(f"{names[j]} [m]")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title, fontsize=10)

    ax2 = fig.add_subplot(1, 2, 2)
    if m is not None:
        t = m.gt.stamps - m.gt.stamps[0]
        ax2.plot(t, m.ate.errors, "C0-", label="ATE per frame (Sim(3))")
        if metric:
            ax2.plot(t, m.ate_se3.errors, "C2-", label="ATE per frame (SE(3), metric)")
        if m.rpe is not None and len(m.rpe.trans_errors_m):
            ax2.plot(t[1:], m.rpe.trans_errors_m, "C1-", lw=1, label="RPE translation per frame")
        ax2.set_ylabel("error [m]")
        ax2.legend(loc="best", fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel("time [s]")
    ax2.grid(alpha=0.3)
    if result.tracked_frames is None:  # a trajectory file: no tracking states, no timing
        ax2.set_title(f"{result.frames} poses", fontsize=10)
    else:
        ax2.set_title(f"{result.tracked_frames}/{result.frames} frames tracked, {result.fps:.1f} FPS", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
