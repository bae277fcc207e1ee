"""VOPipeline: state machine on a synthetic point world, then real sequences (EuRoC static, KITTI)."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import data_path
from kp2d_ros.backend import BackendWorker, LaggedWorker, MapSnapshot, bundle_adjust, solve_window
from kp2d_ros.config import VOConfig
from kp2d_ros.geometry import invert_se3, rotation_angle_deg, se3
from kp2d_ros.matching import MatchScorer
from kp2d_ros.pipeline import VOPipeline
from kp2d_ros.types import Camera, Features, Frame, Frontend, TrackingStatus

CAM = Camera.from_intrinsics(500.0, 500.0, 320.0, 240.0, 640, 480)
TIMING_KEYS = {"network", "matching", "io_net", "refine", "pose", "backend", "total"}

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Synthetic world: a frontend that "detects" known 3-D points
# --------------------------------------------------------------------------------------------
class PointWorldFrontend(Frontend):
    """Projects a fixed point cloud; the image's first pixel names the camera pose to use.

    Each world point has its own descriptor, so matching is exact and the test isolates the
    geometry and the state machine. Pose index 255 sees nothing (tracking loss); the second pixel
    picks a descriptor set (frames with different sets cannot be matched): a permutation of the points' descriptors,
    or with 255 descriptors unrelated to any point's (an occluder's own texture).
    """

    name = "point-world"

    def __init__(self, poses, n_points=600, noise_px=0.2, seed=0):
        rng = np.random.default_rng(seed)
        self.X = np.c_[rng.uniform(-20, 20, n_points), rng.uniform(-4, 4, n_points), rng.uniform(-10, 80, n_points)]
        self.desc = rng.normal(size=(n_points, 32)).astype(np.float32)
        self.desc /= np.linalg.norm(self.desc, axis=1, keepdims=True)
        self.other = np.random.default_rng(seed + 1).normal(size=(n_points, 32)).astype(np.float32)
        self.other /= np.linalg.norm(self.other, axis=1, keepdims=True)
        self.poses = poses
        self.noise_px = noise_px
        self.rng = rng

    def detect(self, image):
        i = int(image[0, 0])
        if i == 255:
            return Features.empty(dim=32)
        if image[0, 1] == 255:
            desc = self.other
        else:
            desc = self.desc[np.random.default_rng(image[0, 1]).permutation(len(self.desc))] if image[0, 1] else self.desc
        T_cam_world = np.linalg.inv(self.poses[i])
        Xc = self.X @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
        p = Xc @ CAM.K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            px = p[:, :2] / p[:, 2:]
        vis = (Xc[:, 2] > 1.0) & (px[:, 0] >= 0) & (px[:, 0] < 640) & (px[:, 1] >= 0) & (px[:, 1] < 480)
        kp = px[vis] + self.rng.normal(0, self.noise_px, (int(vis.sum()), 2))
        return Features(kp.astype(np.float32), desc[vis], np.ones(int(vis.sum()), np.float32))


def frame(i, stamp=None, descriptor_set=0, shot=0):
    """Frame ``i`` of the point world; ``shot`` (0-255) changes a byte that the frontend ignores: another exposure of
    the same view, as a real camera's noise makes every image differ (identical bytes are a repeated, stale image)."""
    image = np.full((480, 640), i, np.uint8)
    image[0, 1] = descriptor_set
    image[0, 2] = shot
    return Frame(image=image, camera=CAM, stamp=float(i if stamp is None else stamp), index=i)


def driving_poses(n, step=0.5, yaw_deg=1.0, speed_change=0.0):
    """Forward motion along z with a steady turn (T_world_cam, optical frame).

    Step i has length ``step * (1 + speed_change * sin(i / 2))``.
    """
    poses = []
    T = np.eye(4)
    for i in range(n):
        poses.append(T.copy())
        length = step * (1.0 + speed_change * np.sin(i / 2.0))
        T = T @ se3(cv2.Rodrigues(np.radians([0.0, yaw_deg, 0.0]))[0], [0.0, 0.0, length])
    return poses


def sim3_align(est, gt):
    """Umeyama: scale s, rotation R, translation t minimising |s R est + t - gt|; returns aligned est."""
    mu_e, mu_g = est.mean(0), gt.mean(0)
    C = (gt - mu_g).T @ (est - mu_e) / len(est)
    U, S, Vt = np.linalg.svd(C)
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt))
    R = U @ D @ Vt
    s = np.trace(np.diag(S) @ D) / np.mean(np.sum((est - mu_e) ** 2, axis=1))
    return (s * (R @ (est - mu_e).T)).T + mu_g


def run(vo, frames):
    return [vo.process(f) for f in frames]


@pytest.mark.parametrize("scale_method, fuse, tol", [("ratio", False, 0.05), ("inverse_depth", False, 0.03),
                                                     ("inverse_depth", True, 0.03)])
def test_synthetic_trajectory_up_to_scale(scale_method, fuse, tol):
    gt = driving_poses(20, step=1.0, speed_change=0.4)  # the speed varies: a constant-speed guess would fail
    cfg = VOConfig()
    cfg.pipeline.scale_method, cfg.pipeline.fuse_depths = scale_method, fuse
    vo = VOPipeline(cfg, frontend=PointWorldFrontend(gt))
    out = run(vo, [frame(i) for i in range(20)])
    assert out[0].status == TrackingStatus.INITIALIZING and out[0].is_keyframe
    np.testing.assert_array_equal(out[0].T_world_cam, np.eye(4))
    assert all(e.status == TrackingStatus.TRACKING and e.is_keyframe for e in out[1:])
    # first pair: unit translation; later pairs: the same (unknown) scale, set by the first step
    assert np.linalg.norm(out[1].T_world_cam[:3, 3]) == pytest.approx(1.0)
    steps = [np.linalg.norm(out[i + 1].T_world_cam[:3, 3] - out[i].T_world_cam[:3, 3]) for i in range(19)]
    gt_steps = [np.linalg.norm(gt[i + 1][:3, 3] - gt[i][:3, 3]) for i in range(19)]
    # (the ratio method's selection of well-triangulated points biases it slightly low)
    np.testing.assert_allclose(np.array(steps) * gt_steps[0], gt_steps, rtol=tol)
    est = np.array([e.T_world_cam[:3, 3] for e in out])
    gtp = np.array([T[:3, 3] for T in gt])
    assert np.max(np.linalg.norm(sim3_align(est, gtp) - gtp, axis=1)) < 0.1
    for e, T in zip(out, gt):
        assert rotation_angle_deg(e.T_world_cam[:3, :3].T @ T[:3, :3]) < 0.2


def _odom_step_errors(structure_pose: bool, window: int, monkeypatch, lag: int = 0,
                      during_network: bool = False) -> tuple[np.ndarray, int]:
    """The point world's 30 frames with a deterministic window (with ``lag``: each window taken ``lag`` frames
    late; ``during_network``: on a worker whose windows finish while the next frame's network runs): each odometry
    step's length error (the first step's unit taken as the truth's) and how many pairs were posed against refined
    points."""
    import kp2d_ros.pipeline as pipeline_module

    calls = []
    original = pipeline_module.refine_pose_with_structure

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "refine_pose_with_structure", counted)
    gt = driving_poses(30, step=1.0, speed_change=0.4)
    cfg = VOConfig()
    cfg.pipeline.structure_pose, cfg.backend.window, cfg.backend.threaded = structure_pose, window, False
    worker = LaggedWorker(cfg.backend, lag) if lag else DuringNetworkWorker(cfg.backend) if during_network else None
    frontend = NetworkTimedFrontend(gt, worker) if during_network else PointWorldFrontend(gt)
    vo = VOPipeline(cfg, frontend=frontend, worker=worker)
    try:
        out = run(vo, [frame(i) for i in range(30)])
    finally:
        vo.close()
    steps = np.array([np.linalg.norm(out[i + 1].T_odom_cam[:3, 3] - out[i].T_odom_cam[:3, 3]) for i in range(29)])
    gt_steps = np.array([np.linalg.norm(gt[i + 1][:3, 3] - gt[i][:3, 3]) for i in range(29)])
    return steps * gt_steps[0] / gt_steps - 1.0, len(calls)


def test_with_the_window_each_pair_is_posed_against_its_refined_points(monkeypatch):
    """``pipeline.structure_pose``: once a window has refined the reference's points, each pair is posed against
    them too (27 of 29 pairs here) and the odometry's steps keep their length better (worst error 1.2 % against
    1.7 % with the two-view pose). Without the window nothing changes: a single pair's depths are not used."""
    on, n_on = _odom_step_errors(True, 16, monkeypatch)
    off, n_off = _odom_step_errors(False, 16, monkeypatch)
    assert n_on >= 20 and n_off == 0
    assert np.abs(on).max() < 0.85 * np.abs(off).max()
    w0_on, n_w0 = _odom_step_errors(True, 0, monkeypatch)
    w0_off, _ = _odom_step_errors(False, 0, monkeypatch)
    assert n_w0 == 0
    np.testing.assert_array_equal(w0_on, w0_off)


def test_a_late_window_does_not_pose_its_followers_against_refined_points(monkeypatch):
    """A window that lands after newer keyframes moves them by a guess (its newest step); their depths through that
    guessed pose are not refined points, so with every window 3 frames late no pair is posed against them and the
    odometry is the two-view pose's (KITTI 07 at that lag: 0.081 m when followers counted, 0.069 m without)."""
    late_on, n_late = _odom_step_errors(True, 16, monkeypatch, lag=3)
    late_off, _ = _odom_step_errors(False, 16, monkeypatch, lag=3)
    assert n_late == 0
    np.testing.assert_array_equal(late_on, late_off)


