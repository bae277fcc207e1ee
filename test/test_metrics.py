"""ATE / RPE / alignment / association against evo (used only as a test oracle)."""
import copy

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from kp2d_ros.eval import metrics
from kp2d_ros.types import Trajectory

evo_traj = pytest.importorskip("evo.core.trajectory")
from evo.core import metrics as evo_metrics  # noqa: E402
from evo.core import sync as evo_sync  # noqa: E402


def _random_walk(n: int, seed: int, dt: float = 0.1, t0: float = 100.0) -> Trajectory:
    """Smooth camera path: forward motion with a turn and some wobble."""
    rng = np.random.default_rng(seed)
    poses = np.tile(np.eye(4), (n, 1, 1))
    yaw = np.cumsum(np.full(n, 0.03) + 0.01 * rng.standard_normal(n))
    for i in range(n):
        angles = [yaw[i], 0.02 * np.sin(i / 5), 0.01 * rng.standard_normal()]
        poses[i, :3, :3] = Rotation.from_euler("yxz", angles).as_matrix()
    steps = np.stack([np.sin(yaw), 0.02 * rng.standard_normal(n), np.cos(yaw)], axis=1) * 0.5
    poses[:, :3, 3] = np.cumsum(steps, axis=0)
    return Trajectory(stamps=t0 + dt * np.arange(n), poses=poses)


def _noisy_similar(gt: Trajectory, seed: int, scale: float = 0.37) -> Trajectory:
    """gt seen in another frame at another scale, with pose noise: a monocular estimate."""
    rng = np.random.default_rng(seed)
    S = np.eye(4)
    S[:3, :3] = Rotation.from_rotvec([0.3, -1.2, 0.5]).as_matrix()
    S[:3, 3] = [3.0, -1.0, 2.0]
    poses = np.linalg.inv(S) @ gt.poses
    poses[:, :3, 3] *= scale
    for P in poses:
        P[:3, :3] = P[:3, :3] @ Rotation.from_rotvec(0.01 * rng.standard_normal(3)).as_matrix()
        P[:3, 3] += 0.02 * scale * rng.standard_normal(3)
    return Trajectory(stamps=gt.stamps.copy(), poses=poses)


def _to_evo(traj: Trajectory):
    return evo_traj.PoseTrajectory3D(poses_se3=list(traj.poses), timestamps=traj.stamps.copy())


def _evo_scores(est: Trajectory, gt: Trajectory, max_diff: float):
    ref, e = evo_sync.associate_trajectories(_to_evo(gt), _to_evo(est), max_diff=max_diff)
    e = copy.deepcopy(e)
    r, t, s = e.align(ref, correct_scale=True)
    out = {"n": ref.num_poses, "R": r, "t": t, "s": s}
    ape = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
    ape.process_data((ref, e))
    out["ate"] = ape.get_statistic(evo_metrics.StatisticsType.rmse)
    for rel, key in ((evo_metrics.PoseRelation.rotation_angle_deg, "rot"),
                     (evo_metrics.PoseRelation.translation_part, "trans")):
        m = evo_metrics.RPE(rel, delta=1, delta_unit=evo_metrics.Unit.frames, all_pairs=False)
        m.process_data((ref, e))
        out[key] = m.get_statistic(evo_metrics.StatisticsType.rmse)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_evo_on_identical_stamps(seed):
    gt = _random_walk(80, seed)
    est = _noisy_similar(gt, seed + 10)
    ours = metrics.evaluate(est, gt)
    ref = _evo_scores(est, gt, 0.01)
    assert ours.matched == ref["n"] == 80
    assert ours.ate.alignment.scale == pytest.approx(ref["s"], rel=1e-9)
    np.testing.assert_allclose(ours.ate.alignment.rotation, ref["R"], atol=1e-9)
    np.testing.assert_allclose(ours.ate.alignment.translation, ref["t"], atol=1e-9)
    assert ours.ate.rmse == pytest.approx(ref["ate"], abs=1e-6)
    assert ours.rpe.rot_rmse_deg == pytest.approx(ref["rot"], abs=1e-6)
    assert ours.rpe.trans_rmse_m == pytest.approx(ref["trans"], abs=1e-6)
    # the monocular scale is recovered (1 / 0.37)
    assert ours.ate.alignment.scale == pytest.approx(1 / 0.37, rel=0.05)


