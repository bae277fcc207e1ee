"""``open_sequence``: one entry point that recognises every supported input layout."""
from __future__ import annotations

from pathlib import Path

from kp2d_ros.config import CameraConfig
from kp2d_ros.data.bags import is_bag, read_bag
from kp2d_ros.data.folders import euroc_root, is_kitti, is_tum, read_euroc, read_kitti, read_tum_rgbd
from kp2d_ros.data.sequence import Sequence
from kp2d_ros.errors import DataError

SYNTHETIC_MARKER = "SYNTHETIC.txt"  # written by kp2d_ros.data.synthetic next to its TUM layout


def detect_layout(path: str | Path) -> str:
    """``bag``, ``kitti``, ``tum``, ``synthetic`` or ``euroc`` for ``path``.

    Raises
    ------
    DataError
        missing path or unknown layout (the message lists what is recognised).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if is_bag(path):
        return "bag"
    if path.is_dir():
        if is_tum(path):
            return "synthetic" if (path / SYNTHETIC_MARKER).is_file() else "tum"
        if is_kitti(path):
            return "kitti"
        if euroc_root(path) is not None:
            return "euroc"
    raise DataError(
        f"{path}: unknown input layout; expected a KITTI odometry folder (image_0/ + times/poses/calib), "
        "a TUM RGB-D folder (rgb.txt), an EuRoC folder (mav0/cam0/data), or a bag "
        "(.bag, .mcap, rosbag2 folder with metadata.yaml)")


def open_sequence(path: str | Path, *, image_topic: str | None = None, camera_info_topic: str | None = None,
                  gt_topic: str | None = None, max_frames: int | None = None,
                  camera: CameraConfig | None = None) -> Sequence:
    """Open an image sequence of any supported layout.

    Parameters
    ----------
    path : dataset folder or bag.
    image_topic, camera_info_topic, gt_topic : bag topics (found automatically when unambiguous).
    max_frames : read at most this many frames.
    camera : intrinsics used when the input has none (``camera`` config section).

    Returns
    -------
    Sequence (frames, camera, ground truth aligned to the frame stamps where available).

    Raises
    ------
    DataError
        missing folder, unknown layout, unreadable image, bag without an image topic, wrong topic
        name (the message lists the available topics), no intrinsics.
    """
    path = Path(path)
    if max_frames is not None and max_frames <= 0:
        raise DataError(f"max_frames must be > 0, got {max_frames}")
    layout = detect_layout(path)
    if layout == "bag":
        return read_bag(path, image_topic=image_topic, camera_info_topic=camera_info_topic, gt_topic=gt_topic,
                        max_frames=max_frames, camera=camera)
    if any(t is not None for t in (image_topic, camera_info_topic, gt_topic)):
        raise DataError(f"{path}: topic options only apply to bags (this is a {layout} folder)")
    if layout in ("tum", "synthetic"):
        return read_tum_rgbd(path, max_frames=max_frames, camera=camera, layout=layout)
    if layout == "kitti":
        return read_kitti(path, max_frames=max_frames, camera=camera)
    return read_euroc(path, max_frames=max_frames, camera=camera)
