"""Image decoding: files and ROS ``sensor_msgs`` Image / CompressedImage -> uint8 grey or RGB.

Every reader hands the pipeline (H, W) uint8 grey or (H, W, 3) uint8 RGB. 16-bit images are
scaled to 8 bit by ``round(v / 257)`` (so 8-bit data stored as ``v * 257`` comes back exact);
alpha channels are dropped.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from kp2d_ros.errors import DataError

# encoding -> (channels, numpy dtype, channel order of the result before conversion)
_ENCODINGS = {
    "mono8": (1, np.uint8, "grey"),
    "8uc1": (1, np.uint8, "grey"),
    "mono16": (1, np.uint16, "grey"),
    "16uc1": (1, np.uint16, "grey"),
    "rgb8": (3, np.uint8, "rgb"),
    "bgr8": (3, np.uint8, "bgr"),
    "8uc3": (3, np.uint8, "bgr"),
    "rgba8": (4, np.uint8, "rgba"),
    "bgra8": (4, np.uint8, "bgra"),
    "8uc4": (4, np.uint8, "bgra"),
    "rgb16": (3, np.uint16, "rgb"),
    "bgr16": (3, np.uint16, "bgr"),
}

# Camera-native layouts, demosaiced or converted by OpenCV to RGB (as cv_bridge does): encoding -> (bytes per
# pixel, numpy dtype of one sample, OpenCV code). ``yuv422`` is UYVY (ROS's name; ``uyvy`` since Humble),
# ``yuv422_yuy2`` YUYV (v4l2_camera's default for YUYV cameras); Bayer as ROS names it (``bayer_rggb8``: R at the
# top-left), mapped to OpenCV's shifted pattern names exactly as cv_bridge maps them.
_BAYER_CODES = {"rggb": cv2.COLOR_BayerBG2RGB, "bggr": cv2.COLOR_BayerRG2RGB, "gbrg": cv2.COLOR_BayerGR2RGB,
                "grbg": cv2.COLOR_BayerGB2RGB}
_CONVERTED = {
    "yuv422": (2, np.uint8, cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": (2, np.uint8, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": (2, np.uint8, cv2.COLOR_YUV2RGB_YUY2),
    "yuyv": (2, np.uint8, cv2.COLOR_YUV2RGB_YUY2),
    **{f"bayer_{pattern}{bits}": (1, np.uint8 if bits == 8 else np.uint16, code)
       for pattern, code in _BAYER_CODES.items() for bits in (8, 16)},
}
_BAYER_RED = {"rggb": (0, 0), "bggr": (1, 1), "gbrg": (1, 0), "grbg": (0, 1)}  # (row, col) of R in the 2x2 tile

SUPPORTED_ENCODINGS = tuple(_ENCODINGS) + tuple(_CONVERTED)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Scale a uint16 image to uint8 (``round(v / 257)``); uint8 passes through."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise DataError(f"unsupported image dtype {img.dtype}")


def _to_grey_or_rgb(img: np.ndarray, order: str) -> np.ndarray:
    """(H, W[, C]) in ``order`` -> (H, W) grey or (H, W, 3) RGB, uint8, contiguous."""
    img = to_uint8(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.ascontiguousarray(img)
    if order == "rgb":
        return np.ascontiguousarray(img)
    if order == "bgr":
        return np.ascontiguousarray(img[:, :, ::-1])
    if order == "rgba":
        return np.ascontiguousarray(img[:, :, :3])
    if order == "bgra":
        return np.ascontiguousarray(img[:, :, 2::-1])
    raise DataError(f"unsupported channel order {order}")


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W) uint8 grey or (H, W, 3) uint8 RGB.

    Raises
    ------
    DataError
        missing or undecodable file.
    """
    path = Path(path)
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror or e}") from None
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise DataError(f"cannot decode image {path} (not an image or corrupt)")
    order = {3: "bgr", 4: "bgra"}.get(img.shape[2] if img.ndim == 3 else 1, "grey")
    return _to_grey_or_rgb(img, order)


