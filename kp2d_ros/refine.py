"""Sub-pixel refinement of matched keypoints, for any frontend.

A detector's keypoints carry their own localisation error in *each* image (KeyPointNet's is about 1 px
at its working size), and an essential matrix sees the difference of the two. Refinement keeps the
reference keypoint where it is and finds its sub-pixel position in the current image with pyramidal
Lucas-Kanade (OpenCV), seeded with the match: the match then agrees with the reference to the
tracker's precision rather than the detector's. A refined position is accepted only when tracking
back lands on the reference keypoint (forward-backward check) and it stays close to the seed;
otherwise the detector's position is kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from kp2d_ros.config import RefineConfig


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


def refine_matches(image0: np.ndarray, image1: np.ndarray, kp0: np.ndarray, kp1: np.ndarray,
                   cfg: RefineConfig) -> Refinement:
    """Sub-pixel positions in ``image1`` of the reference keypoints ``kp0``, seeded with their matches ``kp1``.

    Parameters
    ----------
    image0, image1 : (H, W) uint8 grey reference and current images (same size).
    kp0, kp1 : (M, 2) matched keypoints in pixels (0-based pixel centres).
    cfg : ``refine`` section (window, pyramid levels, forward-backward and shift bounds).

    Returns
    -------
    Refinement with M rows.
    """
    m = kp0.shape[0]
    seeds = np.ascontiguousarray(kp1, np.float32).reshape(-1, 1, 2)
    if m == 0:
        return Refinement(seeds.reshape(0, 2), np.zeros(0, bool), np.zeros(0, np.float32))
    p0 = np.ascontiguousarray(kp0, np.float32).reshape(-1, 1, 2)
    win = (cfg.window_px, cfg.window_px)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, cfg.iterations, 0.01)
    flags = cv2.OPTFLOW_USE_INITIAL_FLOW
    fwd, st1, _ = cv2.calcOpticalFlowPyrLK(image0, image1, p0, seeds.copy(), winSize=win, maxLevel=cfg.levels,
                                           criteria=crit, flags=flags)
    back, st0, _ = cv2.calcOpticalFlowPyrLK(image1, image0, fwd, p0.copy(), winSize=win, maxLevel=cfg.levels,
                                            criteria=crit, flags=flags)
    fwd, back = fwd.reshape(-1, 2), back.reshape(-1, 2)
    ok = (st1.ravel() == 1) & (st0.ravel() == 1) & np.isfinite(fwd).all(axis=1) & np.isfinite(back).all(axis=1)
    fb = np.full(m, np.inf, np.float32)
    fb[ok] = np.linalg.norm(back[ok] - kp0[ok], axis=1)
    shift = np.linalg.norm(fwd - seeds.reshape(-1, 2), axis=1)
    h, w = image1.shape[:2]
    inside = (fwd[:, 0] >= 0) & (fwd[:, 0] <= w - 1) & (fwd[:, 1] >= 0) & (fwd[:, 1] <= h - 1)
    refined = ok & (fb <= cfg.max_fb_error_px) & (shift <= cfg.max_shift_px) & inside
    out = seeds.reshape(-1, 2).copy()
    out[refined] = fwd[refined]
    return Refinement(out, refined, fb)
