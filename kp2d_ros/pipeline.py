"""Monocular visual odometry: one :meth:`VOPipeline.process` call per frame.

Each frame is matched against the reference keyframe; the essential matrix gives the rotation and
the translation direction, and the translation length comes from the points triangulated by the
previous keyframe pair (the first pair's translation has unit norm, so the whole trajectory
shares one unknown scale). World frame = first camera frame, optical convention.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

from kp2d_ros.config import VOConfig
from kp2d_ros.errors import DataError
from kp2d_ros.frontend import build_frontend, to_grey
from kp2d_ros.geometry import (bearings, compose_relative, estimate_relative_pose, focal_length, inverse_depths,
                               normalize_points, relative_scale, rotation_angle_deg, rotation_compensated_parallax,
                               scale_from_inverse_depths)
from kp2d_ros.matching import MatchScorer, filter_matches, match_features
from kp2d_ros.refine import refine_matches
from kp2d_ros.runtime import apply_thread_settings
from kp2d_ros.types import (Camera, Features, Frame, Frontend, Matches, PoseEstimate, TrackingStatus,
                            TwoViewGeometry)

STAGES = ("network", "matching", "io_net", "refine", "pose")


@dataclass
class Keyframe:
    """Reference view that new frames are matched against.

    Attributes
    ----------
    features : its N features.
    T_world_cam : (4, 4) its pose.
    inv_depth : (N,) signed inverse distance (1 / trajectory units) along each feature's ray, from
        the pair that created this keyframe; NaN where unknown. Scales the next pair.
    inv_depth_sigma : (N,) standard deviation of ``inv_depth`` per unit angular noise.
    image : (H, W) uint8 grey image, kept for sub-pixel refinement (None when ``refine.method`` is none).
    """

    features: Features
    T_world_cam: np.ndarray
    inv_depth: np.ndarray | None = None
    inv_depth_sigma: np.ndarray | None = None
    image: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.features)
        if self.inv_depth is None:
            self.inv_depth = np.full(n, np.nan)
            self.inv_depth_sigma = np.full(n, np.inf)


@contextmanager
def _timed(timings: dict[str, float], key: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] += (time.perf_counter() - t0) * 1e3


class VOPipeline:
    """Frame-to-keyframe monocular VO.

    Parameters
    ----------
    cfg : validated configuration.
    frontend : feature extractor; built from ``cfg.frontend`` when None.
    scorer : optional learned match filter (IO-Net); its probabilities replace the match scores,
        matches below ``cfg.matching.io_threshold`` are dropped and the rest ordered for PROSAC.
        Built from ``cfg.matching.io_net_path`` when None and ``cfg.matching.io_net`` is set.
    """

    def __init__(self, cfg: VOConfig, frontend: Frontend | None = None, scorer: MatchScorer | None = None):
        self.cfg = cfg
        apply_thread_settings(cfg.pipeline)
        self.frontend = frontend if frontend is not None else build_frontend(cfg.frontend)
        if scorer is None and cfg.matching.io_net:
            from kp2d_ros.networks.io_scorer import build_scorer  # torch only when IO-Net is on

            scorer = build_scorer(cfg.matching)
        self.scorer = scorer
        self.reset()

    def reset(self) -> None:
        """Forget every frame: the next one re-initialises at the identity."""
        self.ref: Keyframe | None = None
        self.last_pose = np.eye(4)
        self.last_scale = 1.0  # trajectory length of the last keyframe pair's unit translation
        self.last_gap = 1  # frames between the last two keyframes
        self.scaled = False  # True once the first pair has fixed the trajectory's scale
        self.gap = 0  # frames since the reference keyframe
        self.lost_frames = 0
        self.last_motion: tuple[np.ndarray, np.ndarray] | None = None  # previous pair's (R, unit t)
        self._grey: np.ndarray | None = None  # the frame being processed, when refinement needs it

    # ----------------------------------------------------------------------------------------
    def detect(self, frame: Frame) -> Features:
        """The frontend's features of ``frame`` (the first stage of :meth:`process`; thread-safe
        with respect to the tracking stages, so :func:`run_pipelined` overlaps it with them)."""
        return self.frontend.detect(frame.image)

    def process(self, frame: Frame, features: Features | None = None) -> PoseEstimate:
        """Pose of ``frame`` (camera-to-world) and the tracking state after it.

        Steps: detect -> match against the reference keyframe -> (learned filtering) ->
        (sub-pixel refinement) -> essential matrix and pose -> scale -> compose. ``features``: the frame's features when
        already detected (:meth:`detect`); their time is then not part of ``timings_ms``.
        """
        t_start = time.perf_counter()
        timings = {k: 0.0 for k in STAGES}
        camera = self._camera(frame)
        with _timed(timings, "network"):
            feats = features if features is not None else self.detect(frame)
        self._grey = to_grey(frame.image) if self.cfg.refine.method != "none" else None
        if self.ref is None:
            est = self._initialise(frame, feats)
        else:
            self.gap += 1
            with _timed(timings, "matching"):
                matches = match_features(self.ref.features, feats, self.cfg.matching)
            if self.scorer is not None:
                with _timed(timings, "io_net"):
                    matches = self._filter(matches, feats, camera)
            if self._grey is not None:
                with _timed(timings, "refine"):
                    feats = self._refine(feats, matches)
            with _timed(timings, "pose"):
                est = self._track(frame, camera, feats, matches)
        timings["total"] = (time.perf_counter() - t_start) * 1e3
        est.timings_ms = timings
        self.last_pose = est.T_world_cam
        return est

    # ----------------------------------------------------------------------------------------
    def _camera(self, frame: Frame) -> Camera:
        if frame.camera is not None and frame.camera.K[0, 0] > 0:
            return frame.camera
        c = self.cfg.camera
        if not c.is_set:
            raise DataError("frame has no camera intrinsics and camera.fx/fy are not configured")
        h, w = frame.image.shape[:2]
        return Camera.from_intrinsics(c.fx, c.fy, c.cx, c.cy, w, h, c.distortion, model=c.distortion_model)

    def _filter(self, matches: Matches, feats: Features, camera: Camera) -> Matches:
        kp0 = self.ref.features.keypoints[matches.idx0]
        kp1 = feats.keypoints[matches.idx1]
        probs = self.scorer.score(kp0, kp1, matches.distances, (camera.width, camera.height))
        return filter_matches(matches, probs, self.cfg.matching.io_threshold)

    def _refine(self, feats: Features, matches: Matches) -> Features:
        """``feats`` with its matched keypoints moved to their sub-pixel positions relative to the
        reference keyframe's (unmatched and unrefined ones stay where the frontend put them). When this
        frame becomes a keyframe, the next frames are refined against these positions: tracks stay
        consistent from keyframe to keyframe."""
        ref_img = self.ref.image
        if ref_img is None or ref_img.shape != self._grey.shape or len(matches) == 0:
            return feats
        r = refine_matches(ref_img, self._grey, self.ref.features.keypoints[matches.idx0],
                           feats.keypoints[matches.idx1], self.cfg.refine)
        keypoints = feats.keypoints.copy()
        keypoints[matches.idx1] = r.keypoints
        return replace(feats, keypoints=keypoints)

    def _initialise(self, frame: Frame, feats: Features) -> PoseEstimate:
        self.ref = Keyframe(features=feats, T_world_cam=self.last_pose.copy(), image=self._grey)
        self.lost_frames = 0
        self.gap = 0
        return PoseEstimate(stamp=frame.stamp, T_world_cam=self.ref.T_world_cam.copy(),
                            status=TrackingStatus.INITIALIZING, num_features=len(feats), is_keyframe=True,
                            features=feats, matched=np.zeros(len(feats), bool),
                            ref_keypoints=np.zeros((0, 2), np.float32), cur_keypoints=np.zeros((0, 2), np.float32))

    def _track(self, frame: Frame, camera: Camera, feats: Features, matches: Matches) -> PoseEstimate:
        """Steps: parallax check -> essential matrix and pose -> scale -> compose -> keyframe decision."""
        cfg, pc = self.cfg, self.cfg.pipeline
        ref = self.ref
        kp0 = ref.features.keypoints[matches.idx0]
        kp1 = feats.keypoints[matches.idx1]
        if len(matches) < cfg.geometry.min_inliers:
            return self._lost(frame, feats, matches)
        if np.median(np.linalg.norm(kp1 - kp0, axis=1)) < pc.min_parallax_px:
            return self._static(frame, feats, matches)
        prior = self.last_motion if cfg.geometry.motion_prior else None
        geom = estimate_relative_pose(kp0, kp1, camera, cfg.geometry, ordered=True, prior=prior)
        if geom is None:
            self.last_motion = None
            return self._lost(frame, feats, matches)
        self.last_motion = (geom.R, geom.t) if np.any(geom.t) else None
        self.lost_frames = 0
        if not np.any(geom.t):  # pure rotation: translation unobservable, position held
            T = compose_relative(ref.T_world_cam, geom.R, np.zeros(3))
            is_kf = rotation_angle_deg(geom.R) > pc.rotation_keyframe_deg
            if is_kf:
                self._promote(Keyframe(features=feats, T_world_cam=T), None)
            return self._estimate(frame, ref.features, feats, matches, geom, T, is_kf)

        inl = geom.inliers
        n0 = normalize_points(kp0[inl], camera)
        n1 = normalize_points(kp1[inl], camera)
        f = focal_length(camera)
        rho0, rho1, sin0, sin1 = inverse_depths(n0, n1, geom.R, geom.t)
        with np.errstate(divide="ignore"):
            sigma0, sigma1 = 1.0 / sin0, 1.0 / sin1
        parallax_px = float(np.median(rotation_compensated_parallax(n0, n1, geom.R))) * f
        is_kf = parallax_px >= pc.keyframe_parallax_px or int(inl.sum()) < pc.keyframe_min_inliers
        scale = self._scale(geom, rho0, sigma0, matches, cfg.geometry.ransac_threshold_px / f)
        if scale is None:
            if not is_kf:  # no structure to scale this frame yet: rotation only until a keyframe
                T = compose_relative(ref.T_world_cam, geom.R, np.zeros(3))
                return self._estimate(frame, ref.features, feats, matches, geom, T, False)
            # first pair: unit baseline; after a re-initialisation: constant speed
            scale = self.last_scale * self.gap / self.last_gap if self.scaled else 1.0
        T = compose_relative(ref.T_world_cam, geom.R, scale * geom.t)
        if is_kf:
            kf = Keyframe(features=feats, T_world_cam=T)
            idx1 = matches.idx1[inl]
            kf.inv_depth[idx1], kf.inv_depth_sigma[idx1] = self._fuse_depths(
                geom, n0, matches.idx0[inl], scale, rho1 / scale, sigma1 / scale, cfg.geometry.ransac_threshold_px / f)
            self._promote(kf, scale)
        return self._estimate(frame, ref.features, feats, matches, geom, T, is_kf)

    def _fuse_depths(self, geom: TwoViewGeometry, n0: np.ndarray, idx0: np.ndarray, scale: float,
                     rho: np.ndarray, sigma: np.ndarray, angular_noise: float) -> tuple[np.ndarray, np.ndarray]:
        """Inverse depths for the new keyframe: this pair's, fused with the reference's carried over.

        A point tracked over several keyframes accumulates the parallax of all of them, so the
        next scale estimate rests on better depths (less scale drift).

        Parameters
        ----------
        n0 : (P, 2) normalised reference coordinates of the inliers; idx0 : their reference feature indices.
        scale : length of this pair's unit translation; rho, sigma : (P,) this pair's inverse depths
            (trajectory units) along the new view's rays.

        Returns
        -------
        rho, sigma : (P,) fused values.
        """
        if not self.cfg.pipeline.fuse_depths:
            return rho, sigma
        rho_ref, sig_ref = self.ref.inv_depth[idx0], self.ref.inv_depth_sigma[idx0]
        known = np.isfinite(rho_ref) & np.isfinite(sig_ref)
        if not np.any(known):
            return rho, sigma
        # Transfer (bearing, inverse depth) into the new view: X_new ~ R b + rho t_world.
        b = bearings(n0[known]) @ geom.R.T
        t_w = scale * geom.t
        d = b + rho_ref[known, None] * t_w[None, :]
        nd = np.linalg.norm(d, axis=1)
        rho_tr = rho_ref[known] / nd
        jac = 1.0 / nd - rho_ref[known] * (d @ t_w) / nd ** 3
        sig_tr = sig_ref[known] * np.abs(jac)
        r_new, s_new = rho[known], sigma[known]
        var_tr, var_new = sig_tr ** 2, s_new ** 2
        consistent = (r_new - rho_tr) ** 2 <= 9.0 * angular_noise ** 2 * (var_tr + var_new)
        fused = (rho_tr / var_tr + r_new / var_new) / (1.0 / var_tr + 1.0 / var_new)
        rho, sigma = rho.copy(), sigma.copy()
        k = np.flatnonzero(known)[consistent]
        rho[k] = fused[consistent]
        sigma[k] = np.sqrt(1.0 / (1.0 / var_tr[consistent] + 1.0 / var_new[consistent]))
        return rho, sigma

    def _promote(self, kf: Keyframe, scale: float | None) -> None:
        """Make ``kf`` the reference; ``scale``: trajectory length of the pair's unit translation."""
        if scale is not None:
            self.last_scale, self.last_gap = scale, max(self.gap, 1)
            self.scaled = True
        if kf.image is None:
            kf.image = self._grey
        self.ref = kf
        self.gap = 0

    def _scale(self, geom: TwoViewGeometry, rho: np.ndarray, sigma: np.ndarray, matches: Matches,
               angular_noise: float) -> float | None:
        """Trajectory length of this pair's unit translation, from the structure shared with the reference.

        ``rho``/``sigma``: inverse depths (unit baseline) of the inlier matches along the
        reference-view rays and their standard deviations per unit angular noise;
        ``angular_noise``: expected ray noise (radians), the scale of the robust loss.
        Returns None when the reference has too little known structure.
        """
        pc = self.cfg.pipeline
        idx0 = matches.idx0[geom.inliers]
        rho_ref, sig_ref = self.ref.inv_depth[idx0], self.ref.inv_depth_sigma[idx0]
        known = np.isfinite(rho_ref)
        if known.sum() < pc.min_scale_points:
            return None
        # expected from constant speed; the estimate is clamped around it
        expected = self.last_scale * self.gap / self.last_gap
        if pc.scale_method == "inverse_depth":
            s = scale_from_inverse_depths(rho_ref[known], sig_ref[known], rho[known], sigma[known],
                                          init=expected, noise=angular_noise)
        else:  # median distance ratio of points seen under a large enough angle in both pairs
            min_angle = np.radians(pc.min_triangulation_deg)
            good = known & (rho_ref > min_angle * sig_ref) & (rho > min_angle * sigma)
            s = relative_scale(1.0 / rho_ref[good, None], 1.0 / rho[good, None], pc.min_scale_points)
        if s is None:
            s = expected
        return float(np.clip(s, expected / pc.max_scale_change, expected * pc.max_scale_change))

    def _static(self, frame: Frame, feats: Features, matches: Matches) -> PoseEstimate:
        """Too little parallax: hold the reference pose, keep the reference keyframe."""
        self.lost_frames = 0
        matched = np.zeros(len(feats), bool)
        matched[matches.idx1] = True
        return PoseEstimate(stamp=frame.stamp, T_world_cam=self.ref.T_world_cam.copy(),
                            status=TrackingStatus.STATIC, num_features=len(feats), num_matches=len(matches),
                            num_inliers=0, is_keyframe=False, features=feats, matched=matched,
                            ref_keypoints=self.ref.features.keypoints[matches.idx0],
                            cur_keypoints=feats.keypoints[matches.idx1],
                            quality=self._quality(len(matches), len(matches)))

    def _lost(self, frame: Frame, feats: Features, matches: Matches) -> PoseEstimate:
        """No valid pose: hold it; after ``max_lost_frames`` restart from this frame (when it has enough
        features), keeping the scale."""
        self.lost_frames += 1
        is_kf = False
        if self.lost_frames >= self.cfg.pipeline.max_lost_frames and len(feats) >= self.cfg.geometry.min_inliers:
            self._promote(Keyframe(features=feats, T_world_cam=self.last_pose.copy()), None)
            self.lost_frames = 0
            is_kf = True
        return PoseEstimate(stamp=frame.stamp, T_world_cam=self.last_pose.copy(), status=TrackingStatus.LOST,
                            num_features=len(feats), num_matches=len(matches), num_inliers=0, is_keyframe=is_kf,
                            features=feats, matched=np.zeros(len(feats), bool),
                            ref_keypoints=np.zeros((0, 2), np.float32), cur_keypoints=np.zeros((0, 2), np.float32),
                            quality=0.0)

    def _estimate(self, frame: Frame, ref_features: Features, feats: Features, matches: Matches,
                  geom: TwoViewGeometry, T_world_cam: np.ndarray, is_keyframe: bool) -> PoseEstimate:
        inl = geom.inliers
        matched = np.zeros(len(feats), bool)
        matched[matches.idx1[inl]] = True
        n_inl = int(inl.sum())
        return PoseEstimate(stamp=frame.stamp, T_world_cam=T_world_cam.copy(), status=TrackingStatus.TRACKING,
                            num_features=len(feats), num_matches=len(matches), num_inliers=n_inl,
                            is_keyframe=is_keyframe, features=feats, matched=matched,
                            ref_keypoints=ref_features.keypoints[matches.idx0[inl]],
                            cur_keypoints=feats.keypoints[matches.idx1[inl]],
                            quality=self._quality(n_inl, len(matches)))

    def _quality(self, n_inliers: int, n_matches: int) -> float:
        """Inlier ratio times a count term saturating at 10x the minimum inlier count."""
        if n_matches == 0:
            return 0.0
        ratio = n_inliers / n_matches
        count = min(1.0, n_inliers / (10.0 * self.cfg.geometry.min_inliers))
        return float(ratio * count)