class DuringNetworkWorker(BackendWorker):
    """The node's worker process when it has a core of its own: a window handed over after a keyframe finishes
    while the next frame's network runs (here it is optimised in the test's thread, and its result released by
    :class:`NetworkTimedFrontend`'s detection)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.running = self.done = None
        self.windows = []  # what it was handed

    def submit(self, window, focal_px):
        self.windows.append(window)
        self.running = solve_window(window, self.cfg, focal_px)  # what the child process runs

    def network_ran(self):
        if self.running is not None:
            self.done, self.running = self.running, None

    def poll(self):
        done, self.done = self.done, None
        return done

    def ready(self):
        return self.running is None and self.done is None

    def idle(self):
        return self.running is None

    def wait(self, timeout=None):
        self.network_ran()
        return self.poll()


class NetworkTimedFrontend(PointWorldFrontend):
    """The point world, and the worker's running window done by the time a frame's features are."""

    def __init__(self, poses, worker):
        super().__init__(poses)
        self.worker = worker

    def detect(self, image):
        features = super().detect(image)
        self.worker.network_ran()
        return features


def test_a_window_done_during_the_network_poses_the_next_pair(monkeypatch):
    """The node's timing with a worker that keeps up: each keyframe's window is handed over after its frame and
    finishes while the next frame's network runs. It is taken before that frame's features are matched, so the pair
    is posed against the reference's refined points (the deterministic mode's odometry, to rounding), not kept for
    the frame after (before stop 42 a saturated node's windows were never in time for the structure pose)."""
    threaded, n_threaded = _odom_step_errors(True, 16, monkeypatch, during_network=True)
    deterministic, n_deterministic = _odom_step_errors(True, 16, monkeypatch)
    assert n_threaded >= 20 and n_threaded == n_deterministic
    np.testing.assert_allclose(threaded, deterministic, rtol=0, atol=1e-9)  # corrections composed in another order



def _between_frames(take: bool):
    """The odometry, map poses and windows taken between frames of a worker whose window, handed over after a
    keyframe's frame, finishes before the next frame arrives (the node below its capacity), with ``take``: taken
    at once (:meth:`VOPipeline.take_window`, the node between images), else by the next frame's ``finish()``."""
    gt = driving_poses(12)
    cfg = default_config(threaded=True)
    worker = DuringNetworkWorker(cfg.backend)
    vo = VOPipeline(cfg, frontend=PointWorldFrontend(gt), worker=worker)
    odom, taken = [], 0
    try:
        for i in range(len(gt)):
            odom.append(vo.process(frame(i)).T_odom_cam)
            vo.finish()  # the node, after publishing
            worker.network_ran()  # the window is done before the next image
            if take:
                taken += vo.take_window()
                assert not vo.take_window()  # taken once
        if not take:
            vo.finish()  # the last window, as a next frame would take it
        poses = vo.keyframe_poses()
    finally:
        vo.close()
    # the worker's process builds each window's problem from a snapshot of the map; a window of the first
    # keyframes, which has none to optimise beyond the held ones, is skipped at once instead
    assert worker.windows and all(isinstance(w, MapSnapshot) and w.too_few_keyframes() is None
                                  for w in worker.windows)
    return odom, poses, taken


def test_a_window_taken_between_frames_changes_nothing_but_when():
    """``take_window`` between frames (the node while it waits for an image) takes the window the next frame's
    ``finish()`` would have taken, with the same result: the odometry and the refined keyframes are the same."""
    odom, poses, taken = _between_frames(take=True)
    odom0, poses0, _ = _between_frames(take=False)
    assert taken >= 8
    np.testing.assert_array_equal(np.array(odom), np.array(odom0))
    assert poses.keys() == poses0.keys() and all(np.array_equal(poses[k], poses0[k]) for k in poses)

def test_every_field_is_filled():
    gt = driving_poses(3)
    vo = VOPipeline(VOConfig(), frontend=PointWorldFrontend(gt))
    out = run(vo, [frame(i, stamp=10.0 + i) for i in range(3)])
    e = out[-1]
    assert e.stamp == 12.0 and set(e.timings_ms) == TIMING_KEYS and e.timings_ms["io_net"] == 0.0
    assert e.num_features == len(e.features) > 0
    assert 0 < e.num_inliers <= e.num_matches <= e.num_features
    assert e.matched.shape == (e.num_features,) and e.matched.sum() == e.num_inliers
    assert e.ref_keypoints.shape == e.cur_keypoints.shape == (e.num_inliers, 2)
    assert set(map(tuple, e.cur_keypoints)) == set(map(tuple, e.features.keypoints[e.matched]))
    assert 0.5 < e.quality <= 1.0
    assert set(out[0].timings_ms) == TIMING_KEYS


def test_static_camera_holds_pose_exactly():
    gt = driving_poses(4)
    vo = VOPipeline(VOConfig(), frontend=PointWorldFrontend(gt))
    out = run(vo, [frame(0), frame(1), frame(1), frame(1), frame(2)])
    assert [e.status for e in out] == [TrackingStatus.INITIALIZING, TrackingStatus.TRACKING, TrackingStatus.STATIC,
                                       TrackingStatus.STATIC, TrackingStatus.TRACKING]
    np.testing.assert_array_equal(out[2].T_world_cam, out[1].T_world_cam)
    np.testing.assert_array_equal(out[3].T_world_cam, out[1].T_world_cam)
    assert not out[2].is_keyframe and out[4].is_keyframe
    # the scale survives the static frames
    step = np.linalg.norm(out[4].T_world_cam[:3, 3] - out[1].T_world_cam[:3, 3])
    assert step == pytest.approx(1.0, rel=0.03)


def test_first_pair_after_static_start_has_unit_norm():
    gt = driving_poses(4)
    vo = VOPipeline(VOConfig(), frontend=PointWorldFrontend(gt))
    out = run(vo, [frame(0), frame(0), frame(0), frame(2), frame(3)])
    assert [e.status for e in out[1:3]] == [TrackingStatus.STATIC] * 2
    assert np.linalg.norm(out[3].T_world_cam[:3, 3]) == pytest.approx(1.0)
    # the next step (half as long in the world) keeps the scale
    assert np.linalg.norm(out[4].T_world_cam[:3, 3] - out[3].T_world_cam[:3, 3]) == pytest.approx(0.5, rel=0.05)


def test_keyframe_spacing_does_not_delay_the_first_pair():
    """``pipeline.keyframe_parallax_px`` spaces the keyframes that follow the first pair; the first pair (it defines
    the unit) still forms at ``min_parallax_px``, so a larger spacing does not hold the position longer at the
    start (before: 6 frames held at 0.05 m/frame on the synthetic street with a spacing of 6 px, RPE 0.021 m)."""
    gt = driving_poses(12, step=0.1, yaw_deg=0.2)
    first, keyframes = {}, {}
    for spacing in (0.0, 40.0):
        cfg = VOConfig()
        cfg.pipeline.keyframe_parallax_px, cfg.backend.window = spacing, 0
        out = run(VOPipeline(cfg, frontend=PointWorldFrontend(gt)), [frame(i) for i in range(12)])
        first[spacing] = next(i for i, e in enumerate(out) if np.any(e.T_world_cam[:3, 3]))
        keyframes[spacing] = sum(e.is_keyframe for e in out[first[spacing] + 1:])
        assert all(e.status == TrackingStatus.TRACKING for e in out[first[spacing]:])
    assert first[40.0] == first[0.0] <= 3
    assert keyframes[40.0] < keyframes[0.0]  # the spacing applies after the first pair


def test_lost_holds_pose_then_reinitialises_keeping_scale():
    gt = driving_poses(10)
    cfg = VOConfig()
    cfg.pipeline.max_lost_frames = 2
    vo = VOPipeline(cfg, frontend=PointWorldFrontend(gt))
    # frames 3.. cannot be matched to 0..2 (other descriptors): lost, then a new start at frame 4
    seq = [frame(0), frame(1), frame(2)] + [frame(i, descriptor_set=1) for i in (3, 4, 5, 6)]
    out = run(vo, seq)
    st = [e.status for e in out]
    assert st[:3] == [TrackingStatus.INITIALIZING, TrackingStatus.TRACKING, TrackingStatus.TRACKING]
    assert st[3] == st[4] == TrackingStatus.LOST and out[3].quality == 0.0
    for e in out[3:5]:
        np.testing.assert_array_equal(e.T_world_cam, out[2].T_world_cam)
    assert not out[3].is_keyframe and out[4].is_keyframe  # re-initialised on the second lost frame
    assert st[5] == st[6] == TrackingStatus.TRACKING
    # the trajectory continues with the previous step length (one gt step = 1 unit), first from the
    # constant-speed assumption, then from the structure of the re-initialised pair
    for i in (5, 6):
        step = np.linalg.norm(out[i].T_world_cam[:3, 3] - out[i - 1].T_world_cam[:3, 3])
        assert step == pytest.approx(1.0, rel=0.05)


def _occluded_drive(rejoin_frames):
    """A drive (0.5 per frame) whose frames 10-17 show something else that moves on its own (another descriptor set,
    seen from a sideways-sliding pose: a person walking past the camera); frames 18-29 see the road again.
    Returns (estimates, truth of the 30 frames)."""
    gt = driving_poses(30, step=0.5)
    occluder = [gt[9] @ se3(np.eye(3), [0.6 * (k + 1), 0.0, 0.0]) for k in range(8)]
    cfg = VOConfig()
    cfg.backend.threaded = False
    cfg.pipeline.rejoin_frames = rejoin_frames
    cfg.matching.ratio = 0.8  # the occluder's descriptors: no chance matches with the road's
    vo = VOPipeline(cfg, frontend=PointWorldFrontend(list(gt) + occluder))
    seq = [frame(i) for i in range(10)] + [frame(30 + k, stamp=10 + k, descriptor_set=255) for k in range(8)]
    seq += [frame(i) for i in range(18, 30)]
    out = run(vo, seq)
    vo.close()
    return out, gt


def test_after_an_occluder_that_moved_the_tracker_rejoins_the_keyframe_before_it():
    """Frames 10-17 are lost to an occluder with its own motion; after ``max_lost_frames`` the tracker restarts on
    it and follows the occluder. When the road comes back, the keyframe before the loss is seen again: the tracker
    goes back to it (the restart's keyframes are dropped), and the frames after are posed in ``map`` as if the
    occluded frames had been dropped. ``odom`` does not jump: it holds across the rejoin and map -> odom takes the
    error of the occluder's chain. Without the rejoin (``rejoin_frames`` 0) the road's frames stay lost against the
    occluder's keyframes, restart again from the occluder's pose, and carry its error on."""
    errors = {}
    for rejoin in (30, 0):
        out, gt = _occluded_drive(rejoin)
        assert all(e.status == TrackingStatus.TRACKING for e in out[1:10])
        assert out[10].status == TrackingStatus.LOST and any(e.is_keyframe for e in out[11:18])  # restarted on it
        scale = 2.0  # the first pair defines the unit: a gt step (0.5) is 1
        errors[rejoin] = [float(np.linalg.norm(out[i].T_world_cam[:3, 3] - scale * gt[i][:3, 3]))
                          for i in range(18, 30)]
        if rejoin:
            assert out[18].status == TrackingStatus.TRACKING
            odom = [e.T_odom_cam for e in out]
            np.testing.assert_allclose(odom[18], odom[17], atol=1e-9)  # held across the rejoin
            for i in range(19, 30):  # then the road's steps again
                step = np.linalg.norm(odom[i][:3, 3] - odom[i - 1][:3, 3])
                assert step == pytest.approx(1.0, rel=0.05)
            for i in range(18, 30):  # in map: where the road is, and odom + map -> odom agree with it
                assert rotation_angle_deg(out[i].T_world_cam[:3, :3].T @ gt[i][:3, :3]) < 0.1
                np.testing.assert_allclose(out[i].T_world_odom @ odom[i], out[i].T_world_cam, atol=1e-9)
    assert max(errors[30]) < 0.3  # 1 % of the 29 units driven (9 of them across the gap)
    assert min(errors[0]) > 1.0  # the occluder's chain: its 4.8-unit slide, or more


CAM_HALF = Camera.from_intrinsics(250.0, 250.0, 160.0, 120.0, 320, 240)


class ResizingPointWorldFrontend(PointWorldFrontend):
    """The point world seen by a camera that can switch to half resolution (a 240x320 image: CAM_HALF)."""

    def detect(self, image):
        feats = super().detect(image)  # (it reads the pose and descriptor set from the first two pixels)
        if image.shape[0] == 240:  # the same points, as pixels of the half-size image
            feats = Features(((feats.keypoints + 0.5) / 2 - 0.5).astype(np.float32), feats.descriptors, feats.scores)
        return feats


def half_frame(i):
    image = np.full((240, 320), i, np.uint8)
    image[0, 1] = 0
    return Frame(image=image, camera=CAM_HALF, stamp=float(i), index=i)


@pytest.mark.parametrize("window", [0, None])
def test_a_camera_that_changes_resolution_restarts_tracking_from_the_last_pose(window):
    """A driver switching the stream to half resolution mid-run (new CameraInfo, new image size): the reference
    keyframe's keypoints are pixels of the old image, so the frame cannot be matched against it. The pipeline holds
    that frame at the last pose, restarts from it keeping the scale, and tracks on; before, it matched the two
    pixel frames and bent the trajectory. Bounds on the published odometry (``default_config``)."""
    gt = driving_poses(12)
    cfg = default_config(window)
    vo = VOPipeline(cfg, frontend=ResizingPointWorldFrontend(gt))
    out = run(vo, [frame(i) for i in range(6)] + [half_frame(i) for i in range(6, 12)])
    assert all(e.status == TrackingStatus.TRACKING for e in out[1:6])
    assert out[6].status == TrackingStatus.LOST and out[6].is_keyframe
    np.testing.assert_allclose(out[6].T_odom_cam, out[5].T_odom_cam, atol=1e-9)
    assert all(e.status == TrackingStatus.TRACKING for e in out[7:])
    for i in range(8, 12):  # the previous step length (one gt step = 1 unit) and the true turn since frame 7
        step = np.linalg.norm(out[i].T_odom_cam[:3, 3] - out[i - 1].T_odom_cam[:3, 3])
        assert step == pytest.approx(1.0, rel=0.05)
        R_est = out[7].T_odom_cam[:3, :3].T @ out[i].T_odom_cam[:3, :3]
        assert rotation_angle_deg(R_est.T @ (gt[7][:3, :3].T @ gt[i][:3, :3])) < 0.2
    # after the switch the trajectory is the true one, short of the held frame's motion (1 unit, 1 degree)
    T7 = np.linalg.inv(out[7].T_odom_cam)
    est = np.array([(T7 @ out[i].T_odom_cam)[:3, 3] for i in range(7, 12)])
    true = np.array([(np.linalg.inv(gt[7]) @ gt[i])[:3, 3] for i in range(7, 12)]) / 0.5
    assert np.max(np.linalg.norm(est - true, axis=1)) < 0.1
    vo.close()


def test_the_same_camera_is_recognised_across_copies():
    from dataclasses import replace

    from kp2d_ros.pipeline import _same_camera

    assert _same_camera(CAM, replace(CAM, K=CAM.K.copy(), dist=CAM.dist.copy()))
    assert _same_camera(None, CAM)
    assert not _same_camera(CAM, CAM_HALF)
    K = CAM.K.copy()
    K[0, 0] *= 1.01
    assert not _same_camera(CAM, replace(CAM, K=K))  # recalibrated or zoomed: other pixels for the same points


def _street_with_a_blur_burst(tmp_path, blur_ratio: float, sigma: float = 3.0, black: bool = False):
    """The synthetic street (30 frames, 0.2 m/frame), frames 15-19 blurred as by a bump (``black``: black, as by a
    covered lens); the default config without the backend's window (the gate is the front end's). Returns the
    estimates and the Sim(3) ATE."""
    from dataclasses import replace

    from kp2d_ros.data import open_sequence
    from kp2d_ros.data.synthetic import write_synthetic_sequence

    folder = tmp_path / "street"
    if not folder.exists():
        write_synthetic_sequence(folder, n_frames=30, speed=0.2)
    seq = open_sequence(folder)
    cfg = default_config(0)
    cfg.pipeline.blur_ratio = blur_ratio
    vo = VOPipeline(cfg)
    out = []
    for i, f in enumerate(seq):
        if 15 <= i < 20:
            f = replace(f, image=np.zeros_like(f.image) if black else cv2.GaussianBlur(f.image, (0, 0), sigma))
        out.append(vo.process(f))
    vo.close()
    est = np.array([e.T_odom_cam[:3, 3] for e in out])
    gt = np.array([T[:3, 3] for T in seq.ground_truth.poses])
    return out, float(np.sqrt(np.mean(np.sum((sim3_align(est, gt) - gt) ** 2, axis=1))))


def _burst_rotation_errors_deg(tmp_path, out) -> np.ndarray:
    """(5,) rotation error of the blurred frames 15-19 relative to frame 14, against the street's truth."""
    from kp2d_ros.data import open_sequence

    gt = open_sequence(tmp_path / "street").ground_truth.poses
    rel = lambda a, b: a[:3, :3].T @ b[:3, :3]  # noqa: E731
    return np.array([rotation_angle_deg(rel(out[14].T_odom_cam, out[i].T_odom_cam).T @ rel(gt[14], gt[i]))
                     for i in range(15, 20)])


@pytest.mark.parametrize("sigma", [3.0, 6.0])
def test_a_blur_burst_does_not_become_keyframes(tmp_path, sigma):
    """Five blurred frames (a bump, a fast pan): before, each became a keyframe (sigma 3 px) or the lost tracker
    restarted from one (6 px), and the sharp frames after them were posed through the blurred chain or lost
    (the 80-frame street at 3 px: ATE 0.046 m against 0.011 m clean). The blurred frames are posed against the last
    sharp keyframe (at the last velocity when their few inliers cannot hold a translation) and never become
    keyframes; the first sharp frame after them matches that keyframe again. Measured at 3 px: 0.0048 m against
    0.0098 m with the gate off on the EPYC (bf16 network), 0.0049 against 0.0043 m on an AVX-512 Xeon without bf16
    (fp32; clean 0.0019 m): on 30 frames a mild blur's chain is not always worse, so at 3 px the bound is the clean
    run's scale (< 0.01 m), and the gate-off comparison is at 6 px, where the chain breaks. At 6 px the blurred
    frames match the sharp keyframe too little to be posed; they continue at the last pair's velocity, in
    translation and rotation: 0.0034 m (0.0037 m on the Xeon), rotation since frame 14 within 0.21 deg (the gate off: 0.301 m; stop 27, lost frames held and the few inliers' rotations: 0.131 m, 3.3 deg)."""
    out, ate = _street_with_a_blur_burst(tmp_path, blur_ratio=0.4, sigma=sigma)
    assert all(e.is_keyframe for e in out[1:15]) and not any(e.is_keyframe for e in out[15:20])
    assert out[20].is_keyframe and out[20].num_inliers > 200
    assert all(e.status == TrackingStatus.TRACKING for e in out[20:])
    if sigma > 5:  # too blurred to be posed against the sharp keyframe: the last velocity, never a restart
        assert all(e.status == TrackingStatus.TRACKING and e.motion_model == "constant_velocity"
                   and e.num_inliers == 0 for e in out[15:20])
        assert _burst_rotation_errors_deg(tmp_path, out).max() < 0.5
        assert ate < 0.02
    else:
        assert all(e.status == TrackingStatus.TRACKING and e.motion_model == "measured" for e in out[15:20])
    out_off, ate_off = _street_with_a_blur_burst(tmp_path, blur_ratio=0.0, sigma=sigma)
    assert any(e.is_keyframe for e in out_off[15:20])  # the gate off: the old behaviour
    if sigma > 5:
        assert ate < 0.2 * ate_off, (ate, ate_off)  # the gate off: 0.26-0.30 m
    else:
        assert ate < 0.01, (ate, ate_off)


@pytest.mark.parametrize("gain", [50, 180])
def test_an_auto_exposure_step_is_neither_blur_nor_a_broken_track(tmp_path, gain):
    """From frame 15 on the street's images are at half (or 1.8x, saturating) their brightness, as when a robot's
    auto-exposure steps driving into shade or light. Before, half the brightness quartered the Laplacian's variance
    and the blur gate held 10 frames back from becoming keyframes, and the LK refinement lost ~90 % of its tracks
    across the step (KITTI 07 with ``--simulate gain=80:159:50``: 0.055 -> 0.120 m, SIFT 0.069 -> 0.228 m). The
    sharpness is now relative to the brightness and the refinement matches the two images' brightness first."""
    from kp2d_ros.data import open_sequence
    from kp2d_ros.data.faults import simulate
    from kp2d_ros.data.synthetic import write_synthetic_sequence

    folder = tmp_path / "street"
    write_synthetic_sequence(folder, n_frames=30, speed=0.2)
    seq = simulate(open_sequence(folder), f"gain=15:29:{gain}")
    vo = VOPipeline(default_config(0))
    refined, orig = [], vo._refine

    def refine(feats, matches, frame, camera):  # the share of matches whose refined position moved from the seed
        out = orig(feats, matches, frame, camera)
        refined.append(float(np.mean(np.any(out.keypoints[matches.idx1] != feats.keypoints[matches.idx1], axis=1))))
        return out

    vo._refine = refine
    out, blurred = [], []
    for f in seq:
        out.append(vo.process(f))
        blurred.append(vo.blurred)
    vo.close()
    assert not any(blurred) and all(e.is_keyframe for e in out[1:])
    assert refined[14] > 0.7, refined  # the pair across the step (frame 15 against keyframe 14)
    est = np.array([e.T_odom_cam[:3, 3] for e in out])
    gt = np.array([T[:3, 3] for T in seq.ground_truth.poses])
    assert float(np.sqrt(np.mean(np.sum((sim3_align(est, gt) - gt) ** 2, axis=1)))) < 0.01


def test_a_dim_scene_is_brightened_for_the_network_only():
    """KeyPointNet's keypoints are not brightness-invariant: the street's frame at 45 % of its brightness (mean 61)
    has its keypoints 0.18 px (median) from those of the frame at mean 76, 2.8 % of them gone. While the running
    mean brightness is below ``frontend.min_brightness`` (76) each image reaches the frontend brightened to it, and
    the keypoints come back (0.04 px, 0.5 % gone); a normal image, and every image with the setting at 0, reaches it
    as it is. The gain follows a brightness change over ~10 frames, so
    consecutive images get nearly the same one."""
    from kp2d_ros.data.synthetic import synthetic_sequence
    from kp2d_ros.frontend_common import exposed

    img = synthetic_sequence(n_frames=2).frame(0).image
    vo = VOPipeline(VOConfig())
    assert vo._brightened(img) is img  # the street: mean 137
    dim = exposed(img, 0.45)
    seen = VOPipeline(VOConfig())._brightened(dim)
    assert abs(float(seen.mean()) - 76.0) < 1.5
    off = VOConfig()
    off.frontend.min_brightness = 0.0
    assert VOPipeline(off)._brightened(dim) is dim

    def shift(a, b):  # median distance from each of a's keypoints to b's nearest, and the share within 2 px
        d = np.linalg.norm(a.keypoints[:, None] - b.keypoints[None], axis=2).min(1)
        return float(np.median(d[d < 2])), float(np.mean(d < 2))

    fe = vo.frontend
    bright = fe.detect(exposed(img, 76.0 / float(img.mean())))
    as_is, brightened = shift(bright, fe.detect(dim)), shift(bright, fe.detect(seen))
    assert brightened[0] < 0.6 * as_is[0] and brightened[1] > as_is[1], (as_is, brightened)

    covered = VOPipeline(VOConfig())  # 30 black frames (a covered lens) leave the running mean where it was
    black = np.zeros_like(img)
    assert all(covered._brightened(x) is x for x in [img] + [black] * 30 + [img])

    step = VOPipeline(VOConfig())  # a step from the street's brightness to 45 %: the gain ramps up
    gains = [float(step._brightened(x).mean()) / float(x.mean()) for x in [img] * 3 + [dim] * 60]
    assert gains[:3] == [1.0] * 3 and all(b >= a - 1e-3 for a, b in zip(gains[3:], gains[4:]))
    assert np.max(np.diff(gains)) < 0.05 and abs(gains[-1] * 0.45 * float(img.mean()) - 76.0) < 1.0


def test_black_frames_are_lost_not_blurred(tmp_path):
    """Black frames have no sharpness at all, but nothing to continue from either: they are lost and held (a
    covered lens), not placed at the last velocity as blurred frames are; the frame after them tracks again."""
    out, _ = _street_with_a_blur_burst(tmp_path, blur_ratio=0.4, black=True)
    assert all(e.status == TrackingStatus.LOST and not e.is_keyframe for e in out[15:20])
    assert out[20].status == TrackingStatus.TRACKING and out[20].num_inliers > 200  # against keyframe 14


def test_a_black_frame_is_never_a_keyframe():
    """KeyPointNet returned its top-k keypoints on a black image too: a covered lens at start-up or for longer than
    ``max_lost_frames`` became the keyframe (the start, or a restart), and the real frames after it were lost
    against it. It now finds none there, as SIFT does, and the first keyframe needs ``geometry.min_inliers``
    features: tracking starts at the first frame with content."""
    from kp2d_ros.data.synthetic import synthetic_sequence

    seq = list(synthetic_sequence(n_frames=12))
    cfg = default_config(0)
    vo = VOPipeline(cfg)
    black = np.zeros_like(seq[0].image)
    from dataclasses import replace

    frames = [replace(seq[0], image=black), replace(seq[1], image=black)] + seq[2:8] \
        + [replace(f, image=black) for f in seq[8:12]]
    out = [vo.process(f) for f in frames]
    vo.close()
    assert [e.status for e in out[:3]] == [TrackingStatus.INITIALIZING] * 3
    assert not out[0].is_keyframe and not out[1].is_keyframe and out[2].is_keyframe
    assert all(e.status == TrackingStatus.TRACKING for e in out[3:8])
    assert all(e.status == TrackingStatus.LOST and not e.is_keyframe for e in out[8:12])  # max_lost_frames 3: no restart


def test_frames_without_features_are_lost_then_relocalised():
    gt = driving_poses(6)
    cfg = VOConfig()
    cfg.pipeline.max_lost_frames = 1
    vo = VOPipeline(cfg, frontend=PointWorldFrontend(gt))
    out = run(vo, [frame(0), frame(1), frame(2), frame(255), frame(255), frame(5)])
    assert [e.status for e in out[3:5]] == [TrackingStatus.LOST] * 2
    assert not out[3].is_keyframe and not out[4].is_keyframe  # an empty frame never becomes the reference
    assert out[5].status == TrackingStatus.TRACKING  # matched to frame 2 again
    assert np.linalg.norm(out[5].T_world_cam[:3, 3] - out[2].T_world_cam[:3, 3]) == pytest.approx(3.0, rel=0.05)


def test_pure_rotation_keeps_position():
    poses = [se3(cv2.Rodrigues(np.radians([0.0, 2.0 * i, 0.0]))[0], np.zeros(3)) for i in range(6)]
    vo = VOPipeline(VOConfig(), frontend=PointWorldFrontend(poses))
    out = run(vo, [frame(i) for i in range(6)])
    for e, T in zip(out, poses):
        assert e.status in (TrackingStatus.INITIALIZING, TrackingStatus.TRACKING)
        np.testing.assert_allclose(e.T_world_cam[:3, 3], 0.0, atol=1e-12)
        assert rotation_angle_deg(e.T_world_cam[:3, :3].T @ T[:3, :3]) < 0.1


def test_a_rotation_keyframe_at_the_last_velocity_reports_the_old_references_keypoints():
    """A 6 deg turn 0.1 s after a pair that moved (too soon for the prior's translation to show): the frame
    continues at the last velocity and, past ``rotation_keyframe_deg``, becomes the reference. Its estimate's
    ``ref_keypoints`` were read from its own features with the old reference's match indices: wrong points, or an
    IndexError when the new frame had fewer features (a SIFT replay of a turn in place crashed so)."""
    rot = cv2.Rodrigues(np.radians([0.0, 6.0, 0.0]))[0]
    poses = [np.eye(4), se3(np.eye(3), np.array([0.0, 0.0, 3.0])), se3(rot, np.array([0.0, 0.0, 3.0]))]
    vo = VOPipeline(VOConfig(), frontend=PointWorldFrontend(poses))
    out = run(vo, [frame(0, stamp=0.0), frame(1, stamp=1.0), frame(2, stamp=1.1)])
    e = out[2]
    assert e.motion_model == "constant_velocity" and e.is_keyframe and e.num_inliers > 100
    H = CAM.K @ rot.T @ np.linalg.inv(CAM.K)  # frame 1 -> frame 2 pixels (camera rotated by rot in the world)
    ref = np.c_[e.ref_keypoints, np.ones(len(e.ref_keypoints))] @ H.T
    err = np.linalg.norm(ref[:, :2] / ref[:, 2:] - e.cur_keypoints, axis=1)
    assert np.median(err) < 1.0, np.median(err)


class _UnmodelledDistortion(PointWorldFrontend):
    """The point world seen through a radial distortion (``k1`` in normalised coordinates) that the pipeline does
    not model: what a wrong self-calibrated k1 leaves in the keypoints."""

    def __init__(self, poses, k1, **kw):
        super().__init__(poses, **kw)
        self.k1 = k1

    def detect(self, image):
        f = super().detect(image)
        n = (f.keypoints - CAM.K[:2, 2]) / CAM.K[0, 0]
        f.keypoints[:] = (n * (1 + self.k1 * np.sum(n * n, axis=1, keepdims=True)) * CAM.K[0, 0]
                          + CAM.K[:2, 2]).astype(np.float32)
        return f


def test_a_camera_turning_where_it_stood_does_not_start_moving_on_a_lens_error():
    """A robot drives, stops, then turns on the spot at 5 deg per frame, through a lens error of k1 = 0.08 (the
    self-calibration's spurious k1 on the pinhole street). The error leaves the turn's pairs ~0.5 px of parallax
    after the best rotation, just above ``geometry.rotation_only_parallax_px``: before, the pairs became translations
    and the camera drove 8 m off while turning. Turning on the spot, starting to move now takes twice that
    parallax. The windows measure the lens through the turn: its keyframes' observations reach the backend as
    observed, not undistorted by the front end's k1, which the window models on top (the turn's windows, once taken,
    drew the estimate from 0.080 to 0.014 and moved the standing camera 13 mm)."""
    poses = [se3(np.eye(3), np.array([0.0, 0.0, 3.0 * i])) for i in range(3)] + [se3(np.eye(3), [0.0, 0.0, 6.0])] * 3
    poses += [se3(cv2.Rodrigues(np.radians([0.0, 5.0 * j, 0.0]))[0], [0.0, 0.0, 6.0]) for j in range(1, 13)]
    cfg = VOConfig()
    cfg.backend.threaded = False
    vo = VOPipeline(cfg, frontend=_UnmodelledDistortion(poses, 0.08, noise_px=0.1))
    out = run(vo, [frame(i, stamp=float(i)) for i in range(len(poses))])
    vo.close()
    assert [e.status for e in out[3:6]] == [TrackingStatus.STATIC] * 3
    standing = out[5].T_world_cam[:3, 3]
    drift = [float(np.linalg.norm(e.T_world_cam[:3, 3] - standing)) for e in out[6:]]
    assert max(drift) < 0.01, drift  # the windows move the standing keyframe by ~5 mm; before, 8 m
    assert vo.k1 == pytest.approx(0.08, abs=0.005)
    assert all(e.status == TrackingStatus.TRACKING and e.motion_model == "rotation_only" for e in out[6:])


@pytest.mark.parametrize("self_calibration", [False, True])
def test_a_frame_undistorts_its_keypoints_once_per_lens(monkeypatch, self_calibration):
    """Through a lens with distortion each point is undistorted iteratively, and a tracked frame needs its matches'
    points several times (the essential matrix, the pose's inliers, the patch warps, the backend's observations).
    Each frame's keypoints are undistorted once per lens: the front end's and, while the windows calibrate k1 on
    top of it, the lens as observed; the reference's carry over from the frame it was. Before, a frame undistorted
    its matches ~5 times."""
    from dataclasses import replace

    import kp2d_ros.pipeline as pipeline_module

    k1 = 0.05
    gt = driving_poses(14, step=0.5, yaw_deg=1.0)
    lens = replace(CAM, dist=np.array([k1, 0.0, 0.0, 0.0, 0.0]))
    calls = []
    original = pipeline_module.normalize_points

    def counted(pts, camera):
        if camera.has_distortion:
            calls.append(len(pts))
        return original(pts, camera)

    monkeypatch.setattr(pipeline_module, "normalize_points", counted)
    cfg = default_config()
    cfg.backend.self_calibration = self_calibration
    vo = VOPipeline(cfg, frontend=_UnmodelledDistortion(gt, k1, noise_px=0.1))
    per_frame = []
    for i in range(len(gt)):
        n = len(calls)
        e = vo.process(Frame(image=frame(i).image, camera=lens, stamp=0.1 * i, index=i))
        per_frame.append((e.status, len(calls) - n))
    vo.close()
    tracked = [c for s, c in per_frame[2:] if s == TrackingStatus.TRACKING]  # after the first pair
    assert len(tracked) >= 11
    # a window's new k1 changes the front end's lens, and the reference is undistorted through it once more
    assert max(tracked) <= (3 if self_calibration else 1), per_frame


class _DropHalf(MatchScorer):
    def __init__(self):
        self.calls = 0

    def score(self, kp0, kp1, distances, image_size):
        self.calls += 1
        p = np.zeros(len(distances), np.float32)
        p[::2] = 0.9
        return p


def test_scorer_filters_matches():
    gt = driving_poses(3)
    cfg = VOConfig()
    cfg.matching.io_threshold = 0.5
    scorer = _DropHalf()
    plain = run(VOPipeline(VOConfig(), frontend=PointWorldFrontend(gt)), [frame(i) for i in range(3)])
    scored = run(VOPipeline(cfg, frontend=PointWorldFrontend(gt), scorer=scorer), [frame(i) for i in range(3)])
    assert scorer.calls == 2
    assert scored[2].num_matches == (plain[2].num_matches + 1) // 2
    assert scored[2].status == TrackingStatus.TRACKING


def test_reset_restarts_at_identity():
    gt = driving_poses(3)
    vo = VOPipeline(VOConfig(), frontend=PointWorldFrontend(gt))
    run(vo, [frame(0), frame(1)])
    vo.reset()
    e = vo.process(frame(2))
    assert e.status == TrackingStatus.INITIALIZING
    np.testing.assert_array_equal(e.T_world_cam, np.eye(4))


# --------------------------------------------------------------------------------------------
# Real sequences
# --------------------------------------------------------------------------------------------
def _open(path, max_frames=None):
    from kp2d_ros.data import open_sequence

    return open_sequence(path, max_frames=max_frames)


@pytest.mark.parametrize("frontend", ["sift", "orb"])
def test_euroc_static_camera_does_not_move(frontend):
    seq = _open(data_path("vo", "euroc_v101_static_19f"))
    assert seq.camera.has_distortion
    cfg = VOConfig()
    cfg.frontend.type = frontend
    vo = VOPipeline(cfg)
    out = [vo.process(f) for f in seq]
    assert len(out) == 19
    for e in out[1:]:
        assert e.status in (TrackingStatus.STATIC, TrackingStatus.TRACKING)
        np.testing.assert_allclose(e.T_world_cam[:3, 3], 0.0, atol=1e-9)
        assert rotation_angle_deg(e.T_world_cam[:3, :3]) < 0.5


def kitti_run(frontend, n):
    seq = _open(data_path("vo", "kitti07_f0000-0159"), max_frames=n)
    from kp2d_ros.config import load_config

    cfg = load_config(REPO / "config" / "vo_classical.yaml") if frontend != "kp2d" else VOConfig()
    cfg.frontend.type = frontend
    vo = VOPipeline(cfg)
    est = np.array([vo.process(f).T_world_cam for f in seq])
    gt = np.loadtxt(data_path("vo", "kitti07_f0000-0159", "poses_07.txt"))[:n].reshape(-1, 3, 4)
    return est, gt


def kitti_errors(est, gt):
    """ATE RMSE after Sim(3) alignment (m) and per-frame RPE rotation RMSE (degrees)."""
    aligned = sim3_align(est[:, :3, 3], gt[:, :, 3])
    ate = np.sqrt(np.mean(np.sum((aligned - gt[:, :, 3]) ** 2, axis=1)))
    rel = [rotation_angle_deg((est[i, :3, :3].T @ est[i + 1, :3, :3]).T @ (gt[i, :, :3].T @ gt[i + 1, :, :3]))
           for i in range(len(est) - 1)]
    return ate, float(np.sqrt(np.mean(np.square(rel)))), float(np.max(rel))


def test_kitti_short_run_sift():
    est, gt = kitti_run("sift", 30)
    ate, rpe_rot, rpe_max = kitti_errors(est, gt)
    assert rpe_rot < 0.1 and rpe_max < 0.3
    # accumulated rotation (GT turns by ~17 degrees in these frames)
    assert rotation_angle_deg(est[-1, :3, :3].T @ gt[-1, :, :3]) < 1.0
    assert ate < 0.3


@pytest.mark.slow
@pytest.mark.parametrize("frontend, max_ate, max_rpe", [("sift", 0.6, 0.06), ("orb", 1.4, 0.15)])
def test_kitti_160_frames_accuracy(frontend, max_ate, max_rpe):
    est, gt = kitti_run(frontend, 160)
    ate, rpe_rot, _ = kitti_errors(est, gt)
    assert ate <= max_ate and rpe_rot <= max_rpe


@pytest.mark.slow
def test_kitti_160_frames_learned_frontend_with_epipolar_io_net():
    """Issue targets for the shipped kp2d config: ATE <= 0.45 m, RPE rot <= 0.04 deg/frame (measured 0.341 m /
    0.038 deg; the RPE bound allows the +-0.005 deg that small setting changes move it by)."""
    from pathlib import Path

    from kp2d_ros.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "config" / "vo_kp2d.yaml", cls=VOConfig)
    cfg.frontend.model_path = str(root / "models" / "keypoint_net.pt")
    cfg.matching.io_net_path = str(root / "models" / "io_net_epipolar.pt")
    seq = _open(data_path("vo", "kitti07_f0000-0159"), max_frames=160)
    vo = VOPipeline(cfg)
    est = np.array([vo.process(f).T_world_cam for f in seq])
    gt = np.loadtxt(data_path("vo", "kitti07_f0000-0159", "poses_07.txt"))[:160].reshape(-1, 3, 4)
    ate, rpe_rot, _ = kitti_errors(est, gt)
    assert ate <= 0.45 and rpe_rot <= 0.045


