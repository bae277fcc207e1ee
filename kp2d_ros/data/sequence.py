"""The :class:`Sequence` every reader returns: camera, timed frames and optional ground truth."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from kp2d_ros.types import Camera, Frame, Trajectory


class Sequence:
    """An image sequence with intrinsics and (optionally) ground truth.

    Attributes
    ----------
    name : short name (folder or bag name).
    layout : ``kitti``, ``tum``, ``euroc``, ``bag`` or ``synthetic``.
    camera : intrinsics shared by all frames.
    stamps : (N,) float64 frame times in seconds.
    ground_truth : T_world_cam at the frame stamps it covers (a subset of ``stamps``), or None.

    Iterating yields :class:`Frame` objects (index 0..N-1, stamp, uint8 grey or RGB image);
    images are read lazily, so a sequence can be iterated more than once.
    """

    def __init__(self, name: str, layout: str, camera: Camera, stamps: np.ndarray,
                 images: Callable[[], Iterator[np.ndarray]], ground_truth: Trajectory | None = None,
                 loader: Callable[[int], np.ndarray] | None = None):
        """
        Parameters
        ----------
        images : callable returning a fresh iterator over the N images, in order.
        loader : optional random access ``loader(i) -> image`` (folder layouts).
        """
        self.name = name
        self.layout = layout
        self.camera = camera
        self.stamps = np.asarray(stamps, dtype=np.float64).reshape(-1)
        self.ground_truth = ground_truth
        self._images = images
        self._loader = loader

    def __len__(self) -> int:
        return int(self.stamps.shape[0])

    def __iter__(self) -> Iterator[Frame]:
        n = len(self)
        for i, img in enumerate(self._images()):
            if i >= n:
                break
            yield Frame(image=img, camera=self.camera, stamp=float(self.stamps[i]), index=i)

    def frame(self, i: int) -> Frame:
        """Random access to frame ``i`` (folder layouts; bags iterate up to it)."""
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} out of range (0..{len(self) - 1})")
        if self._loader is not None:
            img = self._loader(i)
        else:
            for j, img in enumerate(self._images()):
                if j == i:
                    break
        return Frame(image=img, camera=self.camera, stamp=float(self.stamps[i]), index=i)

    def __repr__(self) -> str:
        gt = "no ground truth" if self.ground_truth is None else f"ground truth for {len(self.ground_truth)}"
        return (f"Sequence({self.name!r}, layout={self.layout}, {len(self)} frames "
                f"{self.camera.width}x{self.camera.height}, {gt})")
