"""Robustness variants of any sequence: a stop, dropped frames, a lower frame rate, an exposure change, an occluder.

``kp2d replay PATH --simulate SPEC`` and the tests build them with :func:`simulate`. SPEC is a
comma-separated list of (each at most once but ``drop`` and ``gain``; frame numbers are those of the original
sequence):

``frames=S:E``  keep only frames S..E (inclusive), e.g. a clip of a longer sequence;
``drop=A:B``    remove frames A..B (inclusive), as a busy node drops them; the other frames keep
                their stamps, so the gap shows as a longer interval. ``drop=K`` removes frame K; ``drop``
                may be given several times (a node's scattered drops, e.g. ``drop=22,drop=27:28``);
``every=N``     keep every N-th frame (0, N, 2N, ... counted from the first kept frame);
``stop=K:R``    after frame K insert R copies of it (identical images) one median frame interval
                apart, and shift every later stamp by R intervals: a stop of R intervals with the
                ground truth held at frame K;
``gain=A:B:P``  multiply the intensities of frames A..B (inclusive) by P percent, clipped to the image's
                range: an auto-exposure step (``gain=60:159:50`` halves the brightness from frame 60 on, as
                when a robot drives into shade; ``P`` > 100 brightens and saturates). ``gain`` may be given
                several times (a later range multiplies on top where they overlap);
``jitter=P``    move every stamp by a random offset within +-P percent of the median frame interval (seeded, the
                same offsets in every run; P < 50 keeps the order): a camera driver that stamps each image when the
                host receives it, not when it was exposed. The images and their ground truth stay; only the times the
                pipeline sees change;
``repeat=A:B``   frames A..B show frame A-1's image again (the same bytes), with their own stamps and ground truth:
                a camera or driver that republishes its last image while the robot moves on (a stalled USB
                camera, a throttle or synchroniser that pairs the same image twice). ``repeat=K`` repeats it once;
                ``repeat`` may be given several times. The repeated frames' true motion is not in their images, so
                their poses cannot follow it; what matters is the frame after, whose image has moved by all of it;
``occlude=A:B``  frames A..B show a textured panel that fills the view and slides sideways by 2 % of the width per
                frame (:func:`occluder`): something that moves on its own passes right in front of the camera (a
                person, a door, a vehicle alongside). Nothing of the scene is seen; what tracks is the panel's motion;
``body=P``       the bottom P percent of every frame's rows show one fixed textured panel (:func:`body_panel`), the same
                pixels in every frame: the robot's own body in view (a car's bonnet, a bumper, a gripper or a sensor
                mount), or anything else that moves with the camera. Its points stay where they are in the image
                whatever the camera does;
``passer=W``     during the stop (needs ``stop=K:R``, R >= 2) a textured panel W percent of the width wide and 70 % of the
                height tall crosses the view from right to left (:func:`passer_panel`): a vehicle or a crowd passing a
                robot that waits. Each of the stop's images gets fresh camera noise (1 % of the range), so the
                standing view is never quite the same image twice. ``passer=W:A:B``: it crosses during frames A..B
                instead, whatever the camera does (a vehicle overtaking a robot that drives), without added noise.

Example: ``stop=60:10`` on KITTI (10 Hz) is a 1 s stop at frame 60; ``drop=61:64`` drops 4 frames.
:func:`drop_spec` writes the SPEC of given dropped frames (``kp2d play --record-drops``: the frames a live node
dropped, replayed deterministically).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from kp2d_ros.data.sequence import Sequence
from kp2d_ros.errors import DataError
from kp2d_ros.frontend_common import exposed
from kp2d_ros.types import Trajectory


@dataclass
class Faults:
    """Parsed ``--simulate`` specification (None / 1: not applied).

    Attributes
    ----------
    frames : (S, E) inclusive range of original frames to keep.
    drop : (A, B) inclusive ranges of original frames to remove.
    every : keep every N-th frame.
    stop : (K, R) R copies of original frame K.
    gain : (A, B, P) frames A..B with their intensities multiplied by P / 100.
    occlude : (A, B) frames A..B replaced by a sliding textured panel.
    jitter : stamps moved by up to +-P percent of the median frame interval (0: not).
    repeat : (A, B) inclusive ranges of original frames that show frame A-1's image.
    body : percent of the rows, from the bottom, that show a fixed panel in every frame (0: none).
    passer : percent of the width of a panel that crosses the view during the stop (0: none).
    passer_frames : (A, B) the frames it crosses in instead of the stop's (None: the stop's).
    """

    frames: tuple[int, int] | None = None
    drop: tuple[tuple[int, int], ...] = ()
    every: int = 1
    stop: tuple[int, int] | None = None
    gain: tuple[tuple[int, int, int], ...] = ()
    occlude: tuple[int, int] | None = None
    jitter: int = 0
    repeat: tuple[tuple[int, int], ...] = ()
    body: int = 0
    passer: int = 0
    passer_frames: tuple[int, int] | None = None

    @classmethod
    def parse(cls, spec: str) -> "Faults":
        """``"stop=60:10,drop=61:64,every=3,frames=30:99,gain=70:99:50"`` -> Faults.

        Raises
        ------
        DataError
            unknown key, a key given twice, or a malformed / negative value.
        """
        out, seen = cls(), set()
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in ("frames", "drop", "every", "stop", "gain", "occlude", "jitter", "repeat", "body",
                                      "passer"):
                raise DataError(f"--simulate: expected frames=S:E, drop=A:B, every=N, stop=K:R, gain=A:B:P, "
                                f"occlude=A:B, jitter=P, repeat=A:B, body=P or passer=W[:A:B], got {item!r}")
            if key in seen and key not in ("drop", "gain", "repeat"):
                raise DataError(f"--simulate: {key} given twice")
            seen.add(key)
            try:
                nums = [int(v) for v in value.split(":")]
            except ValueError:
                raise DataError(f"--simulate: {key} needs integers, got {value!r}") from None
            if key in ("drop", "repeat") and len(nums) == 1:
                nums = nums * 2
            if key == "gain":
                if len(nums) != 3 or any(n < 0 for n in nums):
                    raise DataError(f"--simulate: gain={value} is not three integers A:B:P >= 0 (P in percent)")
                if nums[1] < nums[0]:
                    raise DataError(f"--simulate: gain={value}: the range ends before it starts")
                out.gain += ((nums[0], nums[1], nums[2]),)
                continue
            if key == "jitter":
                if len(nums) != 1 or not 0 <= nums[0] < 50:
                    raise DataError(f"--simulate: jitter={value} is not one integer P in 0..49 (percent of the frame "
                                    "interval; 50 and more could reorder the stamps)")
                out.jitter = nums[0]
                continue
            if key == "passer" and len(nums) == 3:
                if not 0 < nums[0] < 100 or nums[1] < 0 or nums[2] <= nums[1]:
                    raise DataError(f"--simulate: passer={value} is not W:A:B with W in 1..99 (percent of the width) "
                                    "and frames A < B")
                out.passer, out.passer_frames = nums[0], (nums[1], nums[2])
                continue
            if key in ("body", "passer"):
                if len(nums) != 1 or not 0 < nums[0] < 100:
                    raise DataError(f"--simulate: {key}={value} is not " + ("one integer P in 1..99 (percent of the "
                                    "rows)" if key == "body" else "W or W:A:B with W in 1..99 (percent of the width)"))
                setattr(out, key, nums[0])
                continue
            if any(n < 0 for n in nums) or len(nums) != (1 if key == "every" else 2):
                raise DataError(f"--simulate: {key}={value} is not {'N' if key == 'every' else 'two integers A:B'} >= 0")
            if key == "every":
                if nums[0] < 1:
                    raise DataError(f"--simulate: every must be >= 1, got {nums[0]}")
                out.every = nums[0]
                continue
            if key in ("frames", "drop", "occlude", "repeat") and nums[1] < nums[0]:
                raise DataError(f"--simulate: {key}={value}: the range ends before it starts")
            if key == "repeat" and nums[0] < 1:
                raise DataError(f"--simulate: repeat={value}: frame 0 has no image before it to repeat")
            if key == "drop":
                out.drop += ((nums[0], nums[1]),)
            elif key == "repeat":
                out.repeat += ((nums[0], nums[1]),)
            else:
                setattr(out, key, (nums[0], nums[1]))
        if out.passer and out.passer_frames is None and (out.stop is None or out.stop[1] < 2):
            raise DataError("--simulate: passer=W crosses the view during a stop: it needs stop=K:R with R >= 2 "
                            "(or passer=W:A:B, frames A..B)")
        return out

    def label(self) -> str:
        """Short suffix for the sequence name, e.g. ``+stop60x10``."""
        parts = []
        if self.frames:
            parts.append(f"f{self.frames[0]}-{self.frames[1]}")
        for a, b in self.drop:
            parts.append(f"drop{a}" if a == b else f"drop{a}-{b}")
        if self.every > 1:
            parts.append(f"every{self.every}")
        if self.stop:
            parts.append(f"stop{self.stop[0]}x{self.stop[1]}")
        for a, b, pct in self.gain:
            parts.append(f"gain{a}-{b}x{pct}")
        if self.occlude:
            parts.append(f"occlude{self.occlude[0]}-{self.occlude[1]}")
        if self.jitter:
            parts.append(f"jitter{self.jitter}")
        for a, b in self.repeat:
            parts.append(f"repeat{a}" if a == b else f"repeat{a}-{b}")
        if self.body:
            parts.append(f"body{self.body}")
        if self.passer:
            parts.append(f"passer{self.passer}" + (f"f{self.passer_frames[0]}-{self.passer_frames[1]}"
                                                   if self.passer_frames else ""))
        return "".join("+" + p for p in parts)


def drop_spec(frames) -> str | None:
    """The ``--simulate`` SPEC that removes ``frames`` (original frame numbers; runs of consecutive frames become
    ``drop=A:B``), e.g. ``[3, 7, 8, 9]`` -> ``"drop=3,drop=7:9"``; None when there is none to remove.

    Raises
    ------
    DataError
        a negative frame number.
    """
    idx = sorted({int(i) for i in frames})
    if idx and idx[0] < 0:
        raise DataError(f"dropped frame numbers must be >= 0, got {idx[0]}")
    runs: list[list[int]] = []
    for i in idx:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"drop={a}" if a == b else f"drop={a}:{b}" for a, b in runs) or None


def simulate(sequence: Sequence, faults: Faults | str) -> Sequence:
    """The variant of ``sequence`` described by ``faults`` (lazy: images are read on iteration).

    Returns
    -------
    Sequence with the selected (and repeated) frames, their stamps, and the ground truth at those
    stamps (held during a stop).

    Raises
    ------
    DataError
        a frame number outside the sequence, a stop at a removed frame, or nothing left.
    """
    if isinstance(faults, str):
        faults = Faults.parse(faults)
    n = len(sequence)
    stamps = sequence.stamps
    for key, rng in ([("frames", faults.frames), ("stop", faults.stop)] + [("drop", d) for d in faults.drop]
                     + [("gain", g[:2]) for g in faults.gain] + [("occlude", faults.occlude)]
                     + [("repeat", r) for r in faults.repeat] + [("passer", faults.passer_frames)]):
        if rng is not None and not (0 <= rng[0] < n and (key == "stop" or rng[1] < n)):
            raise DataError(f"--simulate: {key}={rng[0]}:{rng[1]} is outside the sequence's frames 0..{n - 1}")
    keep = np.ones(n, bool)
    if faults.frames:
        keep[:faults.frames[0]] = False
        keep[faults.frames[1] + 1:] = False
    for a, b in faults.drop:
        keep[a:b + 1] = False
    idx = np.flatnonzero(keep)
    if faults.every > 1 and idx.size:
        first = int(idx[0])
        idx = idx[(idx - first) % faults.every == 0]
    new_stamps = stamps[idx].astype(np.float64)
    copy = np.zeros(idx.size, int)  # which of the stop's copies each image is (0: none)
    dt = float(np.median(np.diff(stamps))) if n > 1 else 1.0  # the median frame interval: a stop's, the jitter's unit
    dt = dt if np.isfinite(dt) and dt > 0 else 1.0
    if faults.stop and faults.stop[1] > 0:
        k, r = faults.stop
        pos = np.flatnonzero(idx == k)
        if pos.size == 0:
            raise DataError(f"--simulate: stop at frame {k}, which is not part of the simulated sequence")
        p = int(pos[0])
        new_stamps = np.concatenate([new_stamps[:p + 1], new_stamps[p] + dt * np.arange(1, r + 1),
                                     new_stamps[p + 1:] + r * dt])
        idx = np.concatenate([idx[:p + 1], np.full(r, k), idx[p + 1:]])
        copy = np.concatenate([copy[:p + 1], np.arange(1, r + 1), copy[p + 1:]])
    if idx.size == 0:
        raise DataError("--simulate: no frame left")
    if faults.jitter:
        offsets = np.random.default_rng(0).uniform(-1.0, 1.0, n)  # one offset per original frame, in every variant
        new_stamps = new_stamps + offsets[idx] * faults.jitter / 100.0 * dt
    order = [int(i) for i in idx]
    source = np.arange(n)  # whose image each original frame shows
    for a, b in faults.repeat:
        source[a:b + 1] = source[a - 1]
    for i in order:
        if source[i] != i and not keep[source[i]]:
            raise DataError(f"--simulate: frame {i} repeats frame {source[i]}'s image, which is removed")
    gains = np.ones(n)
    for a, b, pct in faults.gain:
        gains[a:b + 1] *= pct / 100.0

    def faulted(i: int, image: np.ndarray) -> np.ndarray:
        if faults.occlude and faults.occlude[0] <= i <= faults.occlude[1]:
            image = occluder(image, i - faults.occlude[0])
        image = exposed(image, gains[i])
        return body_panel(image, faults.body, seed=i) if faults.body else image

    def passing(j: int, image: np.ndarray) -> np.ndarray:
        if faults.passer_frames:
            a, b = faults.passer_frames
            i = int(order[j])
            return passer_panel(image, i - a + 1, b - a + 1, faults.passer, noise=False) if a <= i <= b else image
        if not faults.passer or copy[j] == 0:
            return image
        return passer_panel(image, int(copy[j]), faults.stop[1], faults.passer, seed=j)

    def images():
        if sequence._loader is not None:  # random access (folder layouts): read only the frames used
            yield from map(load, range(len(order)))
            return
        want = iter(order)
        nxt = next(want, None)
        shown: dict[int, np.ndarray] = {}  # the last image a repeat shows again, by its original frame
        sources = {int(source[i]) for i in order}
        j = 0  # the output position
        for i, frame in enumerate(sequence):
            if i in sources:  # a kept frame (a repeat's image is checked to be kept above)
                shown = {i: faulted(i, frame.image)}
            while nxt == i:
                yield passing(j, shown[source[i]] if source[i] in shown else faulted(i, frame.image))
                j += 1
                nxt = next(want, None)
            if nxt is None:
                return

    def load(j: int) -> np.ndarray:
        i = int(source[order[j]])
        return passing(j, faulted(i, sequence.frame(i).image))

    return Sequence(sequence.name + faults.label(), sequence.layout, sequence.camera, new_stamps, images,
                    ground_truth=_ground_truth(sequence, idx, new_stamps), loader=load)


def occluder(image: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th view of ``occlude``'s panel in place of ``image`` (same shape and dtype), slid left by 2 % of the
    width per frame (:func:`_panel`). Its brightness spans 10-90 % of the image's range."""
    h, w = image.shape[:2]
    start = (max(1, round(0.02 * w)) * k) % (2 * w)
    top = _full_scale(image)
    view = (0.1 + 0.8 * _panel(h, w)[:, start:start + w]) * top
    if image.ndim == 3:
        view = np.repeat(view[:, :, None], image.shape[2], axis=2)
    return view.astype(image.dtype)