def test_tum_rgb_with_distortion_tracks_rotation():
    """RGB frames and plumb_bob distortion (TUM fr2/desk): every frame tracked, rotation follows GT."""
    seq = _open(data_path("vo", "tum_fr2_desk_20f"))
    assert seq.camera.has_distortion and seq.ground_truth is not None and len(seq.ground_truth) == len(seq)
    vo = VOPipeline(default_config())  # each window waited for: with the worker the result varied with the timing
    # (stop 27's machine: 2.24 degrees in one run of four against the bound of 2)
    out = [vo.process(f) for f in seq]
    assert all(e.status == TrackingStatus.TRACKING for e in out[1:])
    G = np.linalg.inv(seq.ground_truth.poses[0]) @ seq.ground_truth.poses
    assert rotation_angle_deg(G[-1, :3, :3]) > 10.0  # the camera really turns
    for e, T in zip(out, G):
        assert rotation_angle_deg(e.T_world_cam[:3, :3].T @ T[:3, :3]) < 2.0


def test_pipelined_run_equals_sequential_calls():
    from kp2d_ros.pipeline import run_pipelined

    gt = driving_poses(12, step=1.0, speed_change=0.4)
    frames = [frame(i) for i in range(12)]
    seq = run(VOPipeline(VOConfig(), frontend=PointWorldFrontend(gt)), frames)
    par = list(run_pipelined(VOPipeline(VOConfig(), frontend=PointWorldFrontend(gt)), iter(frames)))
    assert len(par) == len(seq)
    for a, b in zip(seq, par):
        assert a.status == b.status and a.num_inliers == b.num_inliers
        np.testing.assert_array_equal(a.T_world_cam, b.T_world_cam)
        assert set(b.timings_ms) == TIMING_KEYS and b.timings_ms["network"] > 0
    assert list(run_pipelined(VOPipeline(VOConfig(), frontend=PointWorldFrontend(gt)), [])) == []


