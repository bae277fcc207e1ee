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
from pathlib import Path
from typing import Any

import torch

from kp2d_ros.config import from_dict
from kp2d_ros.errors import ConfigError, ModelError

PACKAGE = "kp2d_ros"


def resolve_model_path(path: str | os.PathLike) -> Path:
    """Find a model file: absolute as is; relative against CWD, the repo/package root, the ament share dir.

    Raises
    ------
    ModelError
        when no candidate exists (the message lists the places tried).
    """
    p = Path(path).expanduser()
    if p.is_absolute():
        if p.is_file():
            return p
        raise ModelError(f"model file not found: {p}")
    candidates = [Path.cwd() / p, Path(__file__).resolve().parents[2] / p]
    try:  # installed ROS package: <prefix>/share/kp2d_ros/models/...
        from ament_index_python.packages import get_package_share_directory  # type: ignore

        candidates.append(Path(get_package_share_directory(PACKAGE)) / p)
    except Exception:  # noqa: BLE001 - ament not installed or package not in the index
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise ModelError(f"model file not found: {path} (tried {', '.join(str(c) for c in candidates)})")


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

    Raises
    ------
    ModelError
        missing/corrupt file, a file for another network, or weights that do not fit.
    """
    state, meta = read_weights(path)
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
    return model.to(device).eval()
