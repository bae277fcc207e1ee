"""IO-Net for two-view *epipolar* geometry: synthetic parallax pairs, Sampson labels, training.

The paper trains IO-Net on homography pairs, where every inlier obeys one 3x3 map. A VO pair has
parallax: inliers only obey the epipolar constraint ``x1^T F x0 = 0``. This module makes such
pairs from any still image by treating it as a *piecewise-planar* scene seen by a camera K:

* the image is cut into regions (vertical strips above a horizon, a ground region below it),
  each region lies on its own 3D plane ``n^T X = d`` (random depth and tilt; the ground is the
  plane y = camera height);
* a relative pose (R, t) is drawn like a car's frame-to-frame motion (mostly forward, a few
  degrees of yaw); every plane then induces its own homography ``H_i = K (R + t n_i^T / d_i) K^-1``
  and the second view is composed far-to-near from the region warps (occlusions included);
* the frozen KeyPointNet detects and describes both views, mutual nearest neighbours give the
  putative matches exactly as at inference, and each match is labelled by its Sampson distance to
  ``F = K^-T [t]_x R K^-1``: inlier below ``inlier_px``, outlier above ``outlier_px``, ignored in
  between.

:func:`build_match_sets` runs the (expensive) network once per pair; :func:`train_io_net` then
fits IO-Net on the cached match sets in seconds per epoch, optionally starting from the
homography-trained weights.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from kp2d_ros.config import AugmentationConfig, FrontendConfig, IONetConfig, MatchingConfig
from kp2d_ros.errors import DataError
from kp2d_ros.matching import match_features
from kp2d_ros.networks.io_net import IONet, io_net_input
from kp2d_ros.training.augment import photometric_augment
from kp2d_ros.training.dataset import random_crop, read_rgb


@dataclass
class EpipolarPairConfig:
    """Synthetic parallax pairs (units: metres, degrees, pixels of the pair)."""

    width: int = 640  # pair size; KITTI at the working resolution 640x192 has this aspect
    height: int = 192
    focal_min: float = 0.5  # focal length as a fraction of the width (KITTI: 0.58)
    focal_max: float = 0.8
    strips_min: int = 2  # vertical planar regions above the horizon
    strips_max: int = 6
    depth_min: float = 4.0
    depth_max: float = 40.0
    max_tilt_deg: float = 60.0  # strip plane normals rotate about the vertical axis by up to this
    camera_height: float = 1.65  # ground plane y = camera_height (camera y axis points down)
    baseline_min: float = 0.2
    baseline_max: float = 1.4
    lateral: float = 0.25  # sideways/vertical translation components relative to the forward one
    max_yaw_deg: float = 4.0
    max_pitch_roll_deg: float = 1.0
    inlier_px: float = 1.0  # Sampson distance labels
    outlier_px: float = 3.0
    num_features: int = 1000  # top-k per view, as at inference
    nms_radius: int = 0


def skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation from yaw (about y), pitch (about x), roll (about z), radians, camera axes."""
    return cv2.Rodrigues(np.array([0.0, yaw, 0.0]))[0] @ cv2.Rodrigues(np.array([pitch, 0.0, 0.0]))[0] \
        @ cv2.Rodrigues(np.array([0.0, 0.0, roll]))[0]