def _byte_array(data) -> np.ndarray:
    """A message's ``data`` (bytes, array.array('B') from rclpy, numpy from rosbags) as (N,) uint8, no copy where possible."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8)


def decode_image_msg(msg) -> np.ndarray:
    """``sensor_msgs/Image`` -> (H, W) uint8 grey or (H, W, 3) uint8 RGB.

    Used by the bag readers and by the ROS node. Honours row padding (``step``) and
    big-endian 16-bit data; 16-bit images are scaled to 8 bit (v / 257).

    Raises
    ------
    DataError
        unsupported encoding (named), zero size, ``step`` too small, or
        ``len(data) != step * height``.
    """
    enc = str(msg.encoding).lower()
    if enc not in SUPPORTED_ENCODINGS:
        raise DataError(f"unsupported image encoding '{msg.encoding}' (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    channels, dtype, order = _ENCODINGS[enc] if enc in _ENCODINGS else _CONVERTED[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise DataError(f"empty image ({w}x{h})")
    itemsize = np.dtype(dtype).itemsize
    row = w * channels * itemsize
    if step < row:
        raise DataError(f"image step {step} < width * bytes per pixel = {row} ({msg.encoding}, {w}x{h})")
    data = _byte_array(msg.data)
    if data.size != step * h:
        raise DataError(f"image data has {data.size} bytes, expected step * height = {step} * {h} = {step * h}")
    rows = data.reshape(h, step)[:, :row]
    img = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<"))
    if enc in _CONVERTED:  # packed YUV 4:2:2 (2 bytes a pixel) or a Bayer mosaic: OpenCV converts it to RGB
        if channels == 2 and w % 2:
            raise DataError(f"{msg.encoding}: a 4:2:2 image needs an even width, got {w}")
        if channels == 1 and min(h, w) < 2:
            raise DataError(f"{msg.encoding}: a Bayer image needs at least 2x2 pixels, got {w}x{h}")
        img = img.astype(dtype).reshape(h, w, channels) if channels > 1 else img.astype(dtype).reshape(h, w)
        return _to_grey_or_rgb(cv2.cvtColor(img, order), "rgb")
    img = img.astype(dtype).reshape(h, w, channels)
    return _to_grey_or_rgb(img, order)


def decode_compressed_msg(msg) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (JPEG/PNG) -> (H, W) uint8 grey or (H, W, 3) uint8 RGB.

    Raises
    ------
    DataError
        empty payload or data OpenCV cannot decode (the ``format`` string is named).
    """
    data = _byte_array(msg.data)
    if data.size == 0:
        raise DataError(f"empty compressed image (format '{msg.format}')")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise DataError(f"cannot decode compressed image (format '{msg.format}')")
    order = {3: "bgr", 4: "bgra"}.get(img.shape[2] if img.ndim == 3 else 1, "grey")
    return _to_grey_or_rgb(img, order)


def encode_image(img: np.ndarray, encoding: str) -> tuple[np.ndarray, int]:
    """(H, W) grey or (H, W, 3) RGB uint8 -> (raw bytes (K,) uint8, step) in ``encoding``.

    mono16/16UC1 store ``v * 257``. Colour encodings from a grey image replicate the channel;
    mono encodings from a colour image convert to grey.
    """
    enc = encoding.lower()
    if enc not in SUPPORTED_ENCODINGS:
        raise DataError(f"unsupported image encoding '{encoding}' (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    img = np.asarray(img)
    if enc in _CONVERTED:
        return _encode_converted(img, enc)
    channels, dtype, order = _ENCODINGS[enc]
    if channels == 1:
        out = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    else:
        rgb = img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)
        out = {"rgb": rgb, "bgr": rgb[:, :, ::-1],
               "rgba": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
               "bgra": np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 255, np.uint8)])}[order]
    if dtype == np.uint16:
        out = out.astype("<u2") * 257
    out = np.ascontiguousarray(out)
    step = out.shape[1] * channels * out.dtype.itemsize
    return out.view(np.uint8).reshape(-1), step


def _encode_converted(img: np.ndarray, enc: str) -> tuple[np.ndarray, int]:
    """(H, W) grey or (H, W, 3) RGB uint8 -> a camera-native layout of :data:`_CONVERTED` (bytes, step): YUV 4:2:2
    by OpenCV (even width), a Bayer mosaic by sampling each pixel's colour in the pattern (16 bit: ``v * 257``)."""
    rgb = img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)
    h, w = rgb.shape[:2]
    if enc.startswith("bayer_"):
        r0, c0 = _BAYER_RED[enc[6:10]]
        out = rgb[:, :, 1].copy()  # green on the other diagonal
        out[r0::2, c0::2] = rgb[r0::2, c0::2, 0]
        out[1 - r0::2, 1 - c0::2] = rgb[1 - r0::2, 1 - c0::2, 2]
        if enc.endswith("16"):
            out = out.astype("<u2") * 257
    else:
        if w % 2:
            raise DataError(f"{enc}: a 4:2:2 image needs an even width, got {w}")
        code = cv2.COLOR_RGB2YUV_UYVY if _CONVERTED[enc][2] == cv2.COLOR_YUV2RGB_UYVY else cv2.COLOR_RGB2YUV_YUY2
        out = cv2.cvtColor(np.ascontiguousarray(rgb), code)
    out = np.ascontiguousarray(out)
    return out.view(np.uint8).reshape(-1), out.nbytes // h


def encode_compressed(img: np.ndarray, fmt: str = "png") -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB uint8 -> PNG/JPEG bytes (K,) uint8."""
    bgr = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode("." + fmt, bgr)
    if not ok:
        raise DataError(f"cannot encode image as {fmt}")
    return buf.reshape(-1)
