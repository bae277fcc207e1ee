"""ROS parameters = the fields of :class:`kp2d_ros.config.VOConfig` with dotted names.

Declaration walks the config dataclasses (the only place defaults live); reading back goes through
:func:`kp2d_ros.config.from_dict` and ``validate`` -- exactly what the offline tools use on the same
YAML file, so there is no second validation here. Parameters are declared with dynamic typing so
that a wrong type reaches the config's checks and is reported there, naming the key.
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


def default_parameters(cfg: VOConfig | None = None) -> dict[str, Any]:
    """Dotted parameter name -> default value (``{"frontend.type": "sift", ...}``)."""
    return flatten(to_dict(cfg if cfg is not None else VOConfig()))


def declare_parameters(node, cfg: VOConfig | None = None) -> None:
    """Declare every config field on ``node`` (those already declared from overrides are kept)."""
    descriptor = ParameterDescriptor(dynamic_typing=True, read_only=True)
    for name, value in default_parameters(cfg).items():
        if not node.has_parameter(name):
            node.declare_parameter(name, value, descriptor)


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
