"""ROS parameters = the fields of :class:`kp2d_ros.config.VOConfig` with dotted names.

Declaration walks the config dataclasses (the only place defaults live); reading back goes through
:func:`kp2d_ros.config.from_dict` and ``validate`` -- exactly what the offline tools use on the same
YAML file, so there is no second validation here. Parameters are declared with dynamic typing so
that a wrong type reaches the config's checks and is reported there, naming the key.

Live changes (``ros2 param set``): :data:`LIVE_PARAMETERS` may change while the node runs and
apply from the next frame; every other parameter is refused with a reason
(:func:`check_changes`). A change is validated by building the whole candidate configuration with
the same ``from_dict`` + ``validate`` as a YAML file.
"""
from __future__ import annotations

import array
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor

from kp2d_ros.config import VOConfig, flatten, from_dict, to_dict, unflatten
from kp2d_ros.errors import ConfigError

# Parameters every rclpy node may carry that are not part of the config.
ROS_BUILTIN_PARAMETERS = ("use_sim_time", "start_type_description_service")
_ROS_BUILTIN_PREFIXES = ("qos_overrides.",)

# Settings the core reads afresh for every frame (or that only steer publication), so that a new
# value is safe between two frames. Everything else is fixed when the node starts: the frontend
# type, its working size and network, IO-Net on/off and weights, devices, thread pools, the scale
# method and depth fusion (state carried from frame to frame), intrinsics, frames and topics.
LIVE_PARAMETERS = frozenset({
    "frontend.num_features", "frontend.score_threshold", "frontend.nms_radius", "frontend.orb_fast_threshold",
    "frontend.sift_contrast_threshold", "frontend.sift_edge_threshold", "frontend.grid_cols", "frontend.grid_rows",
    "matching.mutual", "matching.ratio", "matching.max_distance", "matching.io_threshold",
    "geometry.method", "geometry.ransac_threshold_px", "geometry.confidence", "geometry.max_iters",
    "geometry.distance_threshold", "geometry.min_inliers", "geometry.rotation_only_parallax_px",
    "geometry.refine_rounds", "geometry.motion_prior",
    "pipeline.min_parallax_px", "pipeline.keyframe_parallax_px", "pipeline.keyframe_min_inliers",
    "pipeline.direction_gate_deg",
    "pipeline.min_scale_points", "pipeline.max_scale_change", "pipeline.speed_change_sigma",
    "pipeline.min_triangulation_deg",
    "pipeline.rotation_keyframe_deg", "pipeline.turn_search_px", "pipeline.max_lost_frames",
    "pipeline.rejoin_frames", "pipeline.max_repeated_frames",
    "ros.publish_tf", "ros.publish_map_tf", "ros.publish_keypoints", "ros.publish_path", "ros.max_path_length", "ros.path_period_s",
    "ros.trajectory_file",
})


def default_parameters(cfg: VOConfig | None = None) -> dict[str, Any]:
    """Dotted parameter name -> default value (``{"frontend.type": "sift", ...}``)."""
    return flatten(to_dict(cfg if cfg is not None else VOConfig()))


def declare_parameters(node, cfg: VOConfig | None = None) -> None:
    """Declare every config field on ``node`` (those already declared from overrides are kept).

    None is read-only for rclpy: :func:`check_changes`, run by the node's set-parameters callback,
    refuses the ones outside :data:`LIVE_PARAMETERS` with its own reason.
    """
    for name, value in default_parameters(cfg).items():
        if not node.has_parameter(name):
            live = name in LIVE_PARAMETERS
            node.declare_parameter(name, value, ParameterDescriptor(
                dynamic_typing=True,
                description="applies from the next frame" if live else "fixed at start: restart the node to change"))


def _plain(value: Any) -> Any:
    if isinstance(value, array.array):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


def read_config(node) -> VOConfig:
    """The node's parameters as a validated :class:`VOConfig`.

    Every parameter the node holds except the ROS built-ins takes part, so an unknown key in a
    params file (``frontend.typo``) is reported like the offline tools report it.

    Raises
    ------
    ConfigError
        unknown key or invalid value; the message names the parameter.
    """
    values: dict[str, Any] = {}
    names = [n for n in node.list_parameters([], 0).names
             if n not in ROS_BUILTIN_PARAMETERS and not n.startswith(_ROS_BUILTIN_PREFIXES)]
    for name, param in zip(names, node.get_parameters(names)):
        if param.value is None:
            raise ConfigError(f"{name}: parameter has no value")
        values[name] = _plain(param.value)
    cfg = from_dict(VOConfig, unflatten(values))
    cfg.validate()
    return cfg


def check_changes(cfg: VOConfig, changes: dict[str, Any]) -> VOConfig:
    """The configuration ``cfg`` with ``changes`` (dotted name -> new value) applied, validated.

    Raises
    ------
    ConfigError
        a name that cannot change while the node runs (the message says why), an unknown name,
        or an invalid value (the same checks as a YAML file, naming the key).
    """
    for name in changes:
        if name in ROS_BUILTIN_PARAMETERS or name.startswith(_ROS_BUILTIN_PREFIXES):
            continue
        if name not in LIVE_PARAMETERS and name in default_parameters(cfg):
            raise ConfigError(f"{name} cannot change while the node runs (fixed when the node starts); "
                              f"restart the node with the new value")
    values = flatten(to_dict(cfg))
    values.update({k: _plain(v) for k, v in changes.items()
                   if k not in ROS_BUILTIN_PARAMETERS and not k.startswith(_ROS_BUILTIN_PREFIXES)})
    candidate = from_dict(VOConfig, unflatten(values))
    candidate.validate()
    return candidate


def apply_changes(cfg: VOConfig, candidate: VOConfig, names) -> None:
    """Copy the fields ``names`` (dotted, live) of ``candidate`` into ``cfg`` in place.

    In place, because the pipeline holds ``cfg``'s section objects and reads them every frame.
    """
    for name in names:
        section, _, key = name.partition(".")
        setattr(getattr(cfg, section), key, getattr(getattr(candidate, section), key))


def refresh_frontend(pipeline, names) -> None:
    """After live ``frontend.*`` changes: rebuild an OpenCV frontend (its detector is made with the
    settings; milliseconds). The learned frontend reads its section every frame and is kept."""
    from kp2d_ros.frontend import OpenCVFrontend, build_frontend

    frontend = getattr(pipeline, "frontend", None)
    if any(n.startswith("frontend.") for n in names) and isinstance(frontend, OpenCVFrontend):
        pipeline.frontend = build_frontend(frontend.cfg)
