"""Sub-pixel refinement of matched keypoints, for any frontend.

A detector's keypoints carry their own localisation error in *each* image (KeyPointNet's is about 1 px
at its working size), and an essential matrix sees the difference of the two. Refinement keeps the
reference keypoint where it is and finds its sub-pixel position in the current image with pyramidal
Lucas-Kanade (OpenCV), seeded with the match: the match then agrees with the reference to the
tracker's precision rather than the detector's. A refined position is accepted only when tracking
back lands on the reference keypoint (forward-backward check) and it stays close to the seed;
otherwise the detector's position is kept.

Lucas-Kanade assumes that a patch keeps its brightness. A camera's auto-exposure breaks that between two frames
(a robot driving into shade: at half the brightness ~90 % of the tracks failed their forward-backward check and
the rest were ~1 px off), and even 2 % doubles the tracker's error on a test texture (0.04 -> 0.08 px; 5 %: 0.18
px). With ``refine.exposure`` the brighter image is first scaled to the darker one's brightness by the ratio
:func:`exposure_ratio` measures at the matches themselves, when it measures a change beyond
``refine.exposure_min_change`` (20 %). Below that a moving camera's own photometry is as large: on KITTI 07 the
points' brightness changes by 2-11 % from frame to frame (vignetting as they flow outwards, shadows), and two frames
taken for a 9-11 % exposure change (one of them against the image's own mean, 1.4 % brighter) did not pose better
and moved the clean clip's ATE 0.0545 -> 0.073 m.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from kp2d_ros.config import RefineConfig
from kp2d_ros.frontend_common import exposed


@dataclass
class Refinement:
    """Refined current keypoints of M matches.

    Attributes
    ----------
    keypoints : (M, 2) float32 current-image pixels: refined where ``refined``, the seeds elsewhere.
    refined : (M,) bool, passed the forward-backward and shift checks.
    fb_error : (M,) float32 forward-backward distance in pixels (inf where tracking failed).
    """

    keypoints: np.ndarray
    refined: np.ndarray
    fb_error: np.ndarray
    exposure: float = 1.0


def exposure_ratio(image0: np.ndarray, image1: np.ndarray, kp0: np.ndarray, kp1: np.ndarray, radius: int = 7,
                   min_points: int = 20, significance: float = 3.0) -> float:
    """How much brighter ``image1`` is than ``image0`` at matched points, or 1.0 when no change is measurable.

    An auto-exposure change multiplies the stored intensities (also through a gamma curve: a power of a product is a
    product), so one ratio describes it. Each match gives the ratio of the mean intensities in the
    (2 radius + 1)^2 windows around ``kp1`` and ``kp0``; windows nearly black (< 8) or saturated (> 247) in either
    image say nothing and are left out. The median of the log ratios (robust to mismatches and changed content)
    selects the matches within 3 robust standard deviations of it, and their summed intensities give the ratio: a
    detector's ~1 px misplacement moves a single window's mean, the sum averages it out (0.1-0.3 % on a test
    texture, where the median alone was off by up to 0.7 %, and 0.7 % of exposure change costs LK 0.02 px).
    The change is taken as measured only beyond ``significance`` standard errors of the median: otherwise the images
    are left as they are.

    Parameters
    ----------
    image0, image1 : (H, W) uint8 grey reference and current images.
    kp0, kp1 : (M, 2) matched keypoints in pixels.

    Returns
    -------
    The ratio (> 0); 1.0 with fewer than ``min_points`` usable matches or no significant change.
    """
    m0, m1 = _window_means(image0, kp0, radius), _window_means(image1, kp1, radius)
    ok = (m0 >= 8) & (m0 <= 247) & (m1 >= 8) & (m1 <= 247)
    if int(ok.sum()) < min_points:
        return 1.0
    m0, m1 = m0[ok], m1[ok]
    log_ratio = np.log(m1 / m0)
    median = float(np.median(log_ratio))
    spread = 1.4826 * float(np.median(np.abs(log_ratio - median)))
    keep = np.abs(log_ratio - median) <= 3.0 * spread + 1e-12
    ratio = float(m1[keep].sum() / m0[keep].sum())
    if abs(np.log(ratio)) <= significance * spread / np.sqrt(m0.size):
        return 1.0
    return ratio


def _window_means(image: np.ndarray, points: np.ndarray, radius: int) -> np.ndarray:
    """(M,) mean intensity of ``image`` in the (2 radius + 1)^2 window around each of ``points`` (clipped at the
    borders)."""
    h, w = image.shape[:2]
    if len(points) == 0:
        return np.zeros(0)
    d = np.arange(-radius, radius + 1)
    x = np.clip(np.rint(points[:, 0]).astype(np.int64)[:, None] + d[None, :], 0, w - 1)
    y = np.clip(np.rint(points[:, 1]).astype(np.int64)[:, None] + d[None, :], 0, h - 1)
    return image[y[:, :, None], x[:, None, :]].reshape(len(points), -1).mean(axis=1, dtype=np.float64)


def _exposure_matched(image0: np.ndarray, image1: np.ndarray, kp0: np.ndarray, kp1: np.ndarray, cfg: RefineConfig,
                     radius: int = 7) -> tuple[np.ndarray, np.ndarray, float]:
    """The two images brought to one brightness as ``cfg`` says: with ``refine.exposure``, by the
    :func:`exposure_ratio` measured at the corresponding points ``kp0`` / ``kp1`` (windows of ``radius``), when it
    changes the brightness by more than ``refine.exposure_min_change``. -> (image0, image1, the ratio compensated:
    1.0 for none, the images then as given)."""
    ratio = exposure_ratio(image0, image1, kp0, kp1, radius) if cfg.exposure else 1.0
    if abs(np.log(ratio)) <= np.log1p(cfg.exposure_min_change):
        ratio = 1.0
    return (*_matched_exposure(image0, image1, ratio), ratio)


def _matched_exposure(image0: np.ndarray, image1: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """The two images at one brightness: the brighter one scaled down by ``ratio`` (current / reference), so that
    nothing saturates and the darker image's quantisation is kept."""
    if ratio < 1.0:
        return exposed(image0, ratio), image1
    return image0, exposed(image1, 1.0 / ratio)


