"""Photometric augmentation (colour jitter, channel shuffle, greyscale, noise, blur, JPEG) on uint8 RGB."""
from __future__ import annotations

import cv2
import numpy as np

from kp2d_ros.config import AugmentationConfig
from kp2d_ros.errors import DataError


def photometric_augment(image: np.ndarray, config: AugmentationConfig, rng: np.random.Generator) -> np.ndarray:
    """Randomly perturb an (H, W, 3) uint8 RGB image; returns a new uint8 image."""
    x = image.astype(np.float32) / 255.0
    # Colour jitter, in random order.
    for op in rng.permutation(4):
        if op == 0 and config.brightness > 0:
            x = x * rng.uniform(1 - config.brightness, 1 + config.brightness)
        elif op == 1 and config.contrast > 0:
            mean = x.mean()
            x = (x - mean) * rng.uniform(1 - config.contrast, 1 + config.contrast) + mean
        elif op == 2 and config.saturation > 0:
            grey = x.mean(axis=2, keepdims=True)
            x = (x - grey) * rng.uniform(1 - config.saturation, 1 + config.saturation) + grey
        elif op == 3 and config.hue > 0:
            hsv = cv2.cvtColor(np.clip(x, 0, 1), cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0] + rng.uniform(-config.hue, config.hue) * 360.0) % 360.0
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        x = np.clip(x, 0.0, 1.0)
    if rng.random() < config.channel_shuffle_prob:
        x = x[..., rng.permutation(3)]
    if rng.random() < config.greyscale_prob:
        x = np.repeat(x.mean(axis=2, keepdims=True), 3, axis=2)
    if config.blur_max_sigma > 0 and rng.random() < config.blur_prob:
        x = cv2.GaussianBlur(np.ascontiguousarray(x), (0, 0), rng.uniform(0.1, config.blur_max_sigma))
    if config.noise_std > 0 and rng.random() < config.noise_prob:
        x = x + rng.normal(0.0, rng.uniform(0, config.noise_std), x.shape).astype(np.float32)
    out = (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if config.jpeg_prob > 0 and rng.random() < config.jpeg_prob:
        quality = int(rng.integers(config.jpeg_min_quality, 96))
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(out[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise DataError(f"JPEG augmentation: OpenCV could not encode a {out.shape} image")
        out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return out