def test_thread_settings_are_applied(monkeypatch):
    import kp2d_ros.runtime as runtime

    calls = []
    monkeypatch.setattr(runtime, "set_cpu_threads", lambda n, torch_threads=None: calls.append((n, torch_threads)))
    # (runtime.apply_thread_settings looks set_cpu_threads up at call time)
    cfg = VOConfig()
    cfg.pipeline.torch_threads, cfg.pipeline.library_threads = 0, 0
    VOPipeline(cfg, frontend=PointWorldFrontend(driving_poses(2)))
    assert calls == []  # 0 and 0: leave the libraries alone
    VOPipeline(VOConfig(), frontend=PointWorldFrontend(driving_poses(2)))
    assert calls == [(1, 0)]  # the default: OpenCV and BLAS on one thread, torch at its own default
    calls.clear()
    cfg.pipeline.torch_threads, cfg.pipeline.library_threads = 2, 1
    VOPipeline(cfg, frontend=PointWorldFrontend(driving_poses(2)))
    assert calls == [(1, 2)]


# --------------------------------------------------------------------------------------------
# Robustness: stops, dropped frames, slow motion (issue 11)
# --------------------------------------------------------------------------------------------
def front_end_config() -> VOConfig:
    """The default configuration without the backend's window: the front end's own steps."""
    cfg = VOConfig()
    cfg.backend.window = 0
    return cfg


def default_config(window: int | None = None, fixed: int | None = None, threaded: bool = False) -> VOConfig:
    """The default configuration (the backend's window on), with each window waited for (deterministic), as
    ``kp2d replay`` runs it. The tests below bound the published odometry (``T_odom_cam``): it continues without
    the windows' corrections, which go into map -> odom (REP 105). Measured on the map pose instead, a window that
    has just moved the keyframe shows as a jump between two frames (slow motion: 0.47-2.74x the true step).
    ``window`` / ``fixed`` (None: the defaults) set ``backend.window`` / ``backend.fixed_keyframes``; ``threaded``:
    the windows on the worker instead."""
    cfg = VOConfig()
    cfg.backend.threaded = threaded
    if window is not None:
        cfg.backend.window = window
    if fixed is not None:
        cfg.backend.fixed_keyframes = fixed
    return cfg


ROBUSTNESS_CONFIGS = {"window_0": front_end_config, "default": default_config, "late": default_config}


def robustness_pipeline(config: str, frontend) -> VOPipeline:
    """The pipeline of a robustness case: ``window_0``, ``default`` (each window waited for), or ``late``: the
    default window with each result taken 2 frames after its keyframe, as the node's worker on a busy CPU
    (:class:`kp2d_ros.backend.LaggedWorker`, reproducible)."""
    cfg = ROBUSTNESS_CONFIGS[config]()
    worker = LaggedWorker(cfg.backend, lag=2) if config == "late" else None
    return VOPipeline(cfg, frontend=frontend, worker=worker)


def _steps(out, gt, keys):
    """Published (odometry) and true step lengths between consecutive entries of ``keys`` (indices into
    ``out``/``gt``)."""
    est = [np.linalg.norm(out[b].T_odom_cam[:3, 3] - out[a].T_odom_cam[:3, 3]) for a, b in zip(keys[:-1], keys[1:])]
    return np.array(est), np.array([np.linalg.norm(gt[b][:3, 3] - gt[a][:3, 3]) for a, b in zip(keys[:-1], keys[1:])])


@pytest.mark.parametrize("config", ["window_0", "default", "late"])
@pytest.mark.parametrize("stamps", ["time", "none"])
@pytest.mark.parametrize("n_static", [1, 3, 6, 12])
def test_stop_inside_motion_keeps_every_step(n_static, stamps, config):
    """Frame 3 repeated ``n_static`` times (a stop: time passes, the images do not change), with real stamps
    or none at all (every stamp 0: frame counts). Static frames hold the pose; every moving step keeps its
    true length (the old frame-count prior made the first step after 3 / 6 / 12 static frames 1.33 / 2.33 /
    4.33 times too long): within 2 % without the window, 3 % with it (its refined depths carry the scale of the
    next steps: measured 2.0-2.5 %)."""
    gt = driving_poses(8, step=0.5, speed_change=0.2)
    ids = [0, 1, 2, 3] + [3] * n_static + [4, 5, 6, 7]
    frames = [frame(i, stamp=0.1 * k if stamps == "time" else 0.0, shot=k) for k, i in enumerate(ids)]  # a real camera
    out = run(robustness_pipeline(config, PointWorldFrontend(gt)), frames)
    moving = [0, 1, 2, 3 + n_static] + list(range(4 + n_static, len(ids)))  # last frame of the stop -> frame 4
    est, true = _steps(out, [gt[i] for i in ids], moving)
    np.testing.assert_allclose(est / est[0], true / true[0], rtol=0.02 if config == "window_0" else 0.03)
    stop = out[4:4 + n_static]
    assert all(e.status == TrackingStatus.STATIC and e.motion_model == "static" for e in stop)
    for e in stop:  # held (a late window landing meanwhile only moves map -> odom: rounding)
        np.testing.assert_allclose(e.T_odom_cam, out[3].T_odom_cam, rtol=0, atol=1e-12)
    assert all(e.status == TrackingStatus.TRACKING for e in out[4 + n_static:])


@pytest.mark.parametrize("max_repeated", [3, 0])
def test_a_repeated_image_is_skipped_as_a_stale_frame(max_repeated):
    """Frames 4 and 5 show frame 3's image again, byte for byte, with their own stamps, while the camera moves on (a
    stalled camera, a driver sending its last image twice). Their pose is held (STATIC, ``repeated``) and the
    tracker skips them as dropped frames: every later pose equals the run without them, and the next frame's
    interval spans theirs. ``pipeline.max_repeated_frames: 0`` takes them for a stop, as before (its moving time
    restarts there, so the next pair's prior expects one interval of motion for three; the step came out at ~1/3 of
    its length)."""
    gt = driving_poses(10, step=0.5, speed_change=0.2)
    cfg = default_config()
    cfg.pipeline.max_repeated_frames = max_repeated
    stale = [frame(i, stamp=0.1 * i) for i in range(4)]
    stale += [Frame(image=stale[3].image.copy(), camera=CAM, stamp=0.1 * i, index=i) for i in (4, 5)]
    stale += [frame(i, stamp=0.1 * i) for i in range(6, 10)]
    out = run(VOPipeline(cfg, frontend=PointWorldFrontend(gt)), stale)
    dropped = run(VOPipeline(cfg, frontend=PointWorldFrontend(gt)), [frame(i, stamp=0.1 * i) for i in (0, 1, 2, 3, 6, 7, 8, 9)])
    for e in out[4:6]:
        assert e.status == TrackingStatus.STATIC
        np.testing.assert_array_equal(e.T_odom_cam, out[3].T_odom_cam)
    if max_repeated:
        assert [e.motion_model for e in out[4:6]] == ["repeated"] * 2
        assert out[4].timings_ms["network"] == 0.0 and out[4].num_inliers == 0
        assert np.trace(out[5].covariance[:3, :3]) > np.trace(out[3].covariance[:3, :3])  # it may have moved on
        for a, b in zip(out[6:], dropped[4:]):
            np.testing.assert_allclose(a.T_odom_cam, b.T_odom_cam, rtol=0, atol=1e-9)
        assert out[6].interval_s == pytest.approx(0.3) and dropped[4].interval_s == pytest.approx(0.3)
        est, true = _steps(out, gt, [3, 6, 7, 8, 9])
        np.testing.assert_allclose(est / est[0], true / true[0], rtol=0.02)
    else:  # (the step after them comes out ~1/3 of its length there: the prior's one interval)
        assert [e.motion_model for e in out[4:6]] == ["static"] * 2
        assert out[6].interval_s == pytest.approx(0.1)


def test_only_the_first_repeats_in_a_row_are_skipped():
    """Six frames with frame 3's image (a noiseless simulator's camera standing still): the first
    ``max_repeated_frames`` (3) are skipped, the rest are taken as they come, a stop; a new image ends the run."""
    gt = driving_poses(6, step=0.5)
    frames = [frame(i, stamp=0.1 * i) for i in range(4)] + [frame(3, stamp=0.1 * k) for k in range(4, 10)]
    frames += [frame(4, stamp=1.0), frame(3, stamp=1.1)]
    out = run(VOPipeline(default_config(), frontend=PointWorldFrontend(gt)), frames)
    assert [e.motion_model for e in out[4:10]] == ["repeated"] * 3 + ["static"] * 3
    assert all(e.status == TrackingStatus.STATIC for e in out[4:10])
    assert out[10].status == TrackingStatus.TRACKING and out[11].motion_model != "repeated"