def test_matches_evo_with_association():
    """GT at 100 Hz with jittered stamps, estimate at 10 Hz with a few frames missing GT."""
    fine = _random_walk(1000, 5, dt=0.01)
    est_full = _noisy_similar(Trajectory(fine.stamps[::10].copy(), fine.poses[::10].copy()), 6)
    est = Trajectory(est_full.stamps + 0.002, est_full.poses)  # 2 ms clock offset
    keep = np.ones(len(fine), bool)
    keep[200:260] = False  # GT dropout: 6 estimated frames lose their partner
    gt = Trajectory(fine.stamps[keep], fine.poses[keep])
    ours = metrics.evaluate(est, gt, max_diff=0.005)
    ref = _evo_scores(est, gt, 0.005)
    assert ours.matched == ref["n"] == 94
    assert ours.ate.rmse == pytest.approx(ref["ate"], abs=1e-6)
    assert ours.rpe.rot_rmse_deg == pytest.approx(ref["rot"], abs=1e-6)
    assert ours.rpe.trans_rmse_m == pytest.approx(ref["trans"], abs=1e-6)


def test_perfect_estimate_scores_zero():
    gt = _random_walk(30, 3)
    est = _noisy_similar(gt, 4)
    est = Trajectory(est.stamps, est.poses.copy())
    # exact similarity copy: no noise
    S = np.eye(4)
    S[:3, :3] = Rotation.from_rotvec([0.1, 0.2, 0.3]).as_matrix()
    exact = np.linalg.inv(S) @ gt.poses
    exact[:, :3, 3] *= 2.5
    res = metrics.evaluate(Trajectory(gt.stamps, exact), gt)
    assert res.ate.rmse < 1e-9 and res.rpe.rot_rmse_deg < 1e-6 and res.rpe.trans_rmse_m < 1e-9
    assert res.ate.alignment.scale == pytest.approx(0.4)
    assert res.gt_path_length_m == pytest.approx(metrics.path_length(gt))


def test_se3_alignment_keeps_scale():
    gt = _random_walk(40, 7)
    half = Trajectory(gt.stamps, gt.poses.copy())
    half.poses[:, :3, 3] *= 0.5
    se3 = metrics.ate(half, gt, correct_scale=False)
    sim3 = metrics.ate(half, gt, correct_scale=True)
    assert se3.alignment.scale == 1.0 and se3.rmse > 0.1
    assert sim3.rmse < 1e-9


def test_tum_round_trip(tmp_path):
    traj = _random_walk(25, 8, t0=1311868169.163498)
    metrics.write_tum(traj, tmp_path / "t.tum")
    back = metrics.read_tum(tmp_path / "t.tum")
    np.testing.assert_allclose(back.stamps, traj.stamps, atol=1e-6)
    np.testing.assert_allclose(back.poses, traj.poses, atol=1e-8)


def test_evaluate_needs_overlap():
    a = _random_walk(10, 0, t0=0.0)
    b = _random_walk(10, 0, t0=50.0)
    with pytest.raises(ValueError, match="ground truth"):
        metrics.evaluate(a, b)


# ---------------------------------------------------------------------------------------------
# metric evaluation: SE(3) ATE, Sim(3) scale, KITTI-style drift (evo_rpe --delta L --delta_unit m)
# ---------------------------------------------------------------------------------------------
def _straight(n: int, step: float = 1.0) -> Trajectory:
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 2, 3] = step * np.arange(n)
    return Trajectory(stamps=np.arange(n, dtype=np.float64), poses=poses)


def test_segment_length_is_the_longest_with_five_segments():
    # 59 m in 1 m steps: a 50 m segment (+-10%) starts at frames 0..14 (frames 0..9 reach 50 m exactly, 10..14
    # end at 49..45 m) -> 15 segments -> 50 m; 48 m: only frames 0..3 reach 45 m -> 25 m
    assert metrics.choose_segment_length(_straight(60)) == 50.0
    pairs = metrics.segment_pairs(_straight(60), 50.0)
    assert len(pairs) == 15 and tuple(pairs[0]) == (0, 50) and tuple(pairs[-1]) == (14, 59)
    assert metrics.choose_segment_length(_straight(49)) == 25.0
    assert metrics.choose_segment_length(_straight(12)) is None  # 11 m: 3 segments of 10 m, fewer than 5
    assert metrics.choose_segment_length(_straight(120)) == 100.0
    # 94 m: five starts have 90..94 m ahead (within 10% of 100 m), but the path does not cover 100 m -> 50
    assert len(metrics.segment_pairs(_straight(95), 100.0)) == 5
    assert metrics.choose_segment_length(_straight(95)) == 50.0


