"""Typed data passed between the stages of the pipeline (no ROS, no torch)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


# ROS CameraInfo distortion models this code undistorts, and the coefficient counts each accepts:
# plumb_bob and rational_polynomial are OpenCV's radial-tangential family (cv2.undistortPoints picks
# the terms from the count: k1 k2 p1 p2 [k3 [k4 k5 k6 [s1..s4 [tx ty]]]]); equidistant is OpenCV's
# fisheye model (cv2.fisheye, k1..k4).
DISTORTION_MODELS: dict[str, tuple[int, ...]] = {
    "plumb_bob": (4, 5, 8, 12, 14),
    "rational_polynomial": (4, 5, 8, 12, 14),
    "equidistant": (4,),
}


@dataclass
class Camera:
    """Pinhole camera with a ROS/OpenCV distortion model.

    Attributes
    ----------
    K : (3, 3) float64 intrinsic matrix.
    dist : (N,) float64 distortion coefficients, N allowed by ``DISTORTION_MODELS[model]``; zeros
        for rectified images.
    width, height : image size in pixels.
    model : ``plumb_bob`` | ``rational_polynomial`` (cv2.undistortPoints) | ``equidistant``
        (cv2.fisheye, never a pinhole even with zero coefficients).
    """

    K: np.ndarray
    dist: np.ndarray
    width: int
    height: int
    model: str = "plumb_bob"

    @classmethod
    def from_intrinsics(cls, fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                        dist=None, model: str = "plumb_bob") -> "Camera":
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        d = np.zeros(4 if model == "equidistant" else 5) if dist is None else \
            np.asarray(dist, dtype=np.float64).ravel()
        return cls(K=K, dist=d, width=int(width), height=int(height), model=model)

    @property
    def has_distortion(self) -> bool:
        return self.model == "equidistant" or bool(np.any(self.dist != 0))

    def scaled_to(self, width: int, height: int) -> "Camera":
        """The same camera for the image resized to ``width x height`` (pixel-centre convention:
        ``c' = (c + 0.5) * s - 0.5``, ``f' = f * s``; the distortion acts on normalised coordinates
        and stays as it is). Returns ``self`` when the size is unchanged."""
        if (self.width, self.height) == (width, height):
            return self
        s = np.array([width / self.width, height / self.height])
        K = self.K.copy()
        K[:2, :2] *= s[:, None]
        K[:2, 2] = (K[:2, 2] + 0.5) * s - 0.5
        return Camera(K=K, dist=self.dist, width=int(width), height=int(height), model=self.model)


@dataclass
class Frame:
    """One camera image.

    Attributes
    ----------
    image : (H, W) uint8 grey or (H, W, 3) uint8 RGB.
    camera : intrinsics of this image.
    stamp : time in seconds.
    index : running frame number (from the reader).
    """

    image: np.ndarray
    camera: Camera
    stamp: float
    index: int = 0


@dataclass
class Features:
    """Keypoints of one image, in input-image pixel coordinates (x right, y down, 0-based centres).

    Attributes
    ----------
    keypoints : (N, 2) float32 pixel coordinates (x, y).
    descriptors : (N, D) float32 (L2-normalised for learned/SIFT) or (N, D/8) uint8 for binary.
    scores : (N,) float32 detection scores (higher is better).
    binary : True when descriptors are packed bits (Hamming distance).
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    scores: np.ndarray
    binary: bool = False

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @classmethod
    def empty(cls, dim: int = 256, binary: bool = False) -> "Features":
        dt = np.uint8 if binary else np.float32
        return cls(np.zeros((0, 2), np.float32), np.zeros((0, dim), dt), np.zeros((0,), np.float32), binary)