def test_dropped_frames_leave_a_longer_interval():
    """Frames 6..9 dropped (their stamps missing too): the step 5 -> 10 is 5 true steps long. The old
    frame-count prior clamped it to 3x the previous step (0.58x the truth)."""
    gt = driving_poses(14, step=0.5)
    ids = [0, 1, 2, 3, 4, 5, 10, 11, 12, 13]
    out = run(VOPipeline(default_config(), frontend=PointWorldFrontend(gt)), [frame(i, stamp=0.1 * i) for i in ids])
    assert all(e.status == TrackingStatus.TRACKING for e in out[1:])
    est, true = _steps(out, [gt[i] for i in ids], list(range(len(ids))))
    np.testing.assert_allclose(est / est[0], true / true[0], rtol=0.05)


@pytest.mark.parametrize("seed, step, yaw", [(0, 0.15, 0.5), (1, 0.15, 0.5), (2, 0.2, 1.0)])
def test_across_a_gap_the_refined_points_measure_the_scale_by_the_windows_baselines(monkeypatch, seed, step, yaw):
    """A slow drive (steps of 0.15-0.2 units among points up to 80 away) and 8 dropped frames: the pair across the
    gap is measured on the reference's refined points, which the window saw over several keyframes' baselines
    (``LocalMap.inverse_depth_sigma``), and comes out within 8 % of the step before it (measured: 0.96-1.04). Judged
    by the pair sigma that made them, too few pass the triangulation test and the step takes the speed prior's
    length (as on KITTI 07 with 9 m dropped, where 9 of 192 refined points voted and the pair came out 14 %
    short)."""
    gt = driving_poses(22, step=step, yaw_deg=yaw)
    ids = list(range(12)) + [20, 21]

    def gap_step(vo):
        out = run(vo, [frame(i, stamp=0.1 * i) for i in ids])
        est = [np.linalg.norm(out[b].T_odom_cam[:3, 3] - out[a].T_odom_cam[:3, 3]) for a, b in ((10, 11), (11, 12))]
        true = [np.linalg.norm(gt[ids[b]][:3, 3] - gt[ids[a]][:3, 3]) for a, b in ((10, 11), (11, 12))]
        return out[12].motion_model, (est[1] / est[0]) / (true[1] / true[0])

    model, ratio = gap_step(VOPipeline(default_config(), frontend=PointWorldFrontend(gt, noise_px=0.5, seed=seed)))
    assert model == "measured" and abs(ratio - 1) < 0.08
    monkeypatch.setattr("kp2d_ros.backend.LocalMap.inverse_depth_sigma", lambda self, lids, k: np.full(len(lids), np.inf))
    model, _ = gap_step(VOPipeline(default_config(), frontend=PointWorldFrontend(gt, noise_px=0.5, seed=seed)))
    assert model == "constant_speed"


class AliasingFrontend(PointWorldFrontend):
    """The point world, except that in frame ``frame_id`` the points with world x > 0 (half the scene) are
    detected where the camera pose ``alias_id`` sees them: matched to the wrong copy of a repeated structure
    (a facade's windows after dropped frames). On a straight path the wrong copy lies on the true epipolar
    line, so the two-view geometry accepts it; only its depth is wrong."""

    def __init__(self, poses, frame_id, alias_id, **kw):
        super().__init__(poses, **kw)
        self.frame_id, self.alias_id = frame_id, alias_id

    def detect(self, image):
        i = int(image[0, 0])
        if i != self.frame_id:
            return super().detect(image)
        T_true, T_alias = np.linalg.inv(self.poses[i]), np.linalg.inv(self.poses[self.alias_id])
        Xc = self.X @ T_true[:3, :3].T + T_true[:3, 3]
        Xp = np.where(self.X[:, :1] > 0, self.X @ T_alias[:3, :3].T + T_alias[:3, 3], Xc)
        p = Xp @ CAM.K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            px = p[:, :2] / p[:, 2:]
        vis = (Xc[:, 2] > 1.0) & (Xp[:, 2] > 1.0) & (px[:, 0] >= 0) & (px[:, 0] < 640) & (px[:, 1] >= 0) \
            & (px[:, 1] < 480)
        kp = px[vis] + self.rng.normal(0, self.noise_px, (int(vis.sum()), 2))
        return Features(kp.astype(np.float32), self.desc[vis], np.ones(int(vis.sum()), np.float32))


@pytest.mark.parametrize("config", ["window_0", "default", "late"])
def test_dropped_frames_with_repeated_structure_keep_the_scale(config):
    """Frames 6..9 dropped and, across the gap, half the scene matched to the wrong copy (as the learned
    frontend did on a facade in KITTI 07 with frames 61-64 dropped: ATE 6.1 m instead of 0.5 m). The wrong
    half votes for a scale 5x too small; the median of all votes fell between the two clusters (old code:
    the step over the gap 0.22x the truth, and the keyframe's wrong depths spoilt the next steps). The speed
    prior picks the right cluster, and the wrong points carry no depth into the next pair. Within 5 % without the
    window; with it the published steps stay within 10 % (measured 8.9 %; on the map pose, where the windows'
    corrections land, 87 %)."""
    gt = driving_poses(14, step=0.5, yaw_deg=0.0)
    ids = [0, 1, 2, 3, 4, 5, 10, 11, 12, 13]
    vo = robustness_pipeline(config, AliasingFrontend(gt, frame_id=10, alias_id=6))
    out = run(vo, [frame(i, stamp=0.1 * i) for i in ids])
    assert all(e.status == TrackingStatus.TRACKING for e in out[1:])
    assert [e.motion_model for e in out[2:]] == ["measured"] * 8
    # from frame 2 on (straight ahead, frame 1 shows too little parallax to fix the unit)
    est, true = _steps(out, [gt[i] for i in ids], list(range(2, len(ids))))
    np.testing.assert_allclose(est / est[0], true / true[0], rtol=0.05 if config == "window_0" else 0.10)


def test_the_scale_outliers_do_not_extend_the_backends_tracks():
    """Across the same gap, the matches whose depth contradicts the scale (the scale vote's outliers: here aliased
    points, matched to the wrong copy) must not become observations of the landmarks they seem to continue: the
    window would fit them as if they were right (with a prior on the window's lens estimate, tried in stop 26, the
    steps after the gap came out 15 % short with them in, 10 % with them out)."""
    gt = driving_poses(14, step=0.5, yaw_deg=0.0)
    ids = [0, 1, 2, 3, 4, 5, 10, 11, 12, 13]
    fe = AliasingFrontend(gt, frame_id=10, alias_id=6)
    vo = robustness_pipeline("default", fe)
    flagged, extended = {}, {}  # frame -> world points: the scale's outliers / continuing a landmark in its keyframe
    scale, map_keyframe = vo._scale, vo._map_keyframe

    def world(descriptors):
        return set(np.argmax(descriptors @ fe.desc.T, axis=1).tolist())

    def scale_spy(geom, *args, **kwargs):
        measured = scale(geom, *args, **kwargs)
        if measured is not None:
            idx0 = args[2].idx0[geom.inliers]  # (rho, sigma, matches, ...): the reference's features
            flagged[current] = world(vo.ref.features.descriptors[idx0[measured.outliers]])
        return measured

    def map_spy(ref, kf, tracks, *args):
        if tracks is not None and ref is not None and ref.id >= 0:
            idx0, idx1 = tracks[0], tracks[1]
            extended[current] = world(kf.features.descriptors[idx1[ref.landmarks[idx0] >= 0]])
        map_keyframe(ref, kf, tracks, *args)

    vo._scale, vo._map_keyframe = scale_spy, map_spy
    for current in ids:
        vo.process(frame(current, stamp=0.1 * current))
    assert len(flagged[10]) >= 20 and all(fe.X[j, 0] > 0 for j in flagged[10])  # aliased points, all of them
    assert len(extended[10]) > 100 and not flagged[10] & extended[10]


class NextFrameWorker:
    """A backend worker that optimises each window at once, in the caller's thread, and hands the result to the next
    :meth:`poll` (however often the pipeline polls). Records the newest keyframe of every window it was given."""

    def __init__(self, cfg: VOConfig):
        self.cfg, self.newest, self._done = cfg, [], None

    def submit(self, problem, focal_px):
        self.newest.append(int(problem.keyframe_ids[-1]))
        self._done = bundle_adjust(problem, self.cfg.backend, focal_px)

    def ready(self):
        return self._done is None

    def poll(self):
        done, self._done = self._done, None
        return done

    def wait(self, timeout=None):
        return self.poll()

    def close(self):
        pass


def test_with_a_worker_the_window_goes_after_the_pose():
    """With a worker (the node's threaded backend) the new keyframe's landmarks and window are not part of its pose:
    :meth:`VOPipeline.process` returns without them and :meth:`VOPipeline.finish` (the node calls it after
    publishing) does them; a caller that never calls it gets the same trajectory and windows, done at the start of
    the next frame. A window taken there moves the next frames: the refined depths carry the scale."""
    gt = driving_poses(12, step=0.5, yaw_deg=2.0)
    runs = {}
    for finish in (True, False):
        cfg = default_config()
        worker = NextFrameWorker(cfg)
        vo = VOPipeline(cfg, frontend=PointWorldFrontend(gt), worker=worker)
        out = []
        for i in range(12):
            out.append(vo.process(frame(i, stamp=0.1 * i)))
            if finish:
                assert out[-1].keyframe_id not in worker.newest  # its window was not handed over before the pose
                vo.finish()
                if i >= 2 and out[-1].is_keyframe:
                    assert worker.newest[-1] == out[-1].keyframe_id  # ... and is after finish()
        vo.finish()  # the last frame's, for the run that did not
        runs[finish] = out, worker.newest, vo.backend_revision
    (with_finish, windows, revision), (without, windows_without, revision_without) = runs[True], runs[False]
    assert revision >= 8 and windows == windows_without and revision_without == revision
    for a, b in zip(with_finish, without):
        np.testing.assert_array_equal(a.T_world_cam, b.T_world_cam)
        np.testing.assert_array_equal(a.T_odom_cam, b.T_odom_cam)


class RecordingLaggedWorker(LaggedWorker):
    """:class:`LaggedWorker` that records, at each snapshot it is given, the map revision at which its newest
    keyframe was added (``added_at_revision``, filled by the test) against the snapshot's revision (the same: no
    window landed between)."""

    def __init__(self, cfg, lag):
        super().__init__(cfg, lag)
        self.added_at_revision, self.snapshots = {}, []

    def submit(self, problem, focal_px):
        newest = int(problem.keyframe_ids[-1])
        self.snapshots.append((newest, self.added_at_revision[newest], problem.revision))
        super().submit(problem, focal_px)


def test_a_window_is_taken_at_a_new_keyframe_never_right_after_another_lands():
    """With a worker (the node), a keyframe whose window finds the worker busy gets none: the next keyframe's window
    covers it. Before, it was snapshotted as soon as the running window landed, with its newest keyframe just moved
    by that window's similarity guess (``LocalMap.apply``'s follow): windows landing one frame late back to back
    (the node's worker when the CPU keeps up: a GPU, or one torch thread on 2 cores) took KITTI 07's published
    odometry from 0.061 to 0.66 m, the steps growing 1.4x through the first turn (docs/results.md, stop 31). Every window's
    newest keyframe is now one no window has moved since it was added, while windows land 1 keyframe late (a
    slower worker, 2+ late, still sends the waiting window at once)."""
    gt = driving_poses(16, step=0.5, yaw_deg=2.0)
    cfg = default_config()
    worker = RecordingLaggedWorker(cfg.backend, lag=2)
    vo = VOPipeline(cfg, frontend=PointWorldFrontend(gt), worker=worker)
    add = vo.map.add_keyframe

    def add_keyframe(T, **kwargs):
        k = add(T, **kwargs)
        worker.added_at_revision[k] = vo.map.revision
        return k

    vo.map.add_keyframe = add_keyframe
    out = run(vo, [frame(i, stamp=0.1 * i) for i in range(16)])
    assert sum(e.is_keyframe for e in out) >= 12
    assert len(worker.snapshots) >= 4 and vo.backend_revision >= 3
    for newest, added, snapshot in worker.snapshots:
        assert added == snapshot, (newest, added, snapshot)  # no window landed between the keyframe and its snapshot
    est, true = _steps(out, gt, list(range(2, 16)))
    np.testing.assert_allclose(est / est[0], true / true[0], rtol=0.03)


def test_the_window_forgets_its_oldest_keyframe_after_the_pose_goes_out():
    """With a worker (the node), what a new keyframe pushes out of the window (its oldest keyframe, the landmarks
    only that one saw: 0.6 ms on KITTI 07) is dropped in ``finish()``, after the pose is published, not before it;
    the deterministic mode drops it within the frame."""
    cfg = default_config()
    window = cfg.backend.window
    n = window + 5
    gt = driving_poses(n, step=0.5, yaw_deg=1.0)
    vo = VOPipeline(cfg, frontend=PointWorldFrontend(gt), worker=LaggedWorker(cfg.backend, lag=2))
    det = VOPipeline(default_config(), frontend=PointWorldFrontend(gt))
    before_finish, after_finish, deterministic = [], [], []
    for i in range(n):
        vo.process(frame(i, stamp=0.1 * i))
        before_finish.append(len(vo.map.poses))
        vo.finish()
        after_finish.append(len(vo.map.poses))
        det.process(frame(i, stamp=0.1 * i))
        deterministic.append(len(det.map.poses))
    assert max(after_finish) == window and max(deterministic) == window
    assert max(before_finish) == window + 1  # the oldest still there while the pose goes out
    assert all(b - a in (0, 1) for a, b in zip(after_finish, before_finish))


class ThreadCountingFrontend(Frontend):
    """Records the CPU thread counts of torch's and OpenCV's pools while it detects (it finds nothing)."""

    def __init__(self, name):
        self.name, self.seen = name, []

    def detect(self, image):
        import torch

        self.seen.append((torch.get_num_threads(), cv2.getNumThreads()))
        return Features.empty(dim=32)


class BusyWorker(BackendWorker):
    """A threaded backend worker whose idleness the test sets (it never optimises)."""

    busy = False

    def idle(self):
        return not self.busy