def test_drift_of_a_half_scale_estimate_is_fifty_percent():
    """A rigidly moved copy of a straight 74 m ground truth at half scale: every segment is 50% short, no
    rotation error; the Sim(3) scale is 2 and the SE(3) ATE is large, the Sim(3) ATE zero."""
    gt = _straight(75)
    S = np.eye(4)
    S[:3, :3] = Rotation.from_rotvec([0.2, -0.4, 0.1]).as_matrix()
    S[:3, 3] = [1.0, 2.0, 3.0]
    poses = S @ gt.poses
    poses[:, :3, 3] *= 0.5
    res = metrics.evaluate(Trajectory(gt.stamps, poses), gt)
    assert res.sim3_scale == pytest.approx(2.0) and res.ate.rmse < 1e-9 and res.ate_se3.rmse > 1.0
    assert res.drift.segment_m == 50.0 and res.drift.num_segments >= 5
    assert res.drift.trans_pct == pytest.approx(50.0) and res.drift.rot_deg_per_m < 1e-6
    assert not metrics.is_metric(res)
    rep = metrics.metrics_report(res)
    assert tuple(rep) == metrics.METRIC_KEYS and rep["drift_pct"] == pytest.approx(50.0) and rep["segment_m"] == 50.0
    assert all(v is None for v in metrics.metrics_report(None).values())


@pytest.mark.parametrize("seed", [0, 1])
def test_metric_keys_match_evo(seed):
    """A noisy, rigidly moved, metric estimate: SE(3) ATE against evo_ape --align, the drift segments and
    errors against evo's RPE with --delta 25 --delta_unit m (all pairs, pairs from the reference path)."""
    from evo.core import filters as evo_filters

    gt = _random_walk(120, seed)  # ~60 m -> 50 m segments
    est = _noisy_similar(gt, seed + 20, scale=1.0)
    res = metrics.evaluate(est, gt)
    ref, e = _to_evo(gt), copy.deepcopy(_to_evo(est))
    e.align(ref, correct_scale=False)
    ape = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
    ape.process_data((ref, e))
    assert res.ate_se3.rmse == pytest.approx(ape.get_statistic(evo_metrics.StatisticsType.rmse), abs=1e-9)
    assert res.sim3_scale == pytest.approx(1.0, abs=0.02) and metrics.is_metric(res)

    for length in (25.0, res.drift.segment_m):
        d = metrics.drift(est, gt, length)  # identical stamps: associated as they are
        pairs = evo_filters.filter_pairs_by_path(ref.poses_se3, length, 0.1 * length, all_pairs=True)
        assert [tuple(p) for p in d.pairs] == pairs
        lengths = np.array([ref.distances[j] - ref.distances[i] for i, j in pairs])
        errs = {}
        for rel, key in ((evo_metrics.PoseRelation.translation_part, "t"),
                         (evo_metrics.PoseRelation.rotation_angle_deg, "r")):
            rpe = evo_metrics.RPE(rel, delta=length, delta_unit=evo_metrics.Unit.meters, all_pairs=True,
                                  pairs_from_reference=True)
            rpe.process_data((ref, _to_evo(est)))  # unaligned: relative poses ignore a rigid alignment
            errs[key] = rpe.error
        np.testing.assert_allclose(d.trans_errors_m, errs["t"], atol=1e-9)
        np.testing.assert_allclose(d.rot_errors_deg, errs["r"], atol=1e-6)
        assert d.trans_pct == pytest.approx(np.mean(100 * errs["t"] / lengths), rel=1e-9)
        assert d.rot_deg_per_m == pytest.approx(np.mean(errs["r"] / lengths), rel=1e-6)


def test_plot_shows_the_unrescaled_estimate_when_metric(tmp_path):
    from kp2d_ros.eval.plots import plot_replay, plotted_estimate
    from kp2d_ros.eval.replay import ReplayResult
    from kp2d_ros.types import TrackingStatus

    gt = _random_walk(60, 4)
    metric = metrics.evaluate(_noisy_similar(gt, 5, scale=1.0), gt)
    scaled = metrics.evaluate(_noisy_similar(gt, 5, scale=0.5), gt)
    pts, is_metric = plotted_estimate(metric)
    assert is_metric and np.allclose(pts, metric.est_aligned_se3.poses[:, :3, 3])
    pts, is_metric = plotted_estimate(scaled)
    assert not is_metric and np.allclose(pts, scaled.est_aligned.poses[:, :3, 3])
    result = ReplayResult("walk", "sift", metric.est_aligned_se3, [TrackingStatus.TRACKING] * 60, 1.0, metric)
    assert plot_replay(result, tmp_path / "t.png").stat().st_size > 10_000
