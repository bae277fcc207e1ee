"""Random homographies for homography adaptation, and warping helpers.

A homography is drawn as a random quadrilateral (the *patch*) inside the source image; ``H`` maps
the patch corners onto the full image corners, so ``target = warp(source, H)`` shows the patch
filling the frame. The patch starts as a centred square of ``patch_ratio`` of the image and is
perturbed by perspective, scaling, rotation and translation, each kept only if the patch stays
inside the image. Zero amplitudes and ``patch_ratio = 1`` give the identity. With ``allow_artifacts`` the patch may
leave the image (the target then has black borders), so large rotations and zoom-outs are drawn as often as the
amplitudes say instead of being rejected.
"""
from __future__ import annotations

import cv2
import numpy as np

from kp2d_ros.config import HomographyConfig


def _truncated_normal(rng: np.random.Generator, std: float, size=None) -> np.ndarray:
    """Normal(0, std) truncated to +-2 std."""
    if std <= 0:
        return np.zeros(size) if size is not None else 0.0
    return np.clip(rng.normal(0.0, std, size), -2 * std, 2 * std)


def sample_homography(width: int, height: int, config: HomographyConfig, rng: np.random.Generator) -> np.ndarray:
    """Draw a homography mapping source pixels to target pixels of a ``width`` x ``height`` image.

    Returns
    -------
    (3, 3) float64 H with [x_t, y_t, 1]^T ~ H [x_s, y_s, 1]^T; the target corners map back
    inside the source image. A share ``small_motion_prob`` of the draws uses ``config.small_motion()``.
    """
    if config.small_motion_prob > 0 and rng.random() < config.small_motion_prob:
        config = config.small_motion()
    m = (1.0 - config.patch_ratio) / 2.0
    # Patch corners in normalised [0, 1] coordinates: tl, bl, br, tr.
    patch = np.array([[m, m], [m, 1 - m], [1 - m, 1 - m], [1 - m, m]], dtype=np.float64)
    centre = np.array([0.5, 0.5])

    def inside(p):
        return config.allow_artifacts or bool(np.all(p >= 0.0) and np.all(p <= 1.0))

    for _ in range(config.max_tries):  # perspective: move left/right edges vertically, top/bottom horizontally
        if config.perspective_amplitude <= 0:
            break
        dx = _truncated_normal(rng, config.perspective_amplitude / 2 * m)
        dy_l = _truncated_normal(rng, config.perspective_amplitude / 2 * m)
        dy_r = _truncated_normal(rng, config.perspective_amplitude / 2 * m)
        cand = patch + np.array([[dx, dy_l], [dx, -dy_l], [-dx, dy_r], [-dx, -dy_r]])
        if inside(cand):
            patch = cand
            break
    for _ in range(config.max_tries):
        if config.scaling_amplitude <= 0:
            break
        s = 1.0 + _truncated_normal(rng, config.scaling_amplitude / 2)
        cand = (patch - centre) * s + centre
        if inside(cand):
            patch = cand
            break
    for _ in range(config.max_tries):
        if config.max_angle <= 0:
            break
        a = rng.uniform(-config.max_angle, config.max_angle)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        # Rotate in pixel units so the angle is a real angle on non-square images.
        scale = np.array([width - 1, height - 1], dtype=np.float64)
        cand = ((patch - centre) * scale) @ rot.T / scale + centre
        if inside(cand):
            patch = cand
            break
    if config.translation:
        lo, hi = -patch.min(axis=0), 1.0 - patch.max(axis=0)
        if config.allow_artifacts:  # the patch may overhang: keep its centre inside the image
            lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        patch = patch + rng.uniform(lo, hi)

    scale = np.array([width - 1, height - 1], dtype=np.float64)
    src = (patch * scale).astype(np.float32)
    dst = (np.array([[0, 0], [0, 1], [1, 1], [1, 0]], dtype=np.float64) * scale).astype(np.float32)
    return cv2.getPerspectiveTransform(src, dst).astype(np.float64)


def warp_image(image: np.ndarray, H: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """``target = warp(image, H)`` (target(H x) = image(x)); ``size`` = (width, height), default the input's."""
    h, w = image.shape[:2]
    size = size or (w, h)
    return cv2.warpPerspective(image, H, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def warp_points(points, H):
    """Apply a homography to points.

    Parameters
    ----------
    points : (..., N, 2) numpy array or torch tensor of (x, y).
    H : (3, 3) or (..., 3, 3) matching type.

    Returns
    -------
    (..., N, 2) warped points (same type).
    """
    if isinstance(points, np.ndarray):
        p = points @ H[..., :2, :2].swapaxes(-1, -2) + H[..., None, :2, 2]
        z = points @ H[..., 2:, :2].swapaxes(-1, -2) + H[..., None, 2:, 2]
        return p / z
    p = points @ H[..., :2, :2].transpose(-1, -2) + H[..., None, :2, 2]
    z = points @ H[..., 2:, :2].transpose(-1, -2) + H[..., None, 2:, 2]
    return p / z


def scale_homography(H: np.ndarray, src_scale: tuple[float, float], dst_scale: tuple[float, float]) -> np.ndarray:
    """Homography between resized images: pixels scale (sx, sy) in the source and the target.

    With x_small = S x_full (pixel centres, (x + 0.5) * s - 0.5), H_small = S_dst H S_src^-1.
    """
    def S(s):
        sx, sy = s
        return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])

    return S(dst_scale) @ H @ np.linalg.inv(S(src_scale))