@pytest.mark.parametrize("frontend", ["kp2d", "sift"])
def test_worker_core_leaves_one_thread_to_a_busy_worker(frontend):
    """``backend.worker_core``: while the worker optimises, the frontend detects on one thread fewer of its own pool
    (torch's for the learned frontend, OpenCV's for SIFT), the other pool untouched, and gets it back after; with the
    worker idle, or the option off, every thread."""
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        torch.set_num_threads(2)
        cv2.setNumThreads(2)
        fewer = (1, 2) if frontend == "kp2d" else (2, 1)
        for on in (True, False):
            cfg = VOConfig()
            cfg.pipeline.library_threads = 0  # OpenCV's pool as set above
            cfg.matching.io_net = False
            cfg.backend.worker_core = on
            counting = ThreadCountingFrontend(frontend)
            vo = VOPipeline(cfg, frontend=counting, worker=BusyWorker(cfg.backend))
            try:
                for busy in (True, False, True):
                    vo.worker.busy = busy
                    vo.detect(frame(0))
            finally:
                vo.close()
            assert counting.seen == ([fewer, (2, 2), fewer] if on else [(2, 2)] * 3), (on, counting.seen)
            assert (torch.get_num_threads(), cv2.getNumThreads()) == (2, 2)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def _slow_run(window: int | None, lag: int = 0):
    """The point world at 1/25 of its usual step, the backend's window ``window`` (None: the default; deterministic;
    with ``lag``, each window taken ``lag`` frames late). Returns (estimated step lengths in the first pair's unit,
    true step lengths), from the first positioned frame on."""
    gt = driving_poses(50, step=0.02, yaw_deg=0.04)
    cfg = default_config(window)
    worker = LaggedWorker(cfg.backend, lag) if lag else None
    out = run(VOPipeline(cfg, frontend=PointWorldFrontend(gt), worker=worker),
              [frame(i, stamp=0.1 * i) for i in range(50)])
    first = next(i for i, e in enumerate(out) if np.any(e.T_odom_cam[:3, 3]))  # the first pair fixes the unit
    assert first < 12 and all(e.status == TrackingStatus.TRACKING for e in out[first:])
    est, true = _steps(out, gt, list(range(first, 50)))
    unit = np.linalg.norm(out[first].T_odom_cam[:3, 3]) / np.linalg.norm(gt[first][:3, 3])
    return est / unit, true


@pytest.mark.parametrize("window, lag", [(0, 0), (None, 0), (None, 2)])
def test_slow_motion_gets_a_pose_every_frame(window, lag):
    """A camera moving 25x slower than the point world's usual step (under 1 px of parallax per frame):
    once moving, never STATIC, and every frame gets a pose that moves on (old code: held, then a jump of
    several steps). Without the backend and with its default window, waited for or landing 2 frames late as the
    node's (published odometry: measured 0.95-1.18x; the map pose, which takes each window's correction at once,
    0.47-2.74x)."""
    est, true = _slow_run(window=window, lag=lag)
    np.testing.assert_allclose(est, true, rtol=0.3)  # every step moves, none is held or doubled


@pytest.mark.parametrize("window", [0, None])
@pytest.mark.parametrize("first_stamp", ["its own", "another clock"])
def test_a_gap_in_slow_motion_is_timed_even_after_a_first_stamp_from_another_clock(first_stamp, window):
    """Slow motion (the speed prior sets each step) with frames 20-23 missing: the step across the gap spans 5
    intervals and is 5 true steps long. The first frame may carry another clock's stamp, as ``vo_node`` gives a
    header stamp of 0 (its own clock, years after a bag's): every later stamp was then "not after the last" and the
    prior counted frames for the rest of the run (the step across the gap 0.2x, 0.17x with the backend)."""
    gt = driving_poses(40, step=0.02, yaw_deg=0.04)
    keep = [i for i in range(40) if not 20 <= i <= 23]
    frames = [frame(i, stamp=1.8e9 if i == 0 and first_stamp == "another clock" else 0.1 * i) for i in keep]
    out = run(VOPipeline(default_config(window), frontend=PointWorldFrontend(gt)), frames)
    est, true = _steps(out, [gt[i] for i in keep], list(range(5, len(keep))))
    ratio = (est / true) / np.median(est / true)
    across = keep.index(24) - 6  # the step from frame 19 to frame 24
    assert true[across] == pytest.approx(5 * true[across - 1], rel=0.01)
    assert ratio[across] == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("stamps", ["jittered", "exact", "irregular", "jittered with drops"])
def test_the_speed_prior_counts_camera_intervals_only_when_the_stamps_are_jittered(stamps):
    """Constant speed, 0.5 m per camera frame (0.1 s). Jittered: every stamp moved by up to +-30 % of the interval
    (a driver that stamps each image when the host receives it); the stamps' ratio of this pair's time to the
    last's is then up to ~3x off, and once counting camera intervals has predicted the pairs' lengths better the
    prior counts them. With drops: 15 % of the frames dropped and +-10 % jitter; a dropped frame is an interval of
    two. Exact stamps keep the stamps' clock. Irregular: each processed frame 1-3 camera frames after the last, with
    exact stamps, as a node that keeps only the newest image processes them: the stamps stay. Checked on what the
    prior reads before each frame (``_pair_intervals``) against the true ratio of camera intervals, and on each
    frame's ``interval_s``."""
    rng = np.random.default_rng(3)
    n = 40
    steps = {"irregular": rng.integers(1, 4, n - 1), "jittered with drops": 1 + (rng.random(n - 1) < 0.15)}
    cam = np.concatenate([[0], np.cumsum(steps[stamps])]) if stamps in steps else np.arange(n)
    jitter = {"jittered": 0.03, "jittered with drops": 0.01}.get(stamps, 0.0)
    stamp = 0.1 * cam + rng.uniform(-jitter, jitter, n)
    truth = driving_poses(int(cam[-1]) + 1, step=0.5, yaw_deg=0.5)
    vo = VOPipeline(default_config(window=0), frontend=PointWorldFrontend([truth[k] for k in cam]))
    errors, by_stamps, intervals = [], [], []
    for i in range(n):
        f = frame(i, stamp=stamp[i])
        if vo.motion is not None:
            now, m = vo._next_tick(f), vo.motion
            last = cam[m.end.count - 1] - cam[m.end.count - 1 - m.span.frames]  # camera intervals (counts are 1-based)
            true = (cam[now.count - 1] - cam[vo.base.count - 1]) / last
            errors.append(abs(np.log(vo._pair_intervals(now) / true)))
            by_stamps.append(abs(np.log((stamp[i] - stamp[vo.base.count - 1]) / m.span.seconds / true)))
        intervals.append(vo.process(f).interval_s)
    assert len(errors) >= n - 3
    assert (vo.frame_clock is not None) == bool(jitter)
    assert np.mean(errors[-20:]) < 0.01, errors  # the last 20 pairs: exact (the first 10 judge the clocks)
    # the time since the last frame (vo_node's twist divides by it): the stamps', or the camera intervals' count
    # times the typical interval
    assert intervals[0] is None
    if jitter:
        assert np.mean(by_stamps[-20:]) > {"jittered": 0.15, "jittered with drops": 0.04}[stamps]  # the stamps alone
        np.testing.assert_allclose(intervals[-20:], 0.1 * np.diff(cam)[-20:], rtol=0.03)
        assert np.abs(np.diff(stamp)[-20:] / (0.1 * np.diff(cam)[-20:]) - 1).mean() > 2 * jitter
    else:
        np.testing.assert_allclose(intervals[1:], np.diff(stamp), rtol=1e-12)


def _position_sigma(e):
    return float(np.sqrt(np.trace(e.covariance[:3, :3])))


def test_covariance_grows_with_distance_never_zero():
    gt = driving_poses(12, step=0.5)
    ids = [0, 1, 2, 3, 4, 5, 5, 5, 5, 6, 7, 8, 9, 10, 11]
    out = run(VOPipeline(VOConfig(), frontend=PointWorldFrontend(gt)),
              [frame(i, stamp=0.1 * k, shot=k) for k, i in enumerate(ids)])  # a real camera: no image repeats
    for e in out:
        assert e.covariance.shape == (6, 6)
        np.testing.assert_allclose(e.covariance, e.covariance.T, atol=1e-15)
        assert np.all(np.linalg.eigvalsh(e.covariance) > 0)  # never zero, positive definite (STATIC, INITIALIZING too)
    assert out[0].status == TrackingStatus.INITIALIZING and out[6].status == TrackingStatus.STATIC
    sig = [_position_sigma(e) for e in out]
    moving = [0, 1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 14]
    assert all(sig[b] > sig[a] for a, b in zip(moving[:-1], moving[1:]))  # odometry uncertainty grows
    assert sig[-1] > 3 * sig[1]
    # standing still does not grow it like motion does: the stop's frames are as uncertain as the frame before
    assert max(sig[6:9]) < sig[5] + (sig[10] - sig[9])
    rot = [np.sqrt(np.trace(e.covariance[3:, 3:])) for e in out]
    assert rot[-1] > rot[1]


def test_covariance_larger_with_fewer_inliers():
    gt = driving_poses(8, step=0.5)
    frames = [frame(i, stamp=0.1 * i) for i in range(8)]
    many = run(VOPipeline(VOConfig(), frontend=PointWorldFrontend(gt, n_points=800)), frames)
    few = run(VOPipeline(VOConfig(), frontend=PointWorldFrontend(gt, n_points=100)), frames)
    assert few[-1].num_inliers < many[-1].num_inliers / 4
    for i in range(2, 8):
        assert _position_sigma(few[i]) > 1.5 * _position_sigma(many[i])
        assert np.trace(few[i].covariance[3:, 3:]) > np.trace(many[i].covariance[3:, 3:])


def test_lost_frames_grow_the_covariance():
    gt = driving_poses(6)
    out = run(VOPipeline(VOConfig(), frontend=PointWorldFrontend(gt)), [frame(0), frame(1), frame(2), frame(255),
                                                                         frame(255)])
    assert [e.status for e in out[3:]] == [TrackingStatus.LOST] * 2
    assert _position_sigma(out[2]) < _position_sigma(out[3]) < _position_sigma(out[4])


def _replay(seq, frontend="sift", window=None):
    """The default config (backend included, deterministic as in ``kp2d replay``) with ``frontend``."""
    from kp2d_ros.eval.replay import replay

    cfg = default_config(window)
    cfg.frontend.type = frontend
    return replay(seq, cfg, progress=False)


@pytest.mark.parametrize("fault, max_ratio", [("stop=60:10", 1.10), ("drop=61:64", 1.25)])
def test_kitti_clip_survives_a_stop_and_dropped_frames(fault, max_ratio):
    """KITTI 07 frames 30-99, SIFT: a 1 s stop at frame 60 (10 identical frames, ground truth held), or
    frames 61-64 dropped; ATE within 10% / 25% of the clean clip, or at most 2 cm more (old code: 0.043 m ->
    0.562 / 0.344 m). The 2 cm: the clean clip is 2-3 cm over 45 m, where the ratio follows the solver more than the
    fault. GTSAM: 0.032 -> 0.035 m with the drop (1.10x); Ceres (the default): 0.024 -> 0.040 m (1.70x, +1.7 cm;
    every 7-frame block's scale within 2.1% of the truth in both runs)."""
    from kp2d_ros.data.faults import simulate

    seq = _open(data_path("vo", "kitti07_f0000-0159"))
    clean = _replay(simulate(seq, "frames=30:99"))
    faulty = _replay(simulate(seq, "frames=30:99," + fault))
    assert faulty.metrics.ate.rmse <= max(max_ratio * clean.metrics.ate.rmse, clean.metrics.ate.rmse + 0.02)
    if fault.startswith("stop"):
        assert [s.value for s in faulty.statuses[31:41]] == ["static"] * 10


def test_kitti_clip_with_dropped_frames_learned_frontend():
    """The default config (KeyPointNet + LK refinement + IO-Net + the self-calibrated window), KITTI 07 frames
    30-99 with frames 61-64 dropped: ATE within 30% of the clean clip. Across the gap a facade's windows matched
    the neighbouring window, a consistent cluster of depth votes 5x off; the old median of all votes took it
    (clean 0.027 m, with the drop 3.80 m). Without the backend the stage-2 weights gave 0.030 / 0.027 m (1.1x) and
    the stage-3 weights 0.079 / 0.059 m (1.34x); with the default backend the stage-2 weights gave 0.180 /
    0.143 m (1.26x), the stage-3 weights 0.064 / 0.054 m (1.18x)."""
    from kp2d_ros.config import load_config
    from kp2d_ros.data.faults import simulate
    from kp2d_ros.eval.replay import replay

    cfg = load_config(REPO / "config" / "vo.yaml", cls=VOConfig)
    cfg.frontend.model_path = str(REPO / "models" / "keypoint_net.pt")
    cfg.matching.io_net_path = str(REPO / "models" / "io_net_epipolar.pt")
    cfg.backend.threaded = False  # deterministic, as kp2d replay
    seq = _open(data_path("vo", "kitti07_f0000-0159"))
    clean = replay(simulate(seq, "frames=30:99"), cfg, progress=False)
    faulty = replay(simulate(seq, "frames=30:99,drop=61:64"), cfg, progress=False)
    assert faulty.tracked_frames == len(faulty.statuses) - 1
    assert faulty.metrics.ate.rmse <= 1.3 * clean.metrics.ate.rmse


def test_a_burst_of_dropped_frames_in_a_curve_is_bridged_in_the_odometry():
    """The default config on the street's curve, 1.5 s of frames dropped (15 frames: a node that stalled; the
    camera turned 13.9 degrees and drove 3.2 m meanwhile): the published odometry's step across the gap has the
    true rotation, direction and length. Before (the last pair's one-interval motion as the only prior) the
    essential matrix settled in the wrong basin of the forward-motion ambiguity: 11.2 degrees and a sideways step
    (ATE 0.48 m; the backend's window had the right pose in map, but odom never jumps back); now the pose on the
    reference's refined depths is a hypothesis too (ATE 0.004 m)."""
    from kp2d_ros.data.faults import simulate
    from kp2d_ros.data.synthetic import synthetic_sequence

    seq = simulate(synthetic_sequence(63), "frames=26:62,drop=40:54")
    res, est_steps, true_steps = _replay_shipped(seq, "kp2d")
    assert res.tracked_frames == len(res.statuses) - 1
    gap = 14  # frames 39 -> 55
    Te = invert_se3(res.estimate.poses[gap - 1]) @ res.estimate.poses[gap]
    Tg = invert_se3(seq.ground_truth.poses[gap - 1]) @ seq.ground_truth.poses[gap]
    assert rotation_angle_deg(Te[:3, :3].T @ Tg[:3, :3]) < 0.2
    cos = Te[:3, 3] @ Tg[:3, 3] / (np.linalg.norm(Te[:3, 3]) * np.linalg.norm(Tg[:3, 3]))
    assert np.degrees(np.arccos(min(cos, 1.0))) < 2.0
    assert abs(est_steps[gap - 1] / true_steps[gap - 1] - 1.0) < 0.05
    assert res.metrics.ate.rmse < 0.02, res.metrics.ate.rmse