def _full_scale(image: np.ndarray) -> float:
    """The top of ``image``'s range: its dtype's maximum for integers, else its largest value (1 if none)."""
    return float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else float(np.max(image) or 1.0)


def body_panel(image: np.ndarray, percent: int, seed: int = 0) -> np.ndarray:
    """``image`` with its bottom ``percent`` % of rows replaced by one fixed textured panel (``body``), brightness
    10-60 % of the image's range (a darker body below the scene), with a curved top edge (a bonnet's outline):
    ``percent`` % of the rows in the middle, 3/4 of that at the sides. A camera's noise (Gaussian, 1 % of the range)
    is drawn afresh for each ``seed`` (the frame): the panel itself never moves, its pixels are never quite equal."""
    h, w = image.shape[:2]
    rows = max(1, round(h * percent / 100.0))
    top = _full_scale(image)
    out = image.copy()
    panel = _panel(h, w)[:, w:2 * w]  # the panel's middle third: not occlude's first view
    edge = h - rows + np.round(0.25 * rows * (1.0 - np.sin(np.linspace(0.0, np.pi, w)))).astype(int)  # P % in the middle
    below = np.arange(h)[:, None] >= np.minimum(edge, h - 1)[None, :]
    view = (0.1 + 0.5 * panel + np.random.default_rng(seed).normal(0.0, 0.01, panel.shape)) * top
    view = np.clip(view, 0.0, top)
    if image.ndim == 3:
        below, view = below[:, :, None].repeat(image.shape[2], 2), view[:, :, None].repeat(image.shape[2], 2)
    out[below] = view[below].astype(image.dtype)
    return out