@dataclass
class Matches:
    """Correspondences between a previous (0) and a current (1) feature set.

    Attributes
    ----------
    idx0, idx1 : (M,) int64 indices into the two feature sets.
    distances : (M,) float32 descriptor distances.
    scores : (M,) float32 match quality in [0, 1] (IO-Net inlier probability, or 1 - normalised
        distance without IO-Net); higher is better, used to order a guided sampler.
    """

    idx0: np.ndarray
    idx1: np.ndarray
    distances: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.idx0.shape[0])

    def subset(self, mask: np.ndarray) -> "Matches":
        return Matches(self.idx0[mask], self.idx1[mask], self.distances[mask], self.scores[mask])


@dataclass
class TwoViewGeometry:
    """Relative pose between two views: x1 = R x0 + t (camera 0 -> camera 1 coordinates).

    Attributes
    ----------
    R : (3, 3) rotation, t : (3,) unit-norm translation direction.
    inliers : (M,) bool mask over the matches given.
    points3d : (P, 3) triangulated inlier points in camera-0 coordinates (unit baseline).
    point_match_idx : (P,) index into the matches of each triangulated point.
    """

    R: np.ndarray
    t: np.ndarray
    inliers: np.ndarray
    points3d: np.ndarray
    point_match_idx: np.ndarray


class TrackingStatus(str, enum.Enum):
    INITIALIZING = "initializing"  # first frame, no pose yet
    TRACKING = "tracking"  # a new keyframe with a valid relative pose
    STATIC = "static"  # the camera does not move (no parallax where its speed would show some): pose held
    LOST = "lost"  # too few inliers / matches: pose held, re-initialising