def test_slow_synthetic_street_is_as_accurate_as_the_fast_one():
    """The synthetic street at 0.2 and at 0.05 m/frame (the same path, 4x the frames), SIFT: per-frame RPE
    of the slow run within 2x of the fast one (the issue's target), every frame tracked. Scored from the first
    keyframe pair on (before it a monocular trajectory has no scale). Measured 1.6x in translation and 1.5x in
    rotation; before the direction gate (``pipeline.direction_gate_deg``) 2.4x / 2.5x (short baselines settled in
    the wrong basin of the rotation/translation ambiguity); before the time-based priors ~40x / ~6x. With the
    window: the map pose (TF map -> base, the backend's corrections taken at once). The published odometry is the
    front end's own chain (REP 105 odom), measured 5 % worse in rotation than without the window on both streets
    (0.0172 vs 0.0163 deg fast, 0.0256 vs 0.0243 deg slow: the window's k1 and depths change the front end's steps).
    With the motion-predicted patch warps of the LK refinement (``refine.affine``, default since stop 23) the map
    pose on the slow street: rotation 0.0197 deg with the window against 0.0231 without (before the warps 0.0201
    against 0.0243), translation 0.00233 against 0.00268 m. On stop 56's AMX Xeon, whose OpenCV SIFT finds other
    keypoints, the window made the slow street's map pose worse: rotation 0.0265 against 0.0231 deg (1.15x),
    translation 0.00297 against 0.00268 m (1.11x); the bound (1.2x) still catches a window that breaks slow motion."""
    from kp2d_ros.data.synthetic import synthetic_sequence
    from kp2d_ros.eval.metrics import evaluate
    from kp2d_ros.types import Trajectory

    errors = {}
    for window in (0, None):  # None: the default window
        for speed, n in ((0.2, 20), (0.05, 80)):
            seq = synthetic_sequence(n, speed=speed)
            res = _replay(seq, window=window)
            first = next(i for i, p in enumerate(res.estimate.poses) if np.any(p[:3, 3]))
            assert first <= 4 and all(s == TrackingStatus.TRACKING for s in res.statuses[first:])
            traj = res.estimate if res.in_map is None else res.in_map
            part = Trajectory(traj.stamps[first:], traj.poses[first:])
            m = evaluate(part, seq.ground_truth, correct_scale=True)
            errors[window, speed] = (m.rpe.trans_rmse_m, m.rpe.rot_rmse_deg)
    # the front end (issue 11's property, backend off)
    assert all(errors[0, 0.05][i] <= 2.0 * errors[0, 0.2][i] for i in (0, 1)), errors
    # the backend (measured with 10 keyframes, 2 held; self-calibration) helps the fast street most (its window
    # spans 4x the distance: measured rotation 0.016 -> 0.010 deg fast, 0.024 -> 0.022 deg slow); it must not make
    # the slow one much worse (1.15x at most, measured on stop 56's AMX Xeon; 0.85x on the EPYC)
    assert all(errors[None, 0.05][i] <= 1.2 * errors[0, 0.05][i] for i in (0, 1)), errors


def test_slow_turn_keeps_its_scale_with_the_default_config():
    """A slow robot (the synthetic street at 0.05 m/frame, a keyframe every second frame) through the street's turn
    (frames 100-259, 8 m) with ``config/vo.yaml`` as shipped (KeyPointNet, LK, the window): the published odometry's
    ATE stays under 4 cm and no 40-frame block's step length strays beyond 6 % of the truth. With 2 of 10 keyframes
    held (stop 24's default) each window's scale rested on a 0.1 m baseline: measured 0.095 m and 0.89x -> 1.07x
    (the whole 320 frames: 0.257 m); with the 8 of 16 held now, 0.017 m and 0.98-1.01x."""
    from kp2d_ros.config import load_config
    from kp2d_ros.data.faults import simulate
    from kp2d_ros.data.synthetic import synthetic_sequence
    from kp2d_ros.eval.replay import replay

    cfg = load_config(REPO / "config" / "vo.yaml", cls=VOConfig)
    cfg.frontend.model_path = str(REPO / "models" / "keypoint_net.pt")
    cfg.matching.io_net_path = str(REPO / "models" / "io_net_epipolar.pt")
    cfg.backend.threaded = False  # deterministic, as kp2d replay
    seq = simulate(synthetic_sequence(320, speed=0.05), "frames=100:259")
    res = replay(seq, cfg, progress=False)
    assert res.tracked_frames >= 158
    assert res.metrics.ate.rmse < 0.04, res.metrics.ate.rmse
    est = np.array([T[:3, 3] for T in res.estimate.poses])
    gt = np.array([T[:3, 3] for T in seq.ground_truth.poses])
    k = res.metrics.ate.alignment.scale
    ratios = [k * np.linalg.norm(est[b + 40] - est[b]) / np.linalg.norm(gt[b + 40] - gt[b]) for b in (8, 48, 88)]
    assert max(abs(r - 1.0) for r in ratios) < 0.06, ratios


def _two_views(T_1_0, noise_px=0.2, seed=1):
    """Pixel matches of the point world seen from the identity and from camera 1 (x1 = R x0 + t)."""
    X = PointWorldFrontend([np.eye(4)]).X
    rng = np.random.default_rng(seed)
    X1 = X @ T_1_0[:3, :3].T + T_1_0[:3, 3]
    keep = (X[:, 2] > 1.0) & (X1[:, 2] > 1.0)
    p0, p1 = (Y[keep] @ CAM.K.T for Y in (X, X1))
    p0, p1 = p0[:, :2] / p0[:, 2:], p1[:, :2] / p1[:, 2:]
    return p0 + rng.normal(0, noise_px, p0.shape), p1 + rng.normal(0, noise_px, p1.shape)


@pytest.mark.parametrize("gate", [5.0, 0.0])
def test_direction_gate_takes_the_constant_velocity_basin_only_when_the_data_allow(gate):
    """A 5 cm forward step (under a pixel of parallax): a pose in the wrong basin of the rotation/translation
    ambiguity (direction 40 deg off, the rotation compensating it) is polished back from the constant-velocity
    direction; a 1 m sideways step, 90 deg from that direction but clear in the data, is kept, and so is a 1 m
    step backwards, which the Sampson cost cannot tell from one forwards. Gate 0: off."""
    from kp2d_ros.geometry import refine_pose
    from kp2d_ros.pipeline import _Motion, _Span, _Tick
    from kp2d_ros.types import TwoViewGeometry

    cfg = VOConfig()
    cfg.pipeline.direction_gate_deg = gate
    vo = VOPipeline(cfg, frontend=PointWorldFrontend([np.eye(4)]))
    vo.motion = _Motion(0.05, _Span(0.1, 1), np.array([0.0, 0.0, 1.0]), 1.0, 0.0, _Tick(0.0, 1))
    thr = cfg.geometry.ransac_threshold_px / CAM.K[0, 0]

    def geom_from(T_true, R_start, c_start):
        p0, p1 = _two_views(T_true)
        n0, n1 = (cv2.undistortPoints(p.reshape(-1, 1, 2), CAM.K, None).reshape(-1, 2) for p in (p0, p1))
        R, t = refine_pose(R_start, -R_start @ c_start, n0, n1, thr)
        return n0, n1, TwoViewGeometry(R=R, t=t / np.linalg.norm(t), inliers=np.ones(len(p0), bool),
                                       points3d=np.zeros((0, 3)), point_match_idx=np.zeros(0, np.int64))

    def centre_angle(g, c):
        return np.degrees(np.arccos(np.clip(-(g.R.T @ g.t) @ c, -1, 1)))

    forward = se3(np.eye(3), [0.0, 0.0, -0.05])  # x1 = x0 - c: the camera moved 5 cm along its optical axis
    wrong = np.array([np.sin(np.radians(40)), 0.0, np.cos(np.radians(40))])
    n0, n1, geom = geom_from(forward, cv2.Rodrigues(np.array([0.0, np.radians(0.3), 0.0]))[0], wrong)
    assert centre_angle(geom, wrong) < 10.0  # the polish stayed in the wrong basin
    out = vo._gate_direction(geom, n0, n1, CAM)
    if gate:
        assert centre_angle(out, np.array([0.0, 0.0, 1.0])) < 2.0 and rotation_angle_deg(out.R) < 0.02
    else:
        assert out is geom

    sideways = se3(np.eye(3), [-1.0, 0.0, 0.0])
    n0, n1, geom = geom_from(sideways, np.eye(3), np.array([1.0, 0.0, 0.0]))
    assert vo._gate_direction(geom, n0, n1, CAM) is geom
    # a 1 m step backwards (a robot backing up): 180 deg from the last direction, which fits the Sampson cost as
    # well (t and -t); its points lie in front of both cameras only along its own direction, so it is kept
    backwards = se3(np.eye(3), [0.0, 0.0, 1.0])
    n0, n1, geom = geom_from(backwards, np.eye(3), np.array([0.0, 0.0, -1.0]))
    assert centre_angle(geom, np.array([0.0, 0.0, -1.0])) < 1.0
    assert vo._gate_direction(geom, n0, n1, CAM) is geom


def _robot(steps):
    """The synthetic street driven by a robot's moves (``robot_trajectory``), rendered, as a sequence."""
    from kp2d_ros.data.synthetic import robot_sequence

    return robot_sequence(steps)


def _replay_shipped(seq, frontend):
    """``kp2d replay`` of ``seq`` with the shipped config of ``frontend`` (each window waited for); (result, (N - 1,)
    estimated step lengths at the ATE alignment's scale, (N - 1,) true step lengths)."""
    from kp2d_ros.config import load_config
    from kp2d_ros.eval.replay import replay

    cfg = load_config(REPO / "config" / ("vo_classical.yaml" if frontend == "sift" else "vo.yaml"), cls=VOConfig)
    cfg.frontend.model_path = str(REPO / "models" / "keypoint_net.pt")
    cfg.matching.io_net_path = str(REPO / "models" / "io_net_epipolar.pt")
    cfg.backend.threaded = False
    res = replay(seq, cfg, progress=False)
    est = np.array([T[:3, 3] for T in res.estimate.poses])
    gt = np.array([T[:3, 3] for T in seq.ground_truth.poses])
    k = res.metrics.ate.alignment.scale
    return res, k * np.linalg.norm(np.diff(est, axis=0), axis=1), np.linalg.norm(np.diff(gt, axis=0), axis=1)


@pytest.mark.parametrize("frontend", ["sift", pytest.param("kp2d", marks=pytest.mark.slow)])
def test_a_turn_in_place_holds_the_position_and_the_scale(frontend):
    """A robot drives 2.2 m, turns 90 deg on the spot in 15 frames and drives on 2.4 m (the shipped configs, each
    window waited for). The turn must not move the camera, and the steps after it keep the scale of those before.
    With SIFT the least-squares rotation of the model selection, pulled by a few mismatches, read 0.5-1.6 px of
    parallax in the turn's pairs: they were taken as translations, the camera moved on through the turn at the last
    speed, and a frame there crashed the pipeline (an IndexError); after the fix of the crash the 90 deg turn
    (20 frames before, 15 after) came out at 0.75 m ATE against 0.006 m now."""
    res, steps_est, steps_gt = _replay_shipped(_robot([(11, 0.2, 0, 0), (15, 0, 0, 6), (12, 0.2, 0, 0)]), frontend)
    assert all(s == TrackingStatus.TRACKING for s in res.statuses[1:])
    turning = steps_gt == 0
    assert turning.sum() == 15
    assert steps_est[turning].sum() < 0.02, steps_est[turning]  # 2 cm in all while turning
    before, after = steps_est[:11] / steps_gt[:11], steps_est[26:] / steps_gt[26:]
    assert abs(np.median(after) / np.median(before) - 1.0) < 0.05, (np.median(before), np.median(after))
    assert res.metrics.ate.rmse < 0.03, res.metrics.ate.rmse


@pytest.mark.parametrize("frontend", ["sift", pytest.param("kp2d", marks=pytest.mark.slow)])
def test_a_robot_that_backs_up_is_seen_backing_up(frontend):
    """A robot drives 2.2 m, stops for 5 frames and backs up 2.8 m. The pair after the stop lies 180 deg from
    the last direction, which the Sampson cost cannot tell from it: the direction gate took the forward pose,
    and the whole reversal was estimated as driving on (SIFT: ATE 0.84 m over 5 m, every step forward). Only the
    points' depths tell the two apart; the gate now keeps a pose whose points stay in front of both cameras."""
    res, steps_est, steps_gt = _replay_shipped(_robot([(11, 0.2, 0, 0), (5, 0, 0, 0), (14, -0.2, 0, 0)]), frontend)
    assert set(res.statuses[12:17]) == {TrackingStatus.STATIC} and set(res.statuses[17:]) == {TrackingStatus.TRACKING}
    est_z = np.array([T[2, 3] for T in res.estimate.poses])
    assert est_z[-1] < 0.5 * est_z[11], est_z  # back towards the start (the truth: 2.2 m -> -0.6 m)
    moving = steps_gt > 0
    assert np.all(np.abs(steps_est[moving] / steps_gt[moving] - 1.0) < 0.1), steps_est[moving] / steps_gt[moving]
    assert steps_est[~moving].sum() < 0.01
    assert res.metrics.ate.rmse < 0.03, res.metrics.ate.rmse


@pytest.mark.parametrize("frontend", ["sift", pytest.param("kp2d", marks=pytest.mark.slow)])
def test_a_robot_pulling_away_from_standing_catches_up_at_its_first_pair(frontend):
    """A robot stands 4 frames, then speeds up by 0.025 m per frame to 0.2 m/frame and drives on (``pull_away`` of
    ``scripts/robot_moves.py``). Standing, the estimate does not move; its first 0.075 m are below what the view shows
    and may be held; the first pair that sees the translation puts the camera where it is (measured against the first
    frame, not the last one), and from there every step keeps the scale."""
    steps = [(4, 0, 0, 0)] + [(1, 0.025 * k, 0, 0) for k in range(1, 9)] + [(16, 0.2, 0, 0)]
    res, steps_est, steps_gt = _replay_shipped(_robot(steps), frontend)
    assert set(res.statuses[1:5]) == {TrackingStatus.STATIC}, res.statuses[:8]
    assert steps_est[:4].sum() < 0.005
    first = int(np.flatnonzero(steps_est > 1e-6)[0])  # the first step the estimate made
    assert first <= 7  # at the latest once the robot has moved 0.15 m
    travelled_est, travelled_gt = np.cumsum(steps_est), np.cumsum(steps_gt)
    assert abs(travelled_est[first] - travelled_gt[first]) < 0.02, (travelled_est[:first + 2], travelled_gt[:first + 2])
    after = np.arange(first + 1, len(steps_gt))
    ratio = steps_est[after] / steps_gt[after]
    assert np.all(np.abs(ratio - 1.0) < 0.05), ratio
    assert res.metrics.ate.rmse < 0.03, res.metrics.ate.rmse