def passer_panel(image: np.ndarray, k: int, copies: int, percent: int, seed: int = 0, noise: bool = True) -> np.ndarray:
    """The ``k``-th of ``copies`` images (1-based; a stop's) with ``passer``'s panel in front of it: ``percent`` % of
    the width wide, rows 15-85 %, brightness 10-90 % of the range. Its left edge moves at a constant speed from the
    right border (before the first copy) to ``percent`` % of the width beyond the left one (after the last), so
    it enters, crosses and leaves the view during the stop; the panel's texture moves with it (the third third of
    :func:`_panel`: neither ``occlude``'s first view nor ``body``'s). With ``noise``, fresh Gaussian noise (1 % of the
    range, seeded by ``seed``) over the whole image: a standing camera whose images are never equal."""
    h, w = image.shape[:2]
    width = max(1, round(w * percent / 100.0))
    top = _full_scale(image)
    out = image.astype(np.float32)
    left = round(w - k * (w + width) / (copies + 1))
    r0, r1 = round(0.15 * h), round(0.85 * h)
    a, b = max(left, 0), min(left + width, w)  # the panel's columns in view
    if b > a:
        view = (0.1 + 0.8 * _panel(h, w)[r0:r1, 2 * w + a - left:2 * w + b - left]) * top
        out[r0:r1, a:b] = view[:, :, None] if image.ndim == 3 else view
    if noise:
        out += np.random.default_rng(seed).normal(0.0, 0.01 * top, out.shape[:2])[(...,) + (None,) * (image.ndim - 2)]
    return np.clip(out, 0.0, top).astype(image.dtype)