def refine_matches(image0: np.ndarray, image1: np.ndarray, kp0: np.ndarray, kp1: np.ndarray,
                   cfg: RefineConfig, warps: np.ndarray | None = None) -> Refinement:
    """Sub-pixel positions in ``image1`` of the reference keypoints ``kp0``, seeded with their matches ``kp1``.

    Parameters
    ----------
    image0, image1 : (H, W) uint8 grey reference and current images (same size).
    kp0, kp1 : (M, 2) matched keypoints in pixels (0-based pixel centres).
    cfg : ``refine`` section (window, pyramid levels, forward-backward and shift bounds).
    warps : (M, 2, 2) the local linear maps from the reference image to the current one at each match (the
        zoom, rotation and shear that the motion gives each patch, :func:`kp2d_ros.geometry.patch_warps`), or
        None: plain translation. With them each reference patch is resampled as it should look in the current
        image before tracking (:func:`_affine_lk`): translation-only Lucas-Kanade on a patch that grows by 6 %
        between the frames is off by ~0.2 px (median, KITTI images), as much as the detector's own noise at that
        size. A match whose warped track fails its checks gets the plain track. (Keeping, per match, whichever of
        the two has the smaller window residual was tried: KITTI 07 0.176 m against 0.137 m as here and 0.193 m
        plain.) A map that is not invertible (determinant near 0 or not finite) is treated as the identity.

    Returns
    -------
    Refinement with M rows, and the exposure ratio it compensated (1.0 without ``cfg.exposure``).
    """
    m = kp0.shape[0]
    seeds = np.ascontiguousarray(kp1, np.float32).reshape(-1, 1, 2)
    if m == 0:
        return Refinement(seeds.reshape(0, 2), np.zeros(0, bool), np.zeros(0, np.float32))
    kp0, seeds = np.asarray(kp0, np.float32), seeds.reshape(-1, 2)
    if warps is None:
        image0, image1, ratio = _exposure_matched(image0, image1, kp0, seeds, cfg)
        out = _plain_lk(image0, image1, kp0, seeds, cfg)
        out.exposure = ratio
        return out
    out = _affine_lk(image0, image1, kp0, seeds, warps, cfg)
    ratio = out.exposure
    redo = np.flatnonzero(~out.refined)  # the plain track where the warped one failed its checks (a larger move)
    if len(redo):
        image0, image1 = _matched_exposure(image0, image1, ratio)
        plain = _plain_lk(image0, image1, kp0[redo], seeds[redo], cfg)
        out.keypoints[redo], out.refined[redo], out.fb_error[redo] = plain.keypoints, plain.refined, plain.fb_error
    return out


