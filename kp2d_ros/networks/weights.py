"""Network weights on disk: a plain state dict plus a small metadata dict.

File format (``torch.save`` of a dict of tensors and plain Python values, loadable with
``torch.load(..., weights_only=True)``)::

    {"state_dict": {name: tensor}, "metadata": {"network": "KeyPointNet", "config": {...}, ...}}

``metadata["config"]`` rebuilds the architecture (e.g. the width multiplier), so one loader
serves the full and the CPU-sized variants.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import torch

from kp2d_ros.config import from_dict
from kp2d_ros.errors import ConfigError, ModelError

PACKAGE = "kp2d_ros"


def package_roots() -> list[Path]:
    """Where this package's own files (``models/``, ``config/``) are, in the order searched: the
    source checkout it is imported from, the ament share directory of an installed ROS package,
    ``<sys.prefix>/share/kp2d_ros`` of a pip install (existing folders only, no duplicates)."""
    roots = []
    src = Path(__file__).resolve().parents[2]
    if (src / "package.xml").is_file() and (src / PACKAGE).is_dir():
        roots.append(src)
    try:  # installed ROS package: <prefix>/share/kp2d_ros
        from ament_index_python.packages import get_package_share_directory  # type: ignore

        roots.append(Path(get_package_share_directory(PACKAGE)))
    except Exception:  # noqa: BLE001 - ament not installed or package not in the index
        pass
    roots.append(Path(sys.prefix) / "share" / PACKAGE)
    out: list[Path] = []
    for r in roots:
        if r.is_dir() and all(r.resolve() != o.resolve() for o in out):
            out.append(r)
    return out


def resolve_model_path(path: str | os.PathLike) -> Path:
    """Find a model file.

    Absolute paths are taken as they are, and so are paths that start with ``./`` or ``../``
    (relative to the working directory). Any other relative path (the config defaults,
    ``models/keypoint_net.pt``) is looked up in :func:`package_roots` first and then in the working
    directory, so that a stray ``models/`` folder where the node is started does not replace the
    shipped weights; ``./models/x.pt`` picks the working directory's copy on purpose.

    Raises
    ------
    ModelError
        when no candidate exists (the message lists the places tried).
    """
    text = os.fspath(path)
    p = Path(text).expanduser()
    if p.is_absolute():
        if p.is_file():
            return p
        raise ModelError(f"model file not found: {p}")
    if text.startswith(("./", "../")):
        candidates = [Path.cwd() / p]
    else:
        candidates = [root / p for root in package_roots()] + [Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c
    raise ModelError(f"model file not found: {path} (tried {', '.join(str(c) for c in candidates)})")


def model_summary(model: torch.nn.Module) -> str:
    """One line naming a network loaded by :func:`load_network`: its file and the metadata that
    tell versions apart, e.g. ``KeyPointNet /.../models/keypoint_net.pt (step 3000, width 0.5)``."""
    meta = getattr(model, "metadata", None) or {}
    cfg = meta.get("config") or {}
    parts = [f"{k} {meta[k]}" for k in ("step", "steps", "base_step", "training") if k in meta]
    width = cfg.get("width_multiplier", cfg.get("channels"))
    if width is not None:
        parts.append(f"width {width}")
    name = meta.get("network", type(model).__name__)
    return f"{name} {getattr(model, 'source_path', '(not from a file)')} ({', '.join(parts) or 'no metadata'})"


def save_network(model: torch.nn.Module, path: str | os.PathLike, **metadata: Any) -> Path:
    """Atomically write ``model``'s weights, its config and ``metadata`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"network": type(model).__name__, "config": dataclasses.asdict(model.config), **metadata}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": state, "metadata": meta}, tmp)
    os.replace(tmp, path)
    return path


def read_weights(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state_dict, metadata) of a weights file, loaded with ``weights_only=True``.

    Raises
    ------
    ModelError
        missing, unreadable or malformed file.
    """
    p = resolve_model_path(path)
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types on corrupt files
        raise ModelError(f"cannot read weights {p}: {type(e).__name__}: {e}") from None
    if not isinstance(blob, dict) or "state_dict" not in blob or not isinstance(blob["state_dict"], dict):
        raise ModelError(f"{p}: not a kp2d_ros weights file (expected a dict with 'state_dict' and 'metadata')")
    meta = blob.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ModelError(f"{p}: metadata must be a dict")
    return blob["state_dict"], meta


def load_network(cls: type, config_cls: type, path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Instantiate ``cls`` from the config stored with the weights and load them (eval mode).

    The model carries ``metadata`` (the file's dict) and ``source_path`` (the file found by
    :func:`resolve_model_path`).

    Raises
    ------
    ModelError
        missing/corrupt file, a file for another network, or weights that do not fit.
    """
    source = resolve_model_path(path)
    state, meta = read_weights(source)
    name = meta.get("network")
    if name is not None and name != cls.__name__:
        raise ModelError(f"{path}: holds a {name}, expected a {cls.__name__}")
    try:
        config = from_dict(config_cls, meta.get("config") or {})
        config.validate()
    except ConfigError as e:
        raise ModelError(f"{path}: invalid network config in metadata: {e}") from None
    model = cls(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{path}: weights do not match {cls.__name__}: {str(e).splitlines()[0]}") from None
    model.metadata = meta
    model.source_path = source  # the file actually loaded (model_summary logs it)
    return model.to(device).eval()