@pytest.mark.slow
def test_a_patrolling_robot_turns_on_the_spot_where_the_view_back_is_the_ground_alone():
    """A robot drives 15 m up the street, turns 180 deg on the spot, drives 10 m back, turns again and drives on
    (``patrol`` of ``scripts/robot_moves.py``; the learned frontend, each window waited for). On the way back the
    view is the ground alone, and there the windows' self-calibrated k1 climbed to +0.09 on this pinhole camera,
    the windows that took it there each sure of it (standard deviations 0.002-0.007): the second turn, undistorted
    through that lens, left ~0.9 px of false parallax, passed for a drive (0.9 m and 163.5 deg instead of 180), and
    the steps after it were 10x short (a 3-lap patrol: 3.3 m ATE). A pure rotation through the configured lens is now a rotation too.
    (SIFT's windows measured no k1 on that view.)"""
    from kp2d_ros.geometry import rotation_angle_deg

    steps = [(75, 0.2, 0, 0), (30, 0, 0, 6), (50, 0.2, 0, 0), (30, 0, 0, 6), (10, 0.2, 0, 0)]
    res, steps_est, steps_gt = _replay_shipped(_robot(steps), "kp2d")
    turning = steps_gt == 0
    assert steps_est[turning].sum() < 0.05, steps_est[turning].sum()
    poses = res.estimate.poses
    for start in (75, 155):  # each turn: frames start .. start + 30
        turned = rotation_angle_deg(poses[start][:3, :3].T @ poses[start + 30][:3, :3])
        assert abs(turned - 180.0) < 2.0, (start, turned)
    ratio = steps_est / np.where(turning, 1.0, steps_gt)
    before, back, after = np.median(ratio[:75]), np.median(ratio[105:155]), np.median(ratio[185:])
    assert abs(back / before - 1.0) < 0.05 and abs(after / before - 1.0) < 0.1, (before, back, after)
    assert res.metrics.ate.rmse < 0.1, res.metrics.ate.rmse


@pytest.mark.parametrize("frontend", ["sift", pytest.param("kp2d", marks=pytest.mark.slow)])
def test_a_fast_turn_to_a_plain_wall_is_not_taken_for_blur(frontend):
    """A robot spins 90 deg on the spot at 15 deg per frame, to face the street's plain side wall, and drives on.
    The wall's Laplacian variance is 0.3x the street's, and the blur gate (``pipeline.blur_ratio``) compared each
    frame with the last keyframes: 10 frames in a row were "blurred", none became a keyframe, and the turn was lost
    (SIFT: RPE rot 13 deg/frame, ATE 0.19 m over 3.8 m). A frame is now blurred only if the points it shares with its
    reference are less sharp in it too. The learned frontend then lost it to the lens: the first, short windows'
    self-calibrated k1 (-0.086, -0.066, -0.033 on this pinhole camera, each with a standard deviation above 0.1)
    was undistorted into the turn as their median (ATE 0.27 m); a window that cannot measure k1 now holds the front
    end's and reports none (:func:`kp2d_ros.backend.bundle_adjust`)."""
    res, steps_est, steps_gt = _replay_shipped(_robot([(10, 0.2, 0, 0), (6, 0, 0, 15), (10, 0.2, 0, 0)]), frontend)
    assert all(s == TrackingStatus.TRACKING for s in res.statuses[1:])
    assert res.metrics.rpe.rot_rmse_deg < 0.1, res.metrics.rpe.rot_rmse_deg
    moving = steps_gt > 0
    assert np.all(np.abs(steps_est[moving] / steps_gt[moving] - 1.0) < 0.1), steps_est[moving] / steps_gt[moving]
    assert res.metrics.ate.rmse < 0.03, res.metrics.ate.rmse


@pytest.mark.parametrize("speed_after", [0.2, 0.1])
@pytest.mark.parametrize("frontend", ["sift", pytest.param("kp2d", marks=pytest.mark.slow)])
def test_after_a_stop_and_a_turn_on_the_spot_the_steps_keep_their_scale(frontend, speed_after):
    """A robot drives 2 m, stops, turns 60 deg on the spot and drives on. The turn's keyframes all share one centre,
    and once SIFT's window's two held keyframes (of 10) were among them it held no scale: the steps after the turn grew
    to 1.7x the truth within 6 frames (ATE 0.11 m over 4 m); the window holds a distance then
    (:func:`kp2d_ros.backend.scale_gauge`). The learned frontend's window (8 of 16 held) spans the turn: nothing seen
    after it was seen before it, so the steps after it could still scale about the turn's centre, and the windows
    shrank them to 0.91-0.94x (ATE 0.022 m). The turn's keyframes now stay on one centre in the window
    (:meth:`kp2d_ros.backend.LocalMap.add_same_centre`) and the scale is held where no landmark carries it on
    (:func:`kp2d_ros.backend.scale_breaks`). At half the speed after the turn only the points seen across it tell:
    judged by the window's baselines alone (not the smaller of those and the pairs' sigma) too few of them passed
    the triangulation test after the turn, and SIFT drove on at its old speed (steps 2x the truth; stop 53)."""
    res, steps_est, steps_gt = _replay_shipped(
        _robot([(10, 0.2, 0, 0), (7, 0, 0, 0), (12, 0, 0, 5), (10, speed_after, 0, 0)]), frontend)
    moving = steps_gt > 0
    assert np.all(np.abs(steps_est[moving] / steps_gt[moving] - 1.0) < 0.03), steps_est[moving] / steps_gt[moving]
    assert steps_est[~moving].sum() < 0.01
    assert res.metrics.ate.rmse < 0.01, res.metrics.ate.rmse


def test_the_keyframes_of_a_turn_on_the_spot_find_again_what_it_started_from():
    """A robot drives 1.6 m and turns 50 deg on the spot (SIFT, the shipped classical config). The turn's last keyframe
    must still hold depths and landmarks of the points that the turn's first keyframe saw and it still sees: found
    again where the turn's rotation puts them (``pipeline.turn_search_px``), not only what the chain of pairs kept.
    Their landmarks are the ones the window already holds, observed again, not new ones."""
    from kp2d_ros.config import load_config
    from kp2d_ros.eval.replay import replay

    seq = _robot([(8, 0.2, 0, 0), (10, 0, 0, 5)])
    kept = {}
    for radius in (0.0, 8.0):
        cfg = load_config(REPO / "config" / "vo_classical.yaml", cls=VOConfig)
        cfg.backend.threaded = False
        cfg.pipeline.turn_search_px = radius
        pipe = VOPipeline(cfg)
        replay(seq, cfg, progress=False, pipeline=pipe)
        last = pipe.ref
        assert pipe.turn_anchor is not None and pipe.turn_anchor is not last
        first_new = pipe.turn_anchor.landmarks.max() + 1  # landmarks made after the turn began
        observed = last.landmarks[last.landmarks >= 0]
        assert observed.size == 0 or observed.max() < first_new
        assert np.unique(observed).size == observed.size
        kept[radius] = (int(np.isfinite(last.inv_depth).sum()), observed.size)
    assert kept[8.0][0] >= 50 and kept[8.0][0] >= 2 * kept[0.0][0], kept
    assert kept[8.0][1] >= 50 and kept[8.0][1] >= 2 * kept[0.0][1], kept


@pytest.mark.parametrize("frontend", ["sift", pytest.param("kp2d", marks=pytest.mark.slow)])
def test_a_new_speed_after_a_turn_on_the_spot_is_measured(frontend):
    """A robot drives 2 m at 0.2 m/frame, stops, turns 60 deg on the spot (the 65 deg view sees 5 deg of what it saw)
    and drives on at half the speed. The speed after the turn can only be measured against points with depths that
    the turn still sees. The chain of pairs through the turn's 10 keyframes lost 40 % of the learned frontend's
    tracks per keyframe: 2 of the points with depths were left, the steps after the turn kept the old speed (1.5x
    the truth, ATE 0.18 m; SIFT kept 15: 0.0015 m). Each keyframe of the turn now searches for the turn's first
    keyframe's points where the rotation puts them (``pipeline.turn_search_px``)."""
    res, steps_est, steps_gt = _replay_shipped(_robot([(10, 0.2, 0, 0), (7, 0, 0, 0), (12, 0, 0, 5), (10, 0.1, 0, 0)]),
                                               frontend)
    moving = steps_gt > 0
    assert np.all(np.abs(steps_est[moving] / steps_gt[moving] - 1.0) < 0.05), steps_est[moving] / steps_gt[moving]
    assert res.metrics.ate.rmse < 0.01, res.metrics.ate.rmse


class CrossingPointWorldFrontend(PointWorldFrontend):
    """The point world with a flat textured object (``n_object`` points, its own descriptors) that crosses the view
    from right to left in frames ``first``..``last``: ``ahead`` metres in front of the camera's position at
    ``first``, ``speed`` metres sideways per frame, as a vehicle crossing in front of a robot that drives. With
    ``keep_distance`` it also moves as the camera does, ``ahead`` metres in front of it (as ``--simulate passer``'s
    panel, which slides across the image at a constant speed)."""

    def __init__(self, poses, first, last, n_object=400, ahead=12.0, speed=1.2, seed=0, keep_distance=False):
        super().__init__(poses, seed=seed)
        rng = np.random.default_rng(seed + 2)
        self.first, self.last, self.speed, self.keep_distance = first, last, speed, keep_distance
        self.obj = np.c_[rng.uniform(0.0, 6.0, n_object), rng.uniform(-2.5, 1.5, n_object), np.zeros(n_object)]
        self.obj = self.obj @ poses[first][:3, :3].T + (poses[first] @ [8.0, 0.0, ahead, 1.0])[:3]
        self.obj_desc = rng.normal(size=(n_object, 32)).astype(np.float32)
        self.obj_desc /= np.linalg.norm(self.obj_desc, axis=1, keepdims=True)

    def detect(self, image):
        feats = super().detect(image)
        i = int(image[0, 0])
        if not self.first <= i <= self.last:
            return feats
        side = self.poses[self.first][:3, 0]  # the camera's x axis at the start of the crossing
        X = self.obj - self.speed * (i - self.first) * side
        if self.keep_distance:  # it drives ahead at the camera's speed too
            X = X + self.poses[i][:3, 3] - self.poses[self.first][:3, 3]
        T_cam_world = np.linalg.inv(self.poses[i])
        Xc = X @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
        p = Xc @ CAM.K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            px = p[:, :2] / p[:, 2:]
        vis = (Xc[:, 2] > 1.0) & (px[:, 0] >= 0) & (px[:, 0] < 640) & (px[:, 1] >= 0) & (px[:, 1] < 480)
        kp = px[vis] + self.rng.normal(0, self.noise_px, (int(vis.sum()), 2))
        return Features(np.r_[feats.keypoints, kp.astype(np.float32)], np.r_[feats.descriptors, self.obj_desc[vis]],
                        np.r_[feats.scores, np.ones(int(vis.sum()), np.float32)])


@pytest.mark.parametrize("guard", [0.5, 0.0])
def test_something_crossing_the_view_while_driving_is_left_out_of_the_pose(guard):
    """A flat object crossing in front of a camera that drives: its sideways flow, read as a turn, can hold the
    essential matrix's consensus (the scene fitted by a shifted translation). ``pipeline.motion_guard_deg`` checks a
    rotation that departs from the last pair's against the pose on the window's known depths, and re-estimates on
    the matches that pose explains: the turn stays the truth's. Without the guard (0) it does not."""
    gt = driving_poses(30, step=1.0, yaw_deg=0.0)
    cfg = VOConfig()
    cfg.backend.threaded, cfg.pipeline.motion_guard_deg = False, guard
    vo = VOPipeline(cfg, frontend=CrossingPointWorldFrontend(gt, first=12, last=24))
    try:
        out = run(vo, [frame(i) for i in range(30)])
    finally:
        vo.close()
    errors = [rotation_angle_deg((np.linalg.inv(out[i].T_world_cam) @ out[i + 1].T_world_cam)[:3, :3].T
                                 @ (np.linalg.inv(gt[i]) @ gt[i + 1])[:3, :3]) for i in range(29)]
    assert max(errors[:14]) < 0.05  # before the object comes into view
    assert (max(errors) < 0.05) == (guard > 0)  # without the guard 1.5-2.5 deg off while it crosses


def _drive_past_a_filling_crossing(cfg: VOConfig, worker=None):
    """30 frames driving straight at 1 m a frame while an object that keeps its distance ahead crosses the view during
    frames 12-24 with five times the scene's points. Returns (pipeline, each pair's rotation error in degrees, the angle
    between its camera-centre step and the truth's in degrees)."""
    gt = driving_poses(30, step=1.0, yaw_deg=0.0)
    vo = VOPipeline(cfg, frontend=CrossingPointWorldFrontend(gt, first=12, last=24, n_object=1500, keep_distance=True),
                    worker=worker)
    try:
        out = run(vo, [frame(i) for i in range(30)])
    finally:
        vo.close()
    rel = [np.linalg.inv(out[i].T_world_cam) @ out[i + 1].T_world_cam for i in range(29)]
    truth = [np.linalg.inv(gt[i]) @ gt[i + 1] for i in range(29)]
    rotation = [rotation_angle_deg(e[:3, :3].T @ g[:3, :3]) for e, g in zip(rel, truth)]
    travel = [np.degrees(np.arccos(np.clip(e[:3, 3] @ g[:3, 3] / np.linalg.norm(e[:3, 3]) / np.linalg.norm(g[:3, 3]),
                                           -1.0, 1.0))) for e, g in zip(rel, truth)]  # the camera centres' steps
    return vo, rotation, travel


@pytest.mark.parametrize("direction", [45.0, 0.0])
def test_something_filling_the_view_while_driving_does_not_turn_the_travel_sideways(direction):
    """An object that keeps its distance ahead and crosses the view with five times the scene's points (the scene
    keeps 15-20 % of the matches). The essential matrix's consensus is then the object's: near points passed sideways,
    the rotation within the guard and the direction of travel 90 deg off, and the window refines the object's points
    as the scene. ``pipeline.motion_guard_direction_deg`` checks the direction of travel too, and the re-estimate
    keeps the matches the known-depth pose explains however few they are. Without the direction check (0) the
    travel turns sideways."""
    cfg = VOConfig()
    cfg.backend.threaded, cfg.pipeline.motion_guard_direction_deg = False, direction
    _, rotation, travel = _drive_past_a_filling_crossing(cfg)
    assert max(rotation[:12]) < 0.05 and max(travel[:12]) < 1.0  # before the object comes into view
    if direction > 0:
        assert max(rotation) < 0.05 and max(travel) < 1.0, (rotation, travel)
    else:
        assert max(travel) > 45.0, travel


def test_something_filling_the_view_is_caught_when_the_windows_land_late():
    """The node's timing: each window lands two frames after its keyframe, when a newer keyframe is the reference,
    so the reference's own depths are never a window's. The guard's known-depth pose then stands on the landmarks the
    earlier windows refined, through the reference's pose (``Keyframe.window_depth``); before, it had no pose to
    check against and the travel turned sideways as without the direction check."""
    cfg = VOConfig()
    cfg.backend.threaded = False
    vo, rotation, travel = _drive_past_a_filling_crossing(cfg, LaggedWorker(cfg.backend, lag=2))
    assert not vo.ref.held  # the reference is not its own window's
    assert max(rotation) < 0.05 and max(travel) < 1.0, (rotation, travel)
