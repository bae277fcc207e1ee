"""ROS ``camera_info`` YAML files (camera_calibration_parsers format) <-> :class:`Camera`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from kp2d_ros.data.camera_info import camera_from_info, info_model_name
from kp2d_ros.errors import DataError
from kp2d_ros.types import Camera


def _matrix(doc: dict, key: str, path: Path) -> np.ndarray:
    node = doc.get(key)
    if node is None:
        raise DataError(f"{path}: missing '{key}'")
    data = node.get("data") if isinstance(node, dict) else node
    try:
        return np.asarray(data, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise DataError(f"{path}: '{key}' is not a list of numbers") from None


def load_yaml(path: str | Path) -> dict:
    """Parse a YAML file, tolerating OpenCV's ``%YAML:1.0`` directive line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    text = "\n".join(line for line in text.splitlines() if not line.startswith("%YAML"))
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DataError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping")
    return doc


def read_camera_yaml(path: str | Path, rectified: bool = False) -> Camera:
    """Read a ROS camera_info YAML (``image_width``, ``camera_matrix``, ``distortion_model``,
    ``distortion_coefficients``, ``projection_matrix``) the way the node reads a CameraInfo
    (:func:`kp2d_ros.data.camera_info.camera_from_info`).

    Parameters
    ----------
    rectified : the images are rectified (``camera.rectified``): intrinsics from
        ``projection_matrix``, no distortion.

    Returns
    -------
    Camera with K (3, 3), the distortion model and coefficients (zeros when absent).

    Raises
    ------
    DataError
        unreadable file, missing/invalid ``camera_matrix`` (or ``projection_matrix`` when
        rectified), an unsupported distortion model.
    """
    path = Path(path)
    doc = load_yaml(path)
    K = _matrix(doc, "camera_matrix", path)
    dist = _matrix(doc, "distortion_coefficients", path) if "distortion_coefficients" in doc else np.zeros(0)
    P = _matrix(doc, "projection_matrix", path) if rectified else None
    return camera_from_info(K, dist, str(doc.get("distortion_model", "plumb_bob")),
                            int(doc.get("image_width", 0) or 0), int(doc.get("image_height", 0) or 0),
                            p=P, rectified=rectified, source=str(path))


def write_camera_yaml(camera: Camera, path: str | Path, name: str = "camera") -> None:
    """Write ``camera`` as a ROS camera_info YAML (its distortion model, identity rectification)."""
    K = np.asarray(camera.K, dtype=np.float64)
    P = np.hstack([K, np.zeros((3, 1))])
    dist = [float(v) for v in np.asarray(camera.dist, dtype=np.float64).ravel()]
    model = info_model_name(camera)

    def mat(rows: int, cols: int, values) -> str:
        return f"{{rows: {rows}, cols: {cols}, data: [{', '.join(repr(float(v)) for v in values)}]}}"

    text = (
        f"image_width: {int(camera.width)}\n"
        f"image_height: {int(camera.height)}\n"
        f"camera_name: {name}\n"
        f"camera_matrix: {mat(3, 3, K.ravel())}\n"
        f"distortion_model: {model}\n"
        f"distortion_coefficients: {mat(1, len(dist), dist)}\n"
        f"rectification_matrix: {mat(3, 3, np.eye(3).ravel())}\n"
        f"projection_matrix: {mat(3, 4, P.ravel())}\n"
    )
    Path(path).write_text(text)