def fundamental(K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """F with ``x1^T F x0 = 0`` for pixels of view 0 and view 1, where ``X1 = R X0 + t``."""
    Ki = np.linalg.inv(K)
    return Ki.T @ skew(t) @ R @ Ki


def sampson_px(Fm: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """(N,) unsigned Sampson distances in pixels of (N, 2) correspondences to a fundamental matrix."""
    x0 = np.concatenate([p0, np.ones((len(p0), 1))], axis=1)
    x1 = np.concatenate([p1, np.ones((len(p1), 1))], axis=1)
    Fx0 = x0 @ Fm.T
    Ftx1 = x1 @ Fm
    num = np.abs(np.sum(x1 * Fx0, axis=1))
    den = np.sqrt(Fx0[:, 0] ** 2 + Fx0[:, 1] ** 2 + Ftx1[:, 0] ** 2 + Ftx1[:, 1] ** 2)
    return num / np.maximum(den, 1e-12)


@dataclass
class Scene:
    """A piecewise-planar scene and a relative pose: what :func:`render_second_view` needs.

    Attributes
    ----------
    K : (3, 3) intrinsics. R, t : view 0 -> view 1 (``X1 = R X0 + t``).
    labels : (H, W) int region index of every pixel of view 0.
    normals : (P, 3), offsets : (P,) planes ``n^T X = d`` in view-0 coordinates.
    depths : (P,) a representative depth per region (for the far-to-near order).
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    labels: np.ndarray
    normals: np.ndarray
    offsets: np.ndarray
    depths: np.ndarray

    def homography(self, i: int) -> np.ndarray:
        """Pixels of view 0 on plane i -> pixels of view 1."""
        Ki = np.linalg.inv(self.K)
        return self.K @ (self.R + np.outer(self.t, self.normals[i]) / self.offsets[i]) @ Ki

    @property
    def F(self) -> np.ndarray:
        return fundamental(self.K, self.R, self.t)


def sample_scene(cfg: EpipolarPairConfig, rng: np.random.Generator) -> Scene:
    """Random intrinsics, regions, planes and car-like motion for a ``cfg.width x cfg.height`` view."""
    w, h = cfg.width, cfg.height
    f = w * rng.uniform(cfg.focal_min, cfg.focal_max)
    K = np.array([[f, 0, (w - 1) / 2 + rng.uniform(-0.05, 0.05) * w],
                  [0, f, (h - 1) / 2 + rng.uniform(-0.1, 0.1) * h], [0, 0, 1.0]])
    Ki = np.linalg.inv(K)
    horizon = int(rng.uniform(0.55, 0.8) * h)
    n_strips = int(rng.integers(cfg.strips_min, cfg.strips_max + 1))
    cuts = np.sort(rng.uniform(0, w, n_strips - 1)).astype(int)
    edges = np.concatenate([[0], cuts, [w]])
    labels = np.zeros((h, w), np.int32)
    normals, offsets, depths = [], [], []
    for i in range(n_strips):
        labels[:, edges[i]:edges[i + 1]] = i
        for _ in range(20):  # a plane in front of the camera over the whole strip
            a = math.radians(rng.uniform(-cfg.max_tilt_deg, cfg.max_tilt_deg))
            n = np.array([math.sin(a), 0.0, math.cos(a)])
            z = math.exp(rng.uniform(math.log(cfg.depth_min), math.log(cfg.depth_max)))
            uc = 0.5 * (edges[i] + edges[i + 1])
            d = float(n @ (z * (Ki @ np.array([uc, horizon / 2, 1.0]))))
            corners = np.array([[edges[i], 0, 1], [edges[i + 1] - 1, 0, 1], [edges[i], h - 1, 1],
                                [edges[i + 1] - 1, h - 1, 1]], np.float64) @ Ki.T
            depth_at = d / (corners @ n)
            if d > 0 and np.all(depth_at > 1.0) and np.all(depth_at < 4 * cfg.depth_max):
                break
        normals.append(n)
        offsets.append(d)
        depths.append(z)
    # Ground: below the horizon line; plane y = camera height. Pixels there whose ray misses the
    # ground in front (near the horizon) keep their strip.
    rays_y = (np.arange(h)[:, None] - K[1, 2]) / K[1, 1]
    ground_rows = (np.arange(h) >= horizon) & (rays_y[:, 0] > cfg.camera_height / (4 * cfg.depth_max))
    labels[ground_rows, :] = n_strips
    normals.append(np.array([0.0, 1.0, 0.0]))
    offsets.append(cfg.camera_height)
    depths.append(cfg.camera_height / max(float(rays_y[min(horizon, h - 1), 0]), 1e-3))
    # Motion: mostly forward, a little sideways/vertical, a few degrees of yaw.
    fwd = rng.uniform(cfg.baseline_min, cfg.baseline_max) * (1 if rng.random() < 0.9 else -1)
    t_dir = np.array([rng.uniform(-cfg.lateral, cfg.lateral), rng.uniform(-cfg.lateral, cfg.lateral) / 3, 1.0])
    C = fwd * t_dir / np.linalg.norm(t_dir)  # camera-1 centre in view-0 coordinates
    R = rotation(math.radians(rng.uniform(-cfg.max_yaw_deg, cfg.max_yaw_deg)),
                 math.radians(rng.uniform(-cfg.max_pitch_roll_deg, cfg.max_pitch_roll_deg)),
                 math.radians(rng.uniform(-cfg.max_pitch_roll_deg, cfg.max_pitch_roll_deg)))
    t = -R @ C
    return Scene(K, R, t, labels, np.array(normals), np.array(offsets), np.array(depths))


def render_second_view(image: np.ndarray, scene: Scene) -> np.ndarray:
    """View 1 of ``image`` (view 0): region warps composed far to near (painter's algorithm)."""
    h, w = image.shape[:2]
    order = np.argsort(-scene.depths)
    out = cv2.warpPerspective(image, scene.homography(int(order[0])), (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT101)
    for i in order:
        mask = (scene.labels == i).astype(np.uint8) * 255
        if not mask.any():
            continue
        H = scene.homography(int(i))
        warped = cv2.warpPerspective(image, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        m = cv2.warpPerspective(mask, H, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT) > 127
        out[m] = warped[m]
    return out


@dataclass
class MatchSet:
    """Putative matches of one synthetic pair with their Sampson labels.

    Attributes
    ----------
    kp0, kp1 : (M, 2) float32 pixels. distances : (M,) float32. sampson : (M,) float32 pixels.
    image_size : (width, height).
    """

    kp0: np.ndarray
    kp1: np.ndarray
    distances: np.ndarray
    sampson: np.ndarray
    image_size: tuple[int, int]


def make_match_set(frontend, image: np.ndarray, cfg: EpipolarPairConfig, rng: np.random.Generator,
                   augmentation: AugmentationConfig | None = None) -> MatchSet:
    """One synthetic parallax pair from an RGB image -> matched keypoints and Sampson distances."""
    view0 = random_crop(image, cfg.width, cfg.height, rng, max_zoom=1.3)
    scene = sample_scene(cfg, rng)
    view1 = render_second_view(view0, scene)
    aug = augmentation or AugmentationConfig(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.02,
                                             channel_shuffle_prob=0.0, greyscale_prob=0.0, blur_prob=0.2,
                                             blur_max_sigma=1.0)
    view0 = photometric_augment(view0, aug, rng)
    view1 = photometric_augment(view1, aug, rng)
    f0, f1 = frontend.detect(view0), frontend.detect(view1)
    m = match_features(f0, f1, MatchingConfig(device="cpu"))
    kp0, kp1 = f0.keypoints[m.idx0], f1.keypoints[m.idx1]
    s = sampson_px(scene.F, kp0.astype(np.float64), kp1.astype(np.float64)).astype(np.float32)
    return MatchSet(kp0, kp1, m.distances.astype(np.float32), s, (cfg.width, cfg.height))


def build_match_sets(images: list[Path], keypoint_net_path: str | Path, n_pairs: int, cfg: EpipolarPairConfig,
                     seed: int = 0, device: str = "auto", half_precision: bool = False,
                     progress: Callable[[int, int], None] | None = None, frontend_type: str = "kp2d") -> list[MatchSet]:
    """Match sets of ``n_pairs`` synthetic pairs (images drawn with replacement) with the frozen KeyPointNet
    (or, with ``frontend_type="sift"``, RootSIFT: an IO-Net for any unit-norm float descriptor). ``half_precision``:
    the network as ``frontend.half_precision`` runs it (off, as the pipeline's default since stop 56: the IO-Net
    learns the descriptor distances the pipeline will give it).

    Raises
    ------
    DataError
        no images. ModelError: missing/invalid KeyPointNet weights.
    """
    from kp2d_ros.frontend import build_frontend

    if not images:
        raise DataError("build_match_sets: no training images")
    if frontend_type not in ("kp2d", "sift"):
        raise DataError(f"build_match_sets: IO-Net needs float descriptors (kp2d or sift), got {frontend_type!r}")
    frontend = build_frontend(FrontendConfig(type=frontend_type, model_path=str(keypoint_net_path), device=device,
                                             num_features=cfg.num_features, nms_radius=cfg.nms_radius,
                                             half_precision=half_precision))
    rng = np.random.default_rng(seed)
    sets = []
    for i in range(n_pairs):
        img = read_rgb(images[int(rng.integers(len(images)))])
        ms = make_match_set(frontend, img, cfg, rng)
        if len(ms.kp0) >= 8:
            sets.append(ms)
        if progress is not None:
            progress(i + 1, n_pairs)
    return sets


def save_match_sets(sets: list[MatchSet], path: str | Path) -> None:
    """Cache match sets as a ``torch.load(weights_only=True)``-readable file."""
    blob = [{"kp0": torch.from_numpy(s.kp0), "kp1": torch.from_numpy(s.kp1), "distances": torch.from_numpy(s.distances),
             "sampson": torch.from_numpy(s.sampson), "image_size": list(s.image_size)} for s in sets]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)


def load_match_sets(path: str | Path) -> list[MatchSet]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return [MatchSet(b["kp0"].numpy(), b["kp1"].numpy(), b["distances"].numpy(), b["sampson"].numpy(),
                     tuple(b["image_size"])) for b in blob]


def _tensors(ms: MatchSet, cfg: EpipolarPairConfig, rng: np.random.Generator, max_matches: int):
    m = len(ms.kp0)
    idx = rng.permutation(m)[:max_matches] if m > max_matches else np.arange(m)
    w, h = ms.image_size
    x = io_net_input(torch.from_numpy(ms.kp0[idx])[None], torch.from_numpy(ms.kp1[idx])[None],
                     torch.from_numpy(ms.distances[idx])[None], (h, w))
    s = ms.sampson[idx]
    labels = torch.from_numpy((s < cfg.inlier_px).astype(np.float32))[None]
    weight = torch.from_numpy(((s < cfg.inlier_px) | (s > cfg.outlier_px)).astype(np.float32))[None]
    return x, labels, weight


def train_io_net(train: list[MatchSet], cfg: EpipolarPairConfig, steps: int = 2000, lr: float = 1e-3,
                 init: IONet | None = None, io_config: IONetConfig | None = None, seed: int = 0,
                 max_matches: int = 1000, log: Callable[[dict], None] | None = None,
                 val: list[MatchSet] | None = None) -> IONet:
    """Fit IO-Net on cached match sets (one set per step; BCE on the labelled matches).

    Parameters
    ----------
    train : match sets to sample from. init : start from these weights (e.g. the homography IO-Net).
    steps : optimiser steps. lr : Adam learning rate (cosine decay to 5 %).
    log : called every 100 steps with {"step", "loss", and validation metrics when ``val`` is given}.

    Returns
    -------
    The trained network in eval mode (CPU).
    """
    if not train:
        raise DataError("train_io_net: no match sets")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = IONet(io_config) if init is None else init
    net = net.cpu().train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    window, t0 = [], time.monotonic()
    for step in range(1, steps + 1):
        x, y, wgt = _tensors(train[int(rng.integers(len(train)))], cfg, rng, max_matches)
        logits = net(x).logits
        loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * wgt).sum() / wgt.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window.append(float(loss.detach()))
        if log is not None and (step % 100 == 0 or step == steps):
            row = {"step": step, "loss": float(np.mean(window)), "seconds": time.monotonic() - t0}
            if val:
                row.update(evaluate_io_net(net, val, cfg))
                net.train()
            log(row)
            window = []
    return net.eval()


def evaluate_io_net(net: IONet, sets: list[MatchSet], cfg: EpipolarPairConfig, threshold: float = 0.5) -> dict:
    """Precision/recall of ``probability >= threshold`` against the Sampson labels, and the inlier
    ratio before and after filtering (ignored band excluded)."""
    net.eval()
    tp = fp = fn = n_in = n = 0
    with torch.inference_mode():
        for ms in sets:
            x, y, wgt = _tensors(ms, cfg, np.random.default_rng(0), 10**9)
            p = net(x).probabilities[0].numpy()
            y, wgt = y[0].numpy() > 0.5, wgt[0].numpy() > 0.5
            keep = p >= threshold
            tp += int((keep & y & wgt).sum())
            fp += int((keep & ~y & wgt).sum())
            fn += int((~keep & y & wgt).sum())
            n_in += int((y & wgt).sum())
            n += int(wgt.sum())
    return {"precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1), "inlier_ratio_before": n_in / max(n, 1)}
