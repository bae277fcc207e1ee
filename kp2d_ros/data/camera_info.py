"""ROS CameraInfo -> :class:`Camera`: the one reading of K, D, ``distortion_model`` and P.

Used for CameraInfo messages in the node (:mod:`kp2d_ros.ros.conversions`), in bags
(:mod:`kp2d_ros.data.bags`) and for ``camera.yaml`` files (:mod:`kp2d_ros.data.camera_yaml`), so that
all of them read a calibration the same way.

Raw stream (``image_raw``, ``rectified=False``): K and D under ``distortion_model``;
``plumb_bob`` / ``rational_polynomial`` (OpenCV's radial-tangential family) and ``equidistant``
(OpenCV's fisheye model) are undistorted, anything else is refused. R is not used: the rays are
those of the raw camera.

Rectified stream (``image_rect``, ``rectified=True``): the images are already undistorted, so the
intrinsics are the left 3x3 of P and there is no distortion (undistorting again would bend the
rays). The rays are those of the rectified camera (rotated by R from the raw one; R = I for a
monocular calibration).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kp2d_ros.errors import DataError
from kp2d_ros.types import DISTORTION_MODELS, Camera

# Other names for the supported models (Kalibr / EuRoC sensor.yaml spell plumb_bob like this).
MODEL_ALIASES = {"radtan": "plumb_bob", "radial-tangential": "plumb_bob"}
# Names that mean "no distortion": accepted only with all-zero coefficients.
PINHOLE_NAMES = ("", "none")


def distortion_model(name: str, dist: np.ndarray, source: str = "CameraInfo") -> str:
    """The supported model that ``name`` stands for.

    Raises
    ------
    DataError
        an unknown model (the message lists the supported ones), or a coefficient count the model
        does not take (none at all is fine: no distortion).
    """
    key = MODEL_ALIASES.get(str(name).strip(), str(name).strip())
    if key in PINHOLE_NAMES and not np.any(dist != 0):
        return "plumb_bob"
    if key not in DISTORTION_MODELS:
        raise DataError(f"{source}: unsupported distortion_model '{name}' (supported: "
                        f"{', '.join(DISTORTION_MODELS)}; a rectified stream needs camera.rectified: true)")
    if dist.size and dist.size not in DISTORTION_MODELS[key]:
        raise DataError(f"{source}: distortion_model {key} takes "
                        f"{', '.join(map(str, DISTORTION_MODELS[key]))} coefficients, got {dist.size}")
    return key


def camera_from_info(k: Sequence[float], d: Sequence[float], model: str, width: int, height: int, *,
                     p: Sequence[float] | None = None, rectified: bool = False,
                     source: str = "CameraInfo") -> Camera:
    """A CameraInfo's fields -> :class:`Camera` (see the module docstring for raw vs rectified).

    Parameters
    ----------
    k : 9 numbers, row-major K. d : distortion coefficients (may be empty: no distortion).
    model : ``distortion_model``. width, height : image size (0: unknown, the caller fills it).
    p : 12 numbers, row-major P (needed when ``rectified``).
    rectified : the images are rectified (``camera.rectified``).
    source : names the calibration in error messages.

    Raises
    ------
    DataError
        malformed or non-finite K/D/P, fx or fy <= 0, an unsupported model or coefficient count.
    """
    K = np.asarray(k, dtype=np.float64).ravel()
    dist = np.asarray(d, dtype=np.float64).ravel()
    if K.size != 9:
        raise DataError(f"{source}: K must have 9 numbers, got {K.size}")
    if not np.all(np.isfinite(K)) or not np.all(np.isfinite(dist)):
        raise DataError(f"{source}: K or D contains NaN/inf")
    if rectified:
        P = np.zeros(12) if p is None else np.asarray(p, dtype=np.float64).ravel()
        if P.size != 12 or not np.all(np.isfinite(P)) or P[0] <= 0 or P[5] <= 0:
            raise DataError(f"{source}: camera.rectified is set but the projection matrix P is missing or "
                            f"invalid (fx'={P[0] if P.size == 12 else 'n/a'})")
        return Camera(K=P.reshape(3, 4)[:, :3].copy(), dist=np.zeros(5), width=int(width), height=int(height))
    if K[0] <= 0 or K[4] <= 0:
        raise DataError(f"{source}: invalid focal length fx={K[0]}, fy={K[4]}")
    name = distortion_model(model, dist, source)
    if dist.size == 0:
        dist = np.zeros(4 if name == "equidistant" else 5)
    return Camera(K=K.reshape(3, 3), dist=dist, width=int(width), height=int(height), model=name)


def info_model_name(camera: Camera) -> str:
    """The ``distortion_model`` to write for ``camera`` (ROS calls OpenCV's 8-term model rational_polynomial)."""
    if camera.model == "equidistant":
        return camera.model
    return "plumb_bob" if np.asarray(camera.dist).size <= 5 else "rational_polynomial"