@dataclass
class PoseEstimate:
    """Result of :meth:`kp2d_ros.pipeline.VOPipeline.process` for one frame.

    Attributes
    ----------
    stamp : frame time (s).
    T_world_cam : (4, 4) camera-to-world pose (world = first camera frame, optical convention).
    status : tracking state after this frame.
    num_features, num_matches, num_inliers : counts at this frame.
    is_keyframe : True when this frame became the new reference.
    timings_ms : per-stage wall times, keys ``network``/``matching``/``io_net``/``pose``/``total``.
    features : the frame's features (for visualisation/publishing).
    matched : (N,) bool, which of ``features`` are inlier matches to the reference frame.
    ref_keypoints, cur_keypoints : (I, 2) inlier correspondences (reference, current) in pixels.
    quality : in [0, 1], from inlier ratio and count.
    covariance : (6, 6) covariance of ``T_world_cam`` over [x, y, z, rx, ry, rz]: position offset in
        world axes (trajectory units) and small-angle rotation in world axes (radians), with
        ``T = (exp([r]x) R, p + dp)``. Accumulated along the trajectory: each keyframe's covariance is its
        reference's (moved by the lever arm of its rotation uncertainty) plus that of the relative motion,
        which comes from the pose refinement's information (Gauss-Newton on the inliers' Sampson
        errors, noise estimated from their residuals, floored at ``pipeline.covariance_noise_floor_px``)
        and the scale's spread over the shared points, plus model-error floors per motion
        (``pipeline.covariance_rotation_floor_deg``, ``pipeline.covariance_translation_floor``). Frames between keyframes add their motion from
        the reference, so it grows with distance, not with frame count. STATIC frames add the translation
        that ``static_parallax_px`` could hide; constant-velocity guesses half the allowed speed change;
        LOST frames one whole unknown motion of the last pair's size. None when not computed.
    motion_model : how the motion from the reference was obtained: ``measured`` (rotation, translation
        direction and length from the views), ``constant_speed`` (length from the speed prior: no shared
        structure), ``rotation_only`` (the camera turned without translating), ``constant_velocity``
        (too slow to see: translation continues the last pair's at its speed), ``static``, ``none``
        (initialising, lost), ``repeated`` (the image is byte for byte the last one's, a stale image sent again: the
        last pose held, status STATIC, nothing measured; ``pipeline.max_repeated_frames``).
    keyframe_id, T_keyframe_cam : the backend keyframe this pose was estimated against and the pose relative to
        it (-1 / None without a backend or while lost): ``T_world_cam = T_world_keyframe @ T_keyframe_cam``, so
        a path can follow the keyframes the backend refines later.
    T_odom_cam, T_world_odom : REP 105's split of ``T_world_cam = T_world_odom @ T_odom_cam``. ``T_odom_cam`` is the
        trajectory without the backend's corrections: each frame continues the previous one by the motion
        between them, so it never jumps (``nav_msgs/Odometry``, TF odom -> base). ``T_world_odom`` holds the
        corrections (TF map -> odom; the world frame is ``map``): it changes when a window refines the reference
        keyframe, and stays the identity without a backend. None when not computed.
    timings_ms also has ``refine`` and ``backend`` (the local bundle adjustment run or taken in this frame).
    scale_source : where the translation length of this frame came from (:mod:`kp2d_ros.scale`):
        ``propagated`` (the structure shared with the previous pair, or the speed prior), ``ground_plane``
        (``geometry.camera_height_m``), ``wheel_odometry`` (the travelled distance given to ``process``),
        both joined by ``+``, or ``none`` (no translation: initialising, static, rotation only, lost).
    scale_metric : the trajectory is in metres: a metric source was accepted at some earlier pair (the
        poses before that pair stay in the first baseline's units). False: the scale is unknown.
    scale_rescaled : 1.0, except at the frame where the scale turned metric: the factor (metres per former
        unit) the pipeline rescaled its world by; the positions of all earlier poses times this factor are
        in metres (``kp2d replay`` applies it; the node logs it, the poses it published stay as they were).
    scale_notes : why a configured metric source was not used at this frame ("" when it was, or none is
        configured), e.g. ``ground plane rejected: ...``.
    interval_s : seconds since the previous frame by the pipeline's clock: the stamps' difference, or where the
        stamps are jittered (counting camera intervals predicts the pairs' lengths better) the camera intervals
        counted (one, more across a dropped frame) times the typical interval; after ``repeated`` frames, since the
        last frame before them (their time too). None for a first frame or a stamp not after the last. ``vo_node``'s
        twist divides each step by it.
    """

    stamp: float
    T_world_cam: np.ndarray
    status: TrackingStatus
    num_features: int = 0
    num_matches: int = 0
    num_inliers: int = 0
    is_keyframe: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    features: Features | None = None
    matched: np.ndarray | None = None
    ref_keypoints: np.ndarray | None = None
    cur_keypoints: np.ndarray | None = None
    quality: float = 0.0
    covariance: np.ndarray | None = None
    motion_model: str = "none"
    keyframe_id: int = -1
    T_keyframe_cam: np.ndarray | None = None
    T_odom_cam: np.ndarray | None = None
    T_world_odom: np.ndarray | None = None
    scale_source: str = "none"
    scale_metric: bool = False
    scale_rescaled: float = 1.0
    scale_notes: str = ""
    interval_s: float | None = None

    def odometry(self) -> tuple[np.ndarray, np.ndarray]:
        """(``T_world_odom``, ``T_odom_cam``); without the split (not computed) odom is the world: the identity and
        ``T_world_cam``."""
        T_world_odom = np.eye(4) if self.T_world_odom is None else np.asarray(self.T_world_odom, np.float64)
        T_odom_cam = self.T_world_cam if self.T_odom_cam is None else self.T_odom_cam
        return T_world_odom, np.asarray(T_odom_cam, np.float64)


@dataclass
class Trajectory:
    """Timed camera poses.

    Attributes
    ----------
    stamps : (N,) float64 seconds.
    poses : (N, 4, 4) float64 T_world_cam (camera-to-world).
    """

    stamps: np.ndarray
    poses: np.ndarray

    def __len__(self) -> int:
        return int(self.stamps.shape[0])


class Frontend:
    """Interface shared by every keypoint frontend (ORB, SIFT, KP2D).

    ``detect`` takes an (H, W) uint8 grey or (H, W, 3) uint8 RGB image and returns
    :class:`Features` in that image's pixel coordinates.
    """

    name: str = "base"

    def detect(self, image: np.ndarray) -> Features:  # pragma: no cover - interface
        raise NotImplementedError
