"""Training pairs by homography adaptation from any folder of natural images."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from kp2d_ros.config import AugmentationConfig, HomographyConfig
from kp2d_ros.errors import DataError
from kp2d_ros.training.augment import photometric_augment
from kp2d_ros.training.homography import sample_homography, warp_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff")


def list_images(root: str | Path) -> list[Path]:
    """All images under ``root`` (recursive, sorted).

    Raises
    ------
    DataError
        missing folder or no image in it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"training data folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; raises DataError when unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def random_crop(image: np.ndarray, width: int, height: int, rng: np.random.Generator,
                max_zoom: float = 1.5) -> np.ndarray:
    """Resize so the image covers width x height (times a random zoom in [1, max_zoom]) and crop."""
    h, w = image.shape[:2]
    s = max(width / w, height / h) * rng.uniform(1.0, max_zoom)
    nw, nh = max(width, int(round(w * s))), max(height, int(round(h * s)))
    img = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    x0 = int(rng.integers(0, nw - width + 1))
    y0 = int(rng.integers(0, nh - height + 1))
    return img[y0:y0 + height, x0:x0 + width]


def make_pair(image: np.ndarray, width: int, height: int, homography: HomographyConfig,
              augmentation: AugmentationConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training pair from an RGB image.

    Returns
    -------
    source (H, W, 3) uint8 (warped + augmented), target (H, W, 3) uint8 (augmented),
    H (3, 3) float64 mapping source pixels to target pixels.
    """
    target = random_crop(image, width, height, rng)
    H_warp = sample_homography(width, height, homography, rng)  # target -> source
    source = warp_image(target, H_warp)
    source = photometric_augment(source, augmentation, rng)
    target = photometric_augment(target, augmentation, rng)
    return source, target, np.linalg.inv(H_warp)


class PairSampler:
    """Draws batches of training pairs.

    The batch of step ``t`` is a pure function of ``(seed, t)``, so a resumed run (or any DDP rank,
    given its own seed) continues exactly where it stopped without storing sampler state.
    """

    def __init__(self, files: list[Path], width: int, height: int, homography: HomographyConfig,
                 augmentation: AugmentationConfig, seed: int, num_workers: int = 0):
        self.files = files
        self.width, self.height = width, height
        self.homography, self.augmentation = homography, augmentation
        self.seed = seed
        self.num_workers = num_workers
        self._pool = None

    def _item(self, args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        index, seed = args
        rng = np.random.default_rng(seed)
        return make_pair(read_rgb(self.files[index]), self.width, self.height, self.homography, self.augmentation, rng)

    def batch(self, batch_size: int, step: int = 0) -> dict[str, torch.Tensor]:
        """Batch of step ``step``: {"source": (B, 3, H, W) float in [0, 1], "target": same,
        "H": (B, 3, 3) float32 source -> target pixels}."""
        rng = np.random.default_rng([self.seed, step])
        indices = rng.integers(0, len(self.files), batch_size)
        seeds = rng.integers(0, 2**63 - 1, batch_size)
        jobs = list(zip(indices.tolist(), seeds.tolist()))
        if self.num_workers > 0:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.num_workers)
            items = list(self._pool.map(self._item, jobs))
        else:
            items = [self._item(j) for j in jobs]
        to_t = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
        return {
            "source": to_t([s for s, _, _ in items]),
            "target": to_t([t for _, t, _ in items]),
            "H": torch.from_numpy(np.stack([h for _, _, h in items])).float(),
        }
