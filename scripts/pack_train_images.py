#!/usr/bin/env python3
"""Shrink a training-image folder for a lent GPU machine, whose working tree may carry 64 MiB in all.

Each image is downscaled (INTER_AREA) to the smallest size that still covers COVER times the trainer's largest
random zoom: ``kp2d train`` crops RESOLUTION out of an image resized to cover it times a zoom in [1, 1.5]
(``kp2d_ros.training.dataset.random_crop``), so at 320x240 no crop ever reads an image at more than 480x360.
Smaller images are only re-encoded. Everything is written as JPEG (quality Q) under DST with the same relative
paths. ``../shared/data/train_images`` (480 images, 69 MB) becomes 30 MB at 320x240 and quality 90.

    python scripts/pack_train_images.py ../shared/data/train_images gpu_data/train_images
    # then, in the device call: carry ["gpu_data"], DATA=gpu_data/train_images scripts/gpu_check.sh "$OUT"

DST must be a folder git ignores (`.git/info/exclude`): the images never go into the repository.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2

SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff")


def pack(src: Path, dst: Path, resolution: tuple[int, int] = (320, 240), max_zoom: float = 1.5,
         quality: int = 90) -> dict:
    """Write every image of ``src`` (recursive) under ``dst``; returns counts and sizes."""
    cover_w, cover_h = resolution[0] * max_zoom, resolution[1] * max_zoom
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images under {src}")
    written = resized = bytes_in = bytes_out = 0
    for path in files:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot read {path}")
        h, w = img.shape[:2]
        s = max(cover_w / w, cover_h / h)
        if s < 1:
            size = (max(round(cover_w), round(w * s)), max(round(cover_h), round(h * s)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            resized += 1
        out = dst / path.relative_to(src).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"cannot write {out}")
        written += 1
        bytes_in += path.stat().st_size
        bytes_out += out.stat().st_size
    return {"images": written, "resized": resized, "mb_in": round(bytes_in / 1e6, 1),
            "mb_out": round(bytes_out / 1e6, 1), "cover": [round(cover_w), round(cover_h)], "quality": quality}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--resolution", default="320x240", help="the training crop WIDTHxHEIGHT (default 320x240)")
    p.add_argument("--max-zoom", type=float, default=1.5, help="the trainer's largest random zoom (1.5)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (90)")
    args = p.parse_args(argv)
    try:
        w, h = (int(v) for v in args.resolution.lower().split("x"))
        report = pack(args.src, args.dst, (w, h), args.max_zoom, args.quality)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