def _track_back_and_forth(image0: np.ndarray, image1: np.ndarray, p0: np.ndarray, start: np.ndarray, levels: int,
                          cfg: RefineConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LK from ``p0`` (M, 2) in ``image0`` to ``image1`` starting at ``start``, then back from there to ``image0``.
    -> (M, 2) tracked positions, (M,) bool tracked both ways, (M,) float32 forward-backward distance (inf where
    not tracked)."""
    p0 = np.ascontiguousarray(p0, np.float32).reshape(-1, 1, 2)
    win = (cfg.window_px, cfg.window_px)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, cfg.iterations, 0.01)
    flags = cv2.OPTFLOW_USE_INITIAL_FLOW
    start = np.array(start, np.float32).reshape(-1, 1, 2)  # a copy: OpenCV writes the result into it
    fwd, st1, _ = cv2.calcOpticalFlowPyrLK(image0, image1, p0, start, winSize=win, maxLevel=levels, criteria=crit,
                                           flags=flags)
    back, st0, _ = cv2.calcOpticalFlowPyrLK(image1, image0, fwd, p0.copy(), winSize=win, maxLevel=levels,
                                            criteria=crit, flags=flags)
    fwd, back, p0 = fwd.reshape(-1, 2), back.reshape(-1, 2), p0.reshape(-1, 2)
    ok = (st1.ravel() == 1) & (st0.ravel() == 1) & np.isfinite(fwd).all(axis=1) & np.isfinite(back).all(axis=1)
    fb = np.full(len(p0), np.inf, np.float32)
    fb[ok] = np.linalg.norm(back[ok] - p0[ok], axis=1)
    return fwd, ok, fb


def _checked(positions: np.ndarray, seeds: np.ndarray, ok: np.ndarray, fb: np.ndarray, shape: tuple,
             cfg: RefineConfig) -> Refinement:
    """Accept a tracked position when it was tracked both ways, tracking back landed within
    ``max_fb_error_px``, it moved at most ``max_shift_px`` from its seed and lies in the image; else keep the seed."""
    h, w = shape[:2]
    shift = np.linalg.norm(positions - seeds, axis=1)
    inside = (positions[:, 0] >= 0) & (positions[:, 0] <= w - 1) & (positions[:, 1] >= 0) & (positions[:, 1] <= h - 1)
    refined = ok & (fb <= cfg.max_fb_error_px) & (shift <= cfg.max_shift_px) & inside
    out = seeds.astype(np.float32)  # a copy
    out[refined] = positions[refined]
    return Refinement(out, refined, fb)


def _plain_lk(image0: np.ndarray, image1: np.ndarray, kp0: np.ndarray, seeds: np.ndarray,
              cfg: RefineConfig) -> Refinement:
    """Pyramidal Lucas-Kanade from ``kp0`` seeded with ``seeds`` (M, 2), tracked back and checked."""
    fwd, ok, fb = _track_back_and_forth(image0, image1, kp0, seeds, cfg.levels, cfg)
    return _checked(fwd, seeds, ok, fb, image1.shape, cfg)


def _tile_grid(m: int) -> int:
    """G, the side (in tiles) of the square mosaic that holds ``m`` tiles: tile i sits at row i // G, column i % G."""
    return int(np.ceil(np.sqrt(m)))


def _tile_centres(m: int, radius: int) -> np.ndarray:
    """(m, 2) float32 pixel centres (x, y) of the tiles of side ``2 radius + 1`` in the mosaic of :func:`_tiles`."""
    g, n, i = _tile_grid(m), 2 * radius + 1, np.arange(m)
    return np.stack([(i % g) * n + radius, (i // g) * n + radius], 1).astype(np.float32)


def _tiles(image: np.ndarray, centres: np.ndarray, maps: np.ndarray | None, radius: int) -> np.ndarray:
    """A mosaic of square tiles of side ``n = 2 radius + 1`` on a G x G grid (:func:`_tile_grid`): tile i samples
    ``image`` at ``centres[i] + maps[i] @ (dx, dy)`` for the tile's offsets (dx, dy) from its centre (bilinear,
    edges replicated; ``maps`` None: the identity). -> (G n, G n) uint8."""
    m, n = len(centres), 2 * radius + 1
    g = _tile_grid(m)
    d = np.arange(-radius, radius + 1, dtype=np.float32)
    c = np.full((g * g, 2), -1e4, np.float32)  # the grid's unused tiles sample outside (the replicated edge)
    c[:m] = centres
    a = np.zeros((g * g, 2, 2), np.float32)
    a[:m] = np.eye(2) if maps is None else maps

    def grid(v):  # (g * g,) per tile -> (g, 1, g, 1), broadcasting over (row, y, column, x)
        return v.reshape(g, 1, g, 1)

    dx, dy = d.reshape(1, 1, 1, n), d.reshape(1, n, 1, 1)
    xs = (grid(c[:, 0]) + grid(a[:, 0, 0]) * dx + grid(a[:, 0, 1]) * dy).reshape(g * n, g * n)
    ys = (grid(c[:, 1]) + grid(a[:, 1, 0]) * dx + grid(a[:, 1, 1]) * dy).reshape(g * n, g * n)
    return cv2.remap(image, xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _affine_lk(image0: np.ndarray, image1: np.ndarray, kp0: np.ndarray, seeds: np.ndarray, warps: np.ndarray,
               cfg: RefineConfig) -> Refinement:
    """Lucas-Kanade with each reference patch pre-warped by its local map: the reference tiles are the patches
    around ``kp0`` resampled through ``warps`` (as they should look in the current image), the current tiles are
    the current image around the seeds rounded to whole pixels (not resampled); one pyramidal LK call over the
    two mosaics tracks every tile centre, and a track back checks each as in :func:`refine_matches`. It tracks on the
    full-resolution level only (``refine.levels`` is not used): the seeds are within the detector's error, and a
    coarser level of the mosaic would see the neighbouring tiles (:func:`refine_matches` retries the failures
    with the plain, pyramidal tracker)."""
    m = len(kp0)
    radius = cfg.window_px // 2 + int(np.ceil(cfg.max_shift_px)) + 2
    a = np.asarray(warps, np.float64).reshape(m, 2, 2)
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    usable = np.isfinite(a).all(axis=(1, 2)) & (np.abs(det) > 1e-6)
    a[~usable], det[~usable] = np.eye(2), 1.0
    # current-tile offsets -> reference-image offsets: the inverse maps
    inv = np.stack([np.stack([a[:, 1, 1], -a[:, 0, 1]], -1), np.stack([-a[:, 1, 0], a[:, 0, 0]], -1)], 1)
    inv /= det[:, None, None]
    base = np.round(seeds).astype(np.float32)
    ref_tiles = _tiles(image0, kp0, inv, radius)
    cur_tiles = _tiles(image1, base, None, radius)
    centre = _tile_centres(m, radius)
    start = centre + (seeds - base)
    # the brightness measured on the warped tiles: windows of one scene extent (a zoom moves a fixed window's mean)
    ref_tiles, cur_tiles, ratio = _exposure_matched(ref_tiles, cur_tiles, centre, start, cfg, cfg.window_px // 2)
    fwd, ok, fb = _track_back_and_forth(ref_tiles, cur_tiles, centre, start, 0, cfg)
    moved = fwd - centre
    ok &= (np.abs(moved) <= radius - cfg.window_px // 2).all(axis=1)  # still inside its tile
    out = _checked(base + moved, seeds, ok, fb, image1.shape, cfg)
    out.exposure = ratio
    return out