def run_pipelined(pipeline: VOPipeline, frames) -> Iterator[PoseEstimate]:
    """:meth:`VOPipeline.process` over ``frames`` with detection one frame ahead on a worker thread.

    While frame i is matched and its pose estimated, frame i + 1 goes through the network, so on a
    multi-core CPU (or with the network on a GPU) the throughput approaches one frame per the
    slower of the two halves instead of their sum. Results are identical to calling ``process``
    in order. Each estimate's ``timings_ms["network"]`` is the detection time of that frame
    (measured on the worker); ``timings_ms["total"]`` is the tracking half only plus that.

    Yields
    ------
    PoseEstimate per frame, in order.
    """
    from concurrent.futures import ThreadPoolExecutor

    def detect(frame):
        t0 = time.perf_counter()
        feats = pipeline.detect(frame)
        return feats, (time.perf_counter() - t0) * 1e3

    it = iter(frames)
    with ThreadPoolExecutor(1, thread_name_prefix="vo_detect") as pool:
        frame = next(it, None)
        pending = pool.submit(detect, frame) if frame is not None else None
        while frame is not None:
            feats, net_ms = pending.result()
            nxt = next(it, None)
            pending = pool.submit(detect, nxt) if nxt is not None else None
            est = pipeline.process(frame, feats)
            est.timings_ms["network"] = net_ms
            est.timings_ms["total"] += net_ms
            yield est
            frame = nxt
