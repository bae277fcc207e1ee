"""Configuration: dataclasses per section, the only place defaults live.

The same YAML file serves the ROS node (``/**: ros__parameters: {...}``) and the offline
tools (the wrapper is stripped). ROS parameter names are the dotted paths of the fields
(``frontend.type``, ``geometry.ransac_threshold_px``).

Sections of :class:`VOConfig` (the node, replay, bench) and :class:`TrainConfig` (the trainer)
are validated once by :func:`load_config` / :func:`from_dict`; an unknown key or an invalid value
raises :class:`ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from kp2d_ros.errors import ConfigError
from kp2d_ros.types import DISTORTION_MODELS


# --------------------------------------------------------------------------------------------
# VO sections
# --------------------------------------------------------------------------------------------
@dataclass
class FrontendConfig:
    """Keypoint detector/descriptor (``orb``, ``sift`` or the learned ``kp2d``, the default;
    ``config/vo_classical.yaml`` switches to SIFT)."""

    type: str = "kp2d"
    num_features: int = 2000  # ORB/SIFT: max keypoints; kp2d: top-k
    # Working resolution [width, height] the frontend sees; [0, 0] keeps the input size.
    # Keypoints are always returned in input-image pixels.
    resolution: list[int] = field(default_factory=lambda: [0, 0])
    # With resolution [0, 0]: working size = input size x scale (e.g. 1.5 upsamples; any camera).
    scale: float = 1.0
    orb_scale_factor: float = 1.2
    orb_levels: int = 8
    orb_fast_threshold: int = 20
    sift_contrast_threshold: float = 0.04
    sift_edge_threshold: float = 10.0
    root_sift: bool = True  # SIFT descriptors as RootSIFT (Hellinger kernel)
    # Grid bucketing: keep at most num_features / (grid_cols * grid_rows) per cell (0 = off).
    grid_cols: int = 8  # 8 x 2 cells suit wide images (KITTI 07: ORB ATE 1.33 m -> 0.31 m)
    grid_rows: int = 2
    # Learned frontend.
    model_path: str = "models/keypoint_net.pt"
    device: str = "auto"  # auto | cpu | cuda
    nms_radius: int = 0  # pixels at working resolution, 0 = off
    score_threshold: float = 0.0
    # A dim scene: while the running mean of the images' brightness (0-255, exponential, 10 frames) is below this,
    # each image is brightened to it before the frontend detects (tracking and refinement see the images as they
    # are). KeyPointNet's keypoints move ~0.3 px and its descriptors change when an image's brightness halves: KITTI
    # 07 at half brightness 0.309 m -> 0.089 m, SIFT 0.097 -> 0.083 m (docs/results.md: Auto-exposure). 76 = the 10th
    # percentile of the training images' mean brightness; the dev sequences' images are all brighter (82-146). 0: off.
    min_brightness: float = 76.0
    # fp16 on CUDA / bf16 on CPUs with native bf16 (AVX512-BF16/AMX), else fp32. Off by default (stop 56): on an AMX
    # Xeon bf16 runs the network ~3x faster but costs the learned VO accuracy (KITTI 07 over kp2d stress's 11
    # variants: odometry ATE geometric mean 0.096 m in bf16 against 0.067 m in fp32, SIFT 0.082 m; the live node at
    # 10 Hz: median of 3 runs 0.151 against 0.091 m, SIFT 0.121 m; docs/results.md: KeyPointNet in bf16).
    half_precision: bool = False
    # What runs the network on the CPU: torchscript (the default: the torch body traced and frozen, bit-identical
    # to eager torch in bf16, ~25% faster there; docs/results.md Speed), torch (eager), onnxruntime (optional dependency,
    # fp32 only; ~15% less CPU time than eager torch for the network at 1226x370 on an AVX2 CPU; its outputs
    # equal torch's within 1e-4, but near-tied keypoint ranks can swap, and the two runs measured with it came out
    # slightly worse: demo ATE 0.0073 -> 0.0076 m, TUM 0.0107 -> 0.0118 m), or auto = onnxruntime when installed
    # and the network runs fp32, else torchscript. On CUDA torchscript means eager torch.
    engine: str = "torchscript"  # torchscript | torch | onnxruntime | auto
    # Where no keypoint is detected: what moves with the camera (the robot's own body in view: a bonnet, a bumper, a
    # gripper, a mount; an overlay burned into the image; a vignetted corner). Its points stay at the same pixels
    # whatever the camera does, and with a fifth of the view such a body the odometry read a stop where the car drove
    # (KITTI 07 with `--simulate body=20`: 23-29 m ATE against 0.06-0.07 m; docs/results.md: The robot's own body in view).
    # mask_ratios: the fractions of the image's width (left, right) and height (top, bottom) cut off at each side,
    # e.g. [0.0, 0.0, 0.0, 0.2] for a bonnet in the bottom fifth (rtabmap's Vis/RoiRatios order).
    mask_ratios: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    # An image file (absolute, or relative to the working directory) whose black (zero) pixels get no keypoint, any
    # shape the ratios cannot draw; it is resized to each image's size. "" = none. Both may be given.
    mask_image: str = ""
    # The same found from the images (kp2d_ros.frontend_common.StillBlocks): a region of at least 6 blocks of 16x16 px
    # that reaches the image's border and has moved by less than 1 px through this many judgements in a row (one each
    # time the view has moved by a median 4 px) gets no keypoints until it moves. In the scene of KITTI 07, TUM
    # fr2/desk, the demo street (also at 1/4 of its speed) and every scenario of scripts/robot_moves.py such a region
    # stayed still through at most 2 judgements; a body in view through all of them (KITTI 07: about one a frame, so
    # found at frame 7). 0: off.
    still_mask_frames: int = 5

    def validate(self) -> None:
        _choice("frontend.type", self.type, ("orb", "sift", "kp2d"))
        _choice("frontend.device", self.device, ("auto", "cpu", "cuda"))
        _choice("frontend.engine", self.engine, ("auto", "torch", "torchscript", "onnxruntime"))
        _positive("frontend.num_features", self.num_features)
        if len(self.resolution) != 2 or any(v < 0 for v in self.resolution):
            raise ConfigError(f"frontend.resolution: expected [width, height] >= 0, got {self.resolution}")
        if (self.resolution[0] == 0) != (self.resolution[1] == 0):
            raise ConfigError("frontend.resolution: width and height must both be 0 or both be > 0")
        if not (math.isfinite(self.min_brightness) and 0.0 <= self.min_brightness <= 255.0):
            raise ConfigError(f"frontend.min_brightness: 0 (off) or a mean intensity up to 255, got {self.min_brightness}")
        if not (math.isfinite(self.scale) and 0.05 <= self.scale <= 8.0):
            raise ConfigError(f"frontend.scale: must be in [0.05, 8], got {self.scale}")
        _nonneg("frontend.nms_radius", self.nms_radius)
        _nonneg("frontend.grid_cols", self.grid_cols)
        _nonneg("frontend.grid_rows", self.grid_rows)
        r = self.mask_ratios
        if (len(r) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v < 1.0 for v in r)
                or r[0] + r[1] >= 1.0 or r[2] + r[3] >= 1.0):
            raise ConfigError(f"frontend.mask_ratios: expected [left, right, top, bottom] fractions in [0, 1) that leave "
                              f"part of the image (left + right < 1, top + bottom < 1), got {r}")
        _nonneg("frontend.still_mask_frames", self.still_mask_frames)
        if self.mask_image and not Path(self.mask_image).expanduser().is_file():
            raise ConfigError(f"frontend.mask_image: no such file: {self.mask_image}")


@dataclass
class MatchingConfig:
    """Descriptor matching and (learned) outlier rejection."""

    mutual: bool = True  # mutual nearest neighbour (cross-check)
    ratio: float = 0.0  # Lowe ratio test threshold, 0 = off
    max_distance: float = 0.0  # max descriptor distance, 0 = off
    device: str = "auto"  # device for learned matching: auto | cpu | cuda
    # IO-Net at inference.
    io_net: bool = True
    # epipolar IO-Net (kp2d train-io): trained on two-view matches with parallax, as VO sees them
    io_net_path: str = "models/io_net_epipolar.pt"
    io_threshold: float = 0.5  # drop matches with inlier probability below this

    def validate(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"matching.ratio: must be in [0, 1), got {self.ratio}")
        _nonneg("matching.max_distance", self.max_distance)
        _choice("matching.device", self.device, ("auto", "cpu", "cuda"))
        if not 0.0 <= self.io_threshold < 1.0:
            raise ConfigError(f"matching.io_threshold: must be in [0, 1), got {self.io_threshold}")


@dataclass
class RefineConfig:
    """Sub-pixel refinement of matched keypoints (pyramidal Lucas-Kanade seeded with each match,
    forward-backward checked); works for every frontend (``kp2d_ros/refine.py``)."""

    method: str = "lk"  # none | lk (KITTI 07, kp2d at the input size: ATE 0.944 -> 0.474 m, docs/results.md)
    window_px: int = 11  # LK window side (odd)
    levels: int = 1  # pyramid levels above the full image (the seed is already within ~2 px)
    iterations: int = 20
    max_fb_error_px: float = 0.5  # tracking back must land this close to the reference keypoint
    max_shift_px: float = 3.0  # and the refined position stay this close to the detector's
    # Warp each reference patch by the motion predicted for it (constant velocity, the reference's known depths)
    # before tracking: plain translation misjudges a patch that zooms as the camera drives towards it. The warped
    # tracks use the full-resolution level only; ``levels`` applies to the plain ones (no prediction yet: the
    # first pair, after a loss; a warped track that failed its checks).
    affine: bool = True
    # Auto-exposure: scale the brighter image to the darker one's brightness before tracking, by the ratio measured
    # at the matches (refine.exposure_ratio), when it changes the brightness by more than exposure_min_change. Half
    # the brightness broke ~90 % of the tracks. Below 20 % the points' own changes (vignetting, shadows: 2-11 % per
    # frame on KITTI 07) are as large as a common one, and taking two such frames for an exposure change cost the
    # clean clip 0.0545 -> 0.073 m (docs/results.md: Auto-exposure).
    exposure: bool = True
    exposure_min_change: float = 0.2

    def validate(self) -> None:
        _choice("refine.method", self.method, ("none", "lk"))
        _nonneg("refine.exposure_min_change", self.exposure_min_change)
        if self.window_px < 3 or self.window_px % 2 == 0:
            raise ConfigError(f"refine.window_px: must be odd and >= 3, got {self.window_px}")
        _nonneg("refine.levels", self.levels)
        _positive("refine.iterations", self.iterations)
        _positive("refine.max_fb_error_px", self.max_fb_error_px)
        _positive("refine.max_shift_px", self.max_shift_px)


@dataclass
class GeometryConfig:
    """Two-view geometry: essential matrix (OpenCV USAC) and pose recovery."""

    method: str = "magsac"  # magsac | ransac | prosac | lmeds
    ransac_threshold_px: float = 1.0  # kp2d + LK on KITTI 07: 1.0 px ATE 0.49 m, 0.5 px 0.54 m (SIFT: 0.5)
    confidence: float = 0.999
    max_iters: int = 10000
    # recoverPose cheirality distance threshold (in units of the unit baseline). The 4-argument
    # overload uses 50, which silently breaks small baselines; keep it large.
    distance_threshold: float = 1000.0
    min_inliers: int = 15
    # Median rotation-compensated parallax (pixels) below which the translation is unobservable:
    # the pose is treated as a pure rotation (t = 0, rotation from the rays alone).
    rotation_only_parallax_px: float = 0.5
    # Rounds of robust least-squares polishing of (R, t) on the inliers' Sampson errors (0 = off).
    refine_rounds: int = 2
    # Also polish the previous pair's motion as a second hypothesis and keep the one with the lower
    # robust cost (fixes rotation/translation-ambiguity failures of the robust estimator in turns).
    motion_prior: bool = True
    # Metric scale from the ground plane (kp2d_ros/scale.py): the camera's height above a flat ground in
    # metres (KITTI: 1.65); 0 = off. Each keyframe pair fits the plane among its triangulated points below
    # the camera (RANSAC) and scales its translation so that the plane lies at this height.
    camera_height_m: float = 0.0
    # Gates of the plane: its normal within this angle (degrees) of the expected down direction (the base's
    # -z through ros.camera_to_base; the optical +y by default), and within ground_max_normal_change_deg of
    # the last accepted plane's (a plane that flips between frames is rejected); a point is an inlier
    # within ground_inlier_ratio x the height of the plane; at least ground_min_inliers of them.
    ground_max_tilt_deg: float = 10.0
    ground_max_normal_change_deg: float = 10.0
    ground_inlier_ratio: float = 0.05
    ground_min_inliers: int = 20
    # Standard deviation of log(scale) that one accepted plane adds to its residual spread (road camber,
    # pitch, a not quite flat ground), and of one wheel-odometry distance (relative: slip, wheel radius).
    ground_scale_sigma: float = 0.06
    odometry_scale_sigma: float = 0.02

    def validate(self) -> None:
        _choice("geometry.method", self.method, ("magsac", "ransac", "prosac", "lmeds"))
        _positive("geometry.ransac_threshold_px", self.ransac_threshold_px)
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"geometry.confidence: must be in (0, 1), got {self.confidence}")
        _positive("geometry.max_iters", self.max_iters)
        _positive("geometry.distance_threshold", self.distance_threshold)
        _positive("geometry.min_inliers", self.min_inliers)
        _nonneg("geometry.rotation_only_parallax_px", self.rotation_only_parallax_px)
        _nonneg("geometry.refine_rounds", self.refine_rounds)
        h = self.camera_height_m
        if not (isinstance(h, (int, float)) and math.isfinite(h) and (h == 0 or 0.01 <= h <= 100.0)):
            raise ConfigError(f"geometry.camera_height_m: must be 0 (off) or a height in [0.01, 100] m, got {h!r}")
        if not 0.0 < self.ground_max_tilt_deg < 90.0:
            raise ConfigError(f"geometry.ground_max_tilt_deg: must be in (0, 90), got {self.ground_max_tilt_deg}")
        _positive("geometry.ground_max_normal_change_deg", self.ground_max_normal_change_deg)
        if not 0.0 < self.ground_inlier_ratio < 1.0:
            raise ConfigError(f"geometry.ground_inlier_ratio: must be in (0, 1), got {self.ground_inlier_ratio}")
        if self.ground_min_inliers < 3:
            raise ConfigError(f"geometry.ground_min_inliers: must be >= 3, got {self.ground_min_inliers}")
        _positive("geometry.ground_scale_sigma", self.ground_scale_sigma)
        _positive("geometry.odometry_scale_sigma", self.odometry_scale_sigma)


@dataclass
class PipelineConfig:
    """Keyframe selection, scale propagation and tracking-loss handling."""

    # A tracked frame becomes a keyframe only when the median match displacement to the reference reaches
    # this (pixels); below it the frame is posed against the reference (rotation from the views,
    # translation direction when observable, its length from the speed prior) and the reference is kept.
    min_parallax_px: float = 2.0
    # No translation is seen below this median parallax (pixels; the image noise). Such a frame is STATIC
    # (reference pose held; its time does not count as motion) when the camera, at its last speed, would
    # have shown at least twice this, and no rotation either; a pure rotation when it rotated. Otherwise
    # it moves too slowly to tell: constant-velocity guess (PoseEstimate.motion_model).
    static_parallax_px: float = 0.5
    # A tracked frame becomes the new keyframe when its median rotation-compensated parallax to the
    # reference exceeds this (pixels), or when fewer than keyframe_min_inliers inliers remain; the first
    # pair (no scale yet) needs only min_parallax_px. 0 = every tracked frame is a keyframe (best on
    # KITTI 07). On slow motion the backend's windows then span short baselines; 8 of them held
    # (backend.fixed_keyframes) keep their scale (docs/results.md: Robustness, the backend's window on slow motion).
    keyframe_parallax_px: float = 0.0
    keyframe_min_inliers: int = 100
    # Short baselines leave a valley of near-equivalent (rotation, translation direction) pairs (the
    # rotation/translation ambiguity): at 1-2 px of parallax the essential matrix can settle 6-70 deg away
    # from the true direction, with a rotation error of 0.05-0.9 deg. When a pair's camera-centre direction
    # departs from the constant-velocity one (the last keyframe pair's, in the reference's axes) by more
    # than this (degrees), (R, t) is polished again from that direction, and the result is taken when it
    # stays within this angle and fits the inliers as well (robust cost at most the estimator's plus
    # one per ten inliers). 0: off.
    direction_gate_deg: float = 5.0
    # Relative scale from triangulated points shared between consecutive pairs.
    min_scale_points: int = 8
    # ratio: median distance ratio of points triangulated under >= min_triangulation_deg by both pairs
    # (best on KITTI 07: SIFT ATE 0.50 m vs 0.63 m); inverse_depth: errors-in-variables fit of all
    # shared inverse depths (unbiased on synthetic data, but drifts in KITTI's turns).
    scale_method: str = "ratio"
    # Clamp of the measured speed (distance per second; per frame without usable stamps) around the
    # last pair's: within this factor over one interval of that pair, compounded over longer gaps
    # (dropped frames, stops), so neither fools it.
    max_scale_change: float = 3.0
    # Smallest standard deviation of the log speed change per interval of the last pair (a random walk: it
    # grows with the square root of the time since that pair), widened to what the last pairs' speed
    # changes show. The speed prior with this uncertainty picks the scale among point votes that disagree
    # (after dropped frames, repeated structure can match a whole region to the wrong copy).
    speed_change_sigma: float = 0.05
    # Carry inverse depths of tracked points from keyframe to keyframe and fuse them with each new pair's.
    fuse_depths: bool = False
    # Pose each pair against the structure the backend's window refined: after the essential matrix and the scale
    # vote, one robust motion-only adjustment fits the rotation, direction and length to the epipolar errors of all
    # inliers and the reprojection errors of the reference's points whose depth the window refined (each whitened
    # by its depth's uncertainty), as ORB-SLAM's and DSO's trackers pose a frame against their local map. Kept only
    # within 1 deg / 10 deg / 30 % of the two-view pose. Nothing changes without the window (backend.window 0) or
    # before it lands: a single pair's depths carry its own pose error into the next pair. false: the two-view pose
    # and the voted scale alone (docs/results.md: Structure pose, stop 41).
    structure_pose: bool = True
    # Something that moves on its own across the view (a vehicle crossing) can take the essential matrix's largest
    # consensus: its sideways flow reads as a turn (or as a turn alone: no translation), the scene fits a shifted
    # translation. When a pair's rotation departs from the last pair's by more than this (degrees), it is checked
    # against the pose on the reference's points that a window refined (PnP); where those disagree by more than this
    # too, the pair is estimated again on the matches that pose explains. Needs the backend's refined depths. 0: off
    # (docs/results.md: A vehicle passing a robot that waits; Something crossing the view while the robot drives).
    motion_guard_deg: float = 0.5
    # The same check on the direction of travel (degrees): a crossing that holds most matches can keep the rotation
    # within the guard and turn the translation sideways instead, its points read as near ones passed sideways
    # (KITTI 07: 90-98 deg off the last pair's, whose direction changes by at most 2 deg a frame there, and by up to
    # 72 on TUM fr2/desk's hand-held camera). 0: rotation only.
    motion_guard_direction_deg: float = 45.0
    # ratio method: only points seen under at least this triangulation angle (degrees) in both pairs vote.
    min_triangulation_deg: float = 0.5
    # A pure rotation (no observable translation) becomes a keyframe only beyond this angle.
    rotation_keyframe_deg: float = 5.0
    # A turn on the spot: each of its keyframes searches again for the keypoints of the keyframe the turn started from
    # (its points have depths and landmarks) within this radius (pixels) of where the turn's rotation puts them (one
    # centre: no depth needed), so that what the turn still sees of them scales the motion after it. The chain of
    # pairs alone loses 30-45 % of the tracks per keyframe of a turn. 0: off.
    turn_search_px: float = 8.0
    # Frames without a valid pose before the tracker declares itself lost and re-initialises.
    max_lost_frames: int = 3
    # After such a restart, the next rejoin_frames frames are also matched against the keyframe before the loss: one
    # that sees it again (keyframe_min_inliers inliers) takes the tracker back to it, and the restart's keyframes, which
    # followed whatever filled the view (a person walking past), are dropped. 0: off.
    rejoin_frames: int = 30
    # A frame whose image is byte for byte the last one's is a stale image sent again (a stalled USB camera, a
    # driver or synchroniser that publishes its last image twice with a new stamp): a real camera's noise never
    # repeats. It carries nothing new, so the tracker skips it as it would a dropped frame (no network, no state
    # change: the next image's pair spans its time too) and its pose is held, flagged ``repeated``. Taking it for a
    # stop, as before, restarted the speed prior's moving time, so the next pair's prior and patch warps expected one
    # interval of motion where the camera had moved on for several. After this many in a row the images are taken as
    # they come (a noiseless simulator's camera standing still gives identical images too). 0: off.
    max_repeated_frames: int = 3
    # A blurred frame (a bump, a fast pan): the variance of its Laplacian (over its squared mean brightness, so that an
    # auto-exposure change is not blur) below blur_ratio times the median of the last 5 keyframes'. It is posed
    # against the last sharp keyframe as usual (at the last velocity when fewer than
    # keyframe_min_inliers inliers hold its pose) but never becomes a keyframe, nor restarts a lost tracker, so the
    # frames after the burst match a sharp keyframe again (docs/results.md: Robustness, stop 27). After max_blurred_frames
    # in a row the images are taken as they are (a duller scene). blur_ratio 0: off.
    blur_ratio: float = 0.4
    max_blurred_frames: int = 10
    # Smallest image noise (pixels) the pose covariance assumes (PoseEstimate.covariance), also when
    # the residuals are smaller (identical images).
    covariance_noise_floor_px: float = 0.1
    # Model errors every estimated motion adds on top of what its residuals show (the residuals miss the
    # rotation/translation ambiguity and scale bias): rotation std (degrees) and translation std as a
    # fraction of the motion's length. From KITTI 07 SIFT: RPE 0.035 deg/frame; without them the
    # covariance was 10-25x over-confident on the KITTI clip.
    covariance_rotation_floor_deg: float = 0.03
    covariance_translation_floor: float = 0.03
    # Process-wide CPU threads, applied when the pipeline is built (0 = the libraries' defaults).
    # torch_threads: the network's intra-op threads; library_threads: OpenCV and every BLAS pool.
    # torch_threads also sizes onnxruntime's pool (frontend.engine). Default 0 = torch's own default (one thread
    # per physical core), as SIFT gets OpenCV's pool: on the 2-core Xeon (AMX-BF16) KITTI 1226x370 ran at 7.0 FPS
    # with 2 torch threads against 4.0-4.5 with 1 while a training job held one core, 6.7 against 5.2 idle
    # (docs/results.md Speed). On an AVX2 EPYC shared by many jobs (load 6-16) a second OpenMP thread stalled whenever
    # another process held a core (0.4 against 0.7 FPS; IO-Net 7 -> 364 ms): set torch_threads: 1 there.
    # library_threads 1: OpenBLAS's spinning workers steal the network's cores.
    torch_threads: int = 0
    library_threads: int = 1

    def validate(self) -> None:
        _nonneg("pipeline.torch_threads", self.torch_threads)
        _nonneg("pipeline.library_threads", self.library_threads)
        _nonneg("pipeline.min_parallax_px", self.min_parallax_px)
        _nonneg("pipeline.motion_guard_deg", self.motion_guard_deg)
        _nonneg("pipeline.motion_guard_direction_deg", self.motion_guard_direction_deg)
        _nonneg("pipeline.static_parallax_px", self.static_parallax_px)
        _positive("pipeline.covariance_noise_floor_px", self.covariance_noise_floor_px)
        _nonneg("pipeline.covariance_rotation_floor_deg", self.covariance_rotation_floor_deg)
        _nonneg("pipeline.covariance_translation_floor", self.covariance_translation_floor)
        _nonneg("pipeline.keyframe_parallax_px", self.keyframe_parallax_px)
        _nonneg("pipeline.keyframe_min_inliers", self.keyframe_min_inliers)
        _nonneg("pipeline.direction_gate_deg", self.direction_gate_deg)
        _positive("pipeline.min_scale_points", self.min_scale_points)
        _choice("pipeline.scale_method", self.scale_method, ("inverse_depth", "ratio"))
        if self.max_scale_change <= 1.0:
            raise ConfigError(f"pipeline.max_scale_change: must be > 1, got {self.max_scale_change}")
        _positive("pipeline.speed_change_sigma", self.speed_change_sigma)
        _positive("pipeline.max_lost_frames", self.max_lost_frames)
        _nonneg("pipeline.rejoin_frames", self.rejoin_frames)
        _nonneg("pipeline.max_repeated_frames", self.max_repeated_frames)
        if not 0.0 <= self.blur_ratio < 1.0:
            raise ConfigError(f"pipeline.blur_ratio: 0 (off) or in (0, 1), got {self.blur_ratio}")
        _positive("pipeline.max_blurred_frames", self.max_blurred_frames)
        _nonneg("pipeline.min_triangulation_deg", self.min_triangulation_deg)
        _nonneg("pipeline.rotation_keyframe_deg", self.rotation_keyframe_deg)
        _nonneg("pipeline.turn_search_px", self.turn_search_px)


@dataclass
class BackendConfig:
    """Local bundle adjustment over a sliding window of keyframes (``kp2d_ros/backend.py``)."""

    window: int = 16  # the last keyframes, jointly optimised after each new one; 0: off (docs/results.md: Local bundle adjustment)
    # The oldest of the window are held (>= 2: fixes position, rotation and scale); the newest window - fixed_keyframes
    # are optimised. Held keyframes anchor the window's scale on a longer baseline: with 2 of 10 held (the old default)
    # the learned frontend drifted in scale on slow motion (synthetic street at 0.05 m/frame 0.257 m, 8 of 16: 0.024 m;
    # docs/results.md: Robustness, the backend's window on slow motion). config/vo_classical.yaml keeps 2 of 10 for SIFT.
    # 0: half the window (at least 2), so that setting backend.window alone keeps the proportion
    fixed_keyframes: int = 0
    solver: str = "ceres"  # ceres (pycolmap's bundle adjuster) | gtsam (Levenberg-Marquardt): docs/results.md, solver choice
    noise_px: float = 1.0  # observation noise (pixels)
    kernel: str = "cauchy"  # robust kernel on the reprojection errors: cauchy | huber
    kernel_px: float = 2.0  # its scale (pixels)
    max_reprojection_px: float = 4.0  # observations beyond this after optimising are culled
    max_iterations: int = 5  # Levenberg-Marquardt iterations per pass (a second pass after culling outliers)
    min_landmarks: int = 30  # fewer landmarks seen twice in the window: the window is skipped
    max_landmarks: int = 2000  # at most this many per window (each keyframe its share, then 3+-view tracks first): bounds the time
    min_parallax_deg: float = 0.0  # a new landmark's depth must be this well conditioned (0: every point in front)
    max_step_change: float = 3.0  # a window changing a keyframe step's length by more is rejected (diverged)
    threaded: bool = True  # optimise on a worker thread (the node); kp2d replay waits for each window
    worker_nice: int = 19  # CPU priority decrease of the threaded optimisation's process (0: same as the node; 19: the lowest)
    worker_idle: bool = True  # that process in Linux's SCHED_IDLE class: it runs on CPU time no other task wants
    # While a window is being optimised, the frontend detects on one CPU thread fewer (torch's pool for the learned
    # frontend, OpenCV's for SIFT/ORB), so that the worker has a core: on a small CPU the network otherwise keeps
    # every core busy and the windows land 3-5 keyframes late, which costs the odometry accuracy (KITTI 07 threaded
    # replay, 2 cores: 0.065-0.085 m, against 0.057 m when they land 1 late; before stop 33's follower scale 0.11-0.12
    # against 0.066-0.073 m; docs/results.md: Local bundle adjustment, Threads). Since stop 42 a window done during the
    # next frame's network is taken before that frame is matched, so with a core for the worker every window lands in
    # time and a threaded replay equals the deterministic one (KITTI 07 0.0549 m, TUM fr2/desk 0.0072 m; without:
    # 0.08-0.12 / 0.012 m; docs/results.md: Windows in time). Off by default: those frames take longer (2 cores,
    # KITTI 07: 2.7-2.9 -> 1.6-1.9 FPS in those replays; stop 33: node latency +50-80 %).
    # No effect on onnxruntime's fixed pool.
    worker_core: bool = False
    # Online self-calibration: every window also estimates the camera's first radial distortion coefficient k1 (on
    # top of the configured/CameraInfo model; plumb_bob and rational_polynomial), from the images alone, with its
    # standard deviation (Ceres); a window that measures it less precisely than ``k1_prior_sigma`` is solved again
    # with the front end's k1 held and reports none (backend.bundle_adjust), and the front end undistorts with the
    # median of the last ``k1_windows`` estimates. A residual k1 turns rotation into false parallax, so it
    # shows as scale drift in every turn (KITTI 07: docs/results.md, Local bundle adjustment).
    self_calibration: bool = True
    # a window's k1 counts when its standard deviation is below this (Ceres); GTSAM: the prior on the window's k1
    # around the configured model; both: |k1| > 5x this is a diverged window
    k1_prior_sigma: float = 0.05
    k1_windows: int = 9  # the front end takes the median of this many latest window estimates (from the 3rd on)
    # how those estimates combine: median | weighted (each by its inverse variance, Ceres' standard deviation; GTSAM
    # reports none: median)
    k1_average: str = "median"
    # A keyframe pair's metric length (wheel odometry, the ground plane) is a prior on the distance between the two
    # keyframes in every window that holds both (kp2d_ros/backend.py).
    metric_priors: bool = True

    @property
    def held(self) -> int:
        """Keyframes held at the old end of a full window: ``fixed_keyframes``, or half the window when 0."""
        return self.fixed_keyframes if self.fixed_keyframes else max(self.window // 2, 2)

    def validate(self) -> None:
        _nonneg("backend.window", self.window)
        if self.window and self.window < 3:
            raise ConfigError(f"backend.window: 0 (off) or >= 3 keyframes, got {self.window}")
        if self.fixed_keyframes != 0 and self.fixed_keyframes < 2:
            raise ConfigError(f"backend.fixed_keyframes: 0 (half the window) or >= 2 (the gauge), got {self.fixed_keyframes}")
        if self.window and self.held >= self.window:
            raise ConfigError(f"backend.fixed_keyframes ({self.fixed_keyframes}) must be < backend.window ({self.window}): the "
                              "newest window - fixed_keyframes keyframes are optimised (0: half the window)")
        _positive("backend.noise_px", self.noise_px)
        _choice("backend.solver", self.solver, ("ceres", "gtsam"))
        _choice("backend.kernel", self.kernel, ("cauchy", "huber"))
        _positive("backend.kernel_px", self.kernel_px)
        _nonneg("backend.min_parallax_deg", self.min_parallax_deg)
        if not 0 <= self.worker_nice <= 19:
            raise ConfigError(f"backend.worker_nice: 0..19, got {self.worker_nice}")
        if self.max_step_change <= 1.0:
            raise ConfigError(f"backend.max_step_change: must be > 1, got {self.max_step_change}")
        _positive("backend.max_reprojection_px", self.max_reprojection_px)
        _positive("backend.max_iterations", self.max_iterations)
        _positive("backend.min_landmarks", self.min_landmarks)
        if self.max_landmarks < self.min_landmarks:
            raise ConfigError(f"backend.max_landmarks ({self.max_landmarks}) must be >= backend.min_landmarks "
                              f"({self.min_landmarks})")
        _positive("backend.k1_prior_sigma", self.k1_prior_sigma)
        _positive("backend.k1_windows", self.k1_windows)
        _choice("backend.k1_average", self.k1_average, ("median", "weighted"))


@dataclass
class CameraConfig:
    """Intrinsics used when the input provides none (a bag without CameraInfo). fx = 0: unset.

    ``rectified`` tells how to read a CameraInfo (message, bag or camera.yaml): true for a rectified
    stream (``image_rect``), whose intrinsics are P's left 3x3 with no distortion; false (raw
    ``image_raw``) for K and D with ``distortion_model``. A CameraInfo cannot say which: image_proc
    publishes the same one beside both streams.
    """

    fx: float = 0.0
    fy: float = 0.0
    cx: float = 0.0
    cy: float = 0.0
    distortion: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0, 0.0])
    distortion_model: str = "plumb_bob"  # of ``distortion``: plumb_bob | rational_polynomial | equidistant
    rectified: bool = False

    def validate(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"camera.{name}: must be finite and >= 0, got {v}")
        _choice("camera.distortion_model", self.distortion_model, tuple(DISTORTION_MODELS))
        counts = DISTORTION_MODELS[self.distortion_model]
        if len(self.distortion) not in counts:
            raise ConfigError(f"camera.distortion: {self.distortion_model} takes "
                              f"{', '.join(map(str, counts))} coefficients, got {len(self.distortion)}")

    @property
    def is_set(self) -> bool:
        return self.fx > 0 and self.fy > 0


@dataclass
class RosConfig:
    """ROS adapter settings (ignored by the offline tools)."""

    # REP 105: odometry (and TF odom -> base) is continuous; the backend's corrections go into TF map -> odom, and
    # the path (refined by the backend) is in map.
    map_frame: str = "map"
    odom_frame: str = "odom"
    base_frame: str = "base_link"
    camera_frame: str = "camera_optical_frame"
    # Camera-to-base extrinsic T_base_camera as [x, y, z, qx, qy, qz, qw]. The default is the
    # REP-103 optical frame (z forward, x right, y down) mounted at the base origin.
    camera_to_base: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5])
    compressed: bool = False  # subscribe sensor_msgs/CompressedImage instead of Image
    qos_depth: int = 1
    publish_tf: bool = True
    # TF map -> odom (the backend's corrections). false when another node owns map -> odom (a localisation or SLAM
    # system): odom -> base still goes out with publish_tf, and the path stays in map_frame.
    publish_map_tf: bool = True
    publish_keypoints: bool = True
    publish_path: bool = True
    max_path_length: int = 10000
    # The path is published by a timer off the VO worker thread, at most once per this period (s).
    path_period_s: float = 1.0
    # TUM file (camera poses, as kp2d replay's trajectory_est.tum) written by ~/save_trajectory and at
    # shutdown; "" = none.
    trajectory_file: str = ""
    # Metric scale from wheel odometry: a nav_msgs/Odometry topic ("" = off). The path length its positions
    # travelled between two images sets that step's translation (kp2d_ros/scale.py); samples are
    # interpolated at the image stamps, and a source older than scale_odometry_max_age_s is stale (the
    # propagated scale is kept).
    scale_odometry_topic: str = ""
    scale_odometry_max_age_s: float = 0.5

    def validate(self) -> None:
        names = {"ros.map_frame": self.map_frame, "ros.odom_frame": self.odom_frame, "ros.base_frame": self.base_frame,
                 "ros.camera_frame": self.camera_frame}
        for key, name in names.items():
            if not name:
                raise ConfigError(f"{key}: empty frame name")
        if len(set(names.values())) != len(names):
            raise ConfigError(f"ros frames must differ: {names}")
        if len(self.camera_to_base) != 7:
            raise ConfigError("ros.camera_to_base: expected [x, y, z, qx, qy, qz, qw]")
        q = self.camera_to_base[3:]
        if abs(math.sqrt(sum(v * v for v in q)) - 1.0) > 1e-3:
            raise ConfigError("ros.camera_to_base: quaternion must have unit norm")
        _positive("ros.qos_depth", self.qos_depth)
        _positive("ros.max_path_length", self.max_path_length)
        _positive("ros.path_period_s", self.path_period_s)
        _positive("ros.scale_odometry_max_age_s", self.scale_odometry_max_age_s)


@dataclass
class VOConfig:
    """Everything the VO pipeline and its ROS node read."""

    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    ros: RosConfig = field(default_factory=RosConfig)

    def validate(self) -> None:
        for f in fields(self):
            getattr(self, f.name).validate()


# --------------------------------------------------------------------------------------------
# Training sections (KeyPointNet / IO-Net, homography adaptation, losses, optimiser)
# --------------------------------------------------------------------------------------------
@dataclass
class KeyPointNetConfig:
    """KeyPointNet architecture and pre/post-processing constants (KP2D, ICLR 2020)."""

    in_channels: int = 3  # RGB; grey images are replicated to 3 channels
    # Encoder widths of the four stages before the width multiplier (paper: 32, 64, 128, 256).
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    width_multiplier: float = 1.0  # 0.5 gives the CPU-sized variant
    descriptor_dim: int = 256
    cell: int = 8  # score/location grid stride = 2 ** (number of max-pools)
    cross_ratio: float = 2.0  # offsets reach cross_ratio * cell / 2 from the cell centre
    dropout: float = 0.2
    leaky_slope: float = 0.1
    bn_momentum: float = 0.1
    input_mean: float = 0.5  # image in [0, 1] -> (x - mean) / std
    input_std: float = 0.225
    border_px: int = 4  # keypoints closer than this to the image border are suppressed at detection
    pad_mode: str = "replicate"  # inputs not a multiple of `cell` are padded right/bottom

    def validate(self) -> None:
        if len(self.channels) != 4:
            raise ConfigError("keypoint_net.channels: expected 4 stage widths")
        for c in self.channels:
            _positive("keypoint_net.channels", c)
        _positive("keypoint_net.width_multiplier", self.width_multiplier)
        _positive("keypoint_net.descriptor_dim", self.descriptor_dim)
        if self.cell != 8:
            raise ConfigError(f"keypoint_net.cell: the encoder has three 2x2 pools, cell must be 8, got {self.cell}")
        _positive("keypoint_net.cross_ratio", self.cross_ratio)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"keypoint_net.dropout: must be in [0, 1), got {self.dropout}")
        _positive("keypoint_net.input_std", self.input_std)
        _nonneg("keypoint_net.border_px", self.border_px)
        _choice("keypoint_net.pad_mode", self.pad_mode, ("replicate", "constant", "reflect"))


@dataclass
class IONetConfig:
    """IO-Net: point-wise inlier/outlier classifier over matched pairs."""

    in_channels: int = 5  # (u, v, u', v', descriptor distance)
    channels: int = 128
    num_blocks: int = 4
    bn_momentum: float = 0.1

    def validate(self) -> None:
        _positive("io_net.in_channels", self.in_channels)
        _positive("io_net.channels", self.channels)
        _positive("io_net.num_blocks", self.num_blocks)


@dataclass
class HomographyConfig:
    """Random homography sampler (homography adaptation; paper: 0.7, 0.2, pi/4, 0.4)."""

    patch_ratio: float = 0.7
    scaling_amplitude: float = 0.2
    max_angle: float = 0.7853981633974483  # pi / 4
    perspective_amplitude: float = 0.4
    translation: bool = True
    max_tries: int = 50
    # True: scale/rotation are drawn once and kept even when the patch leaves the image (black borders,
    # masked by the losses). False: redraw until the patch fits, which in practice keeps rotations small
    # (|angle| median ~9 deg for max_angle pi/4 at 0.7) and zooms in only.
    allow_artifacts: bool = False
    # The share of pairs drawn as small motion: every amplitude above (and the patch's margin 1 - patch_ratio)
    # multiplied by ``small_motion_scale``: two views at about one scale and turn, as consecutive video frames and
    # illumination-only pairs are (with patch_ratio 0.7 and stage 3's amplitudes ~2 % of the pairs are within 15 %
    # of one scale and 10 deg of no turn).
    small_motion_prob: float = 0.0
    small_motion_scale: float = 0.1

    def small_motion(self) -> "HomographyConfig":
        """This sampler with every amplitude scaled by ``small_motion_scale`` (and no further small motion)."""
        k = self.small_motion_scale
        return replace(self, patch_ratio=1.0 - (1.0 - self.patch_ratio) * k,
                       scaling_amplitude=self.scaling_amplitude * k, max_angle=self.max_angle * k,
                       perspective_amplitude=self.perspective_amplitude * k, small_motion_prob=0.0)

    def validate(self) -> None:
        if not 0.0 <= self.small_motion_prob <= 1.0:
            raise ConfigError(f"homography.small_motion_prob: must be in [0, 1], got {self.small_motion_prob}")
        if not 0.0 <= self.small_motion_scale <= 1.0:
            raise ConfigError(f"homography.small_motion_scale: must be in [0, 1], got {self.small_motion_scale}")
        if not 0.0 < self.patch_ratio <= 1.0:
            raise ConfigError(f"homography.patch_ratio: must be in (0, 1], got {self.patch_ratio}")
        _nonneg("homography.scaling_amplitude", self.scaling_amplitude)
        _nonneg("homography.max_angle", self.max_angle)
        _nonneg("homography.perspective_amplitude", self.perspective_amplitude)
        _positive("homography.max_tries", self.max_tries)


@dataclass
class AugmentationConfig:
    """Photometric augmentation, drawn independently for each image of a training pair."""

    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.2
    hue: float = 0.05
    channel_shuffle_prob: float = 0.1
    greyscale_prob: float = 0.1
    noise_std: float = 0.02  # Gaussian noise, max std in [0, 1] intensity units
    noise_prob: float = 0.5
    blur_prob: float = 0.2
    blur_max_sigma: float = 1.5
    jpeg_prob: float = 0.0  # JPEG compression at a random quality in [jpeg_min_quality, 95], last
    jpeg_min_quality: int = 20

    def validate(self) -> None:
        for name in ("brightness", "contrast", "saturation", "hue", "noise_std", "blur_max_sigma"):
            _nonneg(f"augmentation.{name}", getattr(self, name))
        if not 1 <= self.jpeg_min_quality <= 95:
            raise ConfigError(f"augmentation.jpeg_min_quality: must be in [1, 95], got {self.jpeg_min_quality}")
        for name in ("channel_shuffle_prob", "greyscale_prob", "noise_prob", "blur_prob", "jpeg_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"augmentation.{name}: must be in [0, 1], got {v}")


@dataclass
class LossConfig:
    """Loss weights and thresholds (one loss function each in kp2d_ros.training.losses)."""

    location_weight: float = 1.0
    descriptor_weight: float = 2.0
    score_weight: float = 1.0
    io_weight: float = 1.0
    match_threshold_px: float = 4.0  # nearest-neighbour association / IO inlier threshold
    descriptor_margin: float = 0.2
    relax_radius_px: float = 8.0  # negatives must lie farther than this from the positive
    io_top_k: int = 300  # keypoints per image that enter the IO loss
    io_start_step: int = 0  # IO loss switched on from this step (descriptors first)
    border_px: int = 4  # source keypoints warped outside the target minus this border are ignored

    def validate(self) -> None:
        for name in ("location_weight", "descriptor_weight", "score_weight", "io_weight", "border_px",
                     "io_start_step"):
            _nonneg(f"loss.{name}", getattr(self, name))
        _positive("loss.match_threshold_px", self.match_threshold_px)
        _nonneg("loss.descriptor_margin", self.descriptor_margin)
        _nonneg("loss.relax_radius_px", self.relax_radius_px)
        _positive("loss.io_top_k", self.io_top_k)


@dataclass
class OptimConfig:
    """Adam optimiser and schedule."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    lr_decay_steps: int = 0  # StepLR step size in optimiser steps, 0 = constant
    lr_decay_gamma: float = 0.5
    grad_clip: float = 0.0  # max grad norm, 0 = off
    # exponential moving average of both networks' weights (and BatchNorm statistics), updated after every step:
    # avg <- ema_decay * avg + (1 - ema_decay) * weights; 0 = off. When on, the run's keypoint_net.pt / io_net.pt
    # hold the averages (the raw weights stay in checkpoint.pt)
    ema_decay: float = 0.0

    def validate(self) -> None:
        _positive("optim.lr", self.lr)
        _nonneg("optim.weight_decay", self.weight_decay)
        _nonneg("optim.lr_decay_steps", self.lr_decay_steps)
        _positive("optim.lr_decay_gamma", self.lr_decay_gamma)
        _nonneg("optim.grad_clip", self.grad_clip)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass
class TrainConfig:
    """``kp2d train``: data, networks, losses, optimiser, schedule and logging."""

    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision: bf16 on GPUs that have it (else fp16 + loss scaling), bf16 on CPUs with native bf16 (else fp32)
    num_threads: int = 0  # torch CPU threads, 0 = torch default
    resolution: list[int] = field(default_factory=lambda: [320, 240])  # training [width, height]
    batch_size: int = 4
    num_workers: int = 0  # loader threads; > 0 also draws the next batch while a step runs
    steps: int = 10000
    log_every: int = 10
    checkpoint_every: int = 200  # steps
    checkpoint_minutes: float = 5.0  # also checkpoint after this much wall time (0 = off)
    init_keypoint_net: str = ""  # fine-tune: start KeyPointNet from these weights ("" = random init)
    init_io_net: str = ""  # fine-tune: start IO-Net from these weights ("" = random init)
    keypoint_net: KeyPointNetConfig = field(default_factory=KeyPointNetConfig)
    io_net: IONetConfig = field(default_factory=IONetConfig)
    homography: HomographyConfig = field(default_factory=HomographyConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> None:
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _nonneg("num_threads", self.num_threads)
        if len(self.resolution) != 2 or any(v < 16 for v in self.resolution):
            raise ConfigError(f"resolution: expected [width, height] >= 16, got {self.resolution}")
        for name in ("batch_size", "steps", "log_every", "checkpoint_every"):
            _positive(name, getattr(self, name))
        _nonneg("num_workers", self.num_workers)
        _nonneg("checkpoint_minutes", self.checkpoint_minutes)
        for sec in (self.keypoint_net, self.io_net, self.homography, self.augmentation, self.loss, self.optim):
            sec.validate()


# --------------------------------------------------------------------------------------------
# Generic machinery: dict <-> dataclass, YAML, validation helpers
# --------------------------------------------------------------------------------------------
def _choice(key: str, value: Any, options: tuple) -> None:
    if value not in options:
        raise ConfigError(f"{key}: must be one of {', '.join(map(str, options))}; got {value!r}")


def _positive(key: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}: must be > 0, got {value!r}")


def _nonneg(key: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{key}: must be >= 0, got {value!r}")


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Coerce a YAML/ROS value to the annotated field type, or raise naming the key."""
    origin = get_origin(typ)
    if origin is list:
        (item_t,) = get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_t) for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {typ}")


def from_dict(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys and bad types raise ConfigError."""
    data = dict(data or {})
    hints = get_type_hints(cls)
    kwargs = {}
    known = {f.name for f in fields(cls)}
    for k in data:
        if k not in known:
            raise ConfigError(f"{prefix}{k}: unknown key (known: {', '.join(sorted(known))})")
    for f in fields(cls):
        if f.name not in data:
            continue
        typ = hints[f.name]
        key = f"{prefix}{f.name}"
        if is_dataclass(typ):
            if not isinstance(data[f.name], dict):
                raise ConfigError(f"{key}: expected a mapping, got {data[f.name]!r}")
            kwargs[f.name] = from_dict(typ, data[f.name], prefix=f"{key}.")
        else:
            kwargs[f.name] = _coerce(key, data[f.name], typ)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Nested plain dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (the ROS parameter names)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    """Inverse of :func:`flatten`."""
    out: dict = {}
    for key, v in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def strip_ros_wrapper(data: dict) -> dict:
    """Accept ``{node_or_/**: {ros__parameters: {...}}}`` as well as the bare mapping."""
    if isinstance(data, dict) and len(data) == 1:
        (inner,) = data.values()
        if isinstance(inner, dict) and set(inner) == {"ros__parameters"}:
            data = inner["ros__parameters"]
    if not isinstance(data, dict):
        raise ConfigError("config file: expected a mapping at the top level")
    # ROS params files may also use dotted keys ("frontend.type: orb"); normalise to nesting.
    data = unflatten(flatten(data))
    return data


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Command-line ``KEY=VALUE`` items -> ``{"dotted.key": value}`` with values parsed as YAML.

    Raises
    ------
    ConfigError
        an item without ``=`` or with an unparsable value.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item}: expected KEY=VALUE")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: value is not valid YAML") from None
    return out


def load_config(path: str | Path | None = None, cls: type = VOConfig, overrides: dict | None = None) -> Any:
    """Load, merge dotted ``overrides`` (``{"frontend.type": "orb"}``) and validate a config.

    Raises
    ------
    ConfigError
        missing/unreadable file, unknown key or invalid value (the message names the key).
    """
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p}: invalid YAML ({e})") from None
        data = strip_ros_wrapper(raw)
    if overrides:
        merged = flatten(data)
        merged.update(overrides)
        data = unflatten(merged)
    cfg = from_dict(cls, data)
    cfg.validate()
    return cfg


class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for lists (``resolution: [640, 480]``)."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def dump_config(cfg: Any, path: str | Path | None = None, ros: bool = True) -> str:
    """YAML text of ``cfg`` (ROS params form by default); written to ``path`` when given."""
    body = to_dict(cfg)
    doc = {"/**": {"ros__parameters": body}} if ros else body
    text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    if path is not None:
        Path(path).write_text(text)
    return text


if __name__ == "__main__":  # pragma: no cover - regenerates config/vo.yaml
    import sys

    sys.stdout.write(dump_config(VOConfig()))