@lru_cache(maxsize=2)
def _panel(h: int, w: int) -> np.ndarray:
    """(h, 3 w) values in [0, 1], the same for every frame of a size (seed 0; built once, read only): smoothed noise
    at three scales of equal contrast, half of it thresholded at its median (camouflage: blobs, corners and sharp
    edges for any detector, and for the blur gate, which takes smooth noise alone for blur)."""
    rng = np.random.default_rng(0)
    panel = sum(cv2.GaussianBlur(rng.random((h, 3 * w)).astype(np.float32), (0, 0), sigma) * sigma  # equal contrast
                for sigma in (2.0, 6.0, 18.0))
    lo, hi = np.percentile(panel, (1, 99))
    panel = np.clip((panel - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    panel = 0.5 * panel + 0.5 * (panel > np.median(panel))
    panel.flags.writeable = False
    return panel


def _ground_truth(sequence: Sequence, idx: np.ndarray, new_stamps: np.ndarray) -> Trajectory | None:
    """Ground truth of the original frames ``idx`` (where it has a pose at their stamps), at ``new_stamps``."""
    gt = sequence.ground_truth
    if gt is None or len(gt) == 0:
        return None
    order = np.argsort(gt.stamps, kind="stable")
    gs = np.asarray(gt.stamps, np.float64)[order]
    t = sequence.stamps[idx]
    pos = np.clip(np.searchsorted(gs, t), 0, gs.size - 1)
    lo = np.clip(pos - 1, 0, gs.size - 1)
    near = np.where(np.abs(gs[lo] - t) <= np.abs(gs[pos] - t), lo, pos)
    ok = np.abs(gs[near] - t) <= 1e-6
    if not ok.any():
        return None
    return Trajectory(stamps=new_stamps[ok], poses=np.asarray(gt.poses)[order][near[ok]])
