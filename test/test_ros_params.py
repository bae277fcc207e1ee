"""Node parameters = VOConfig: YAML (config/vo.yaml), defaults and the node agree; bad values fail clearly."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402

from kp2d_ros.config import VOConfig, load_config  # noqa: E402
from kp2d_ros.errors import ConfigError  # noqa: E402
from kp2d_ros.ros.node import VONode  # noqa: E402
from kp2d_ros.ros.params import default_parameters  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
YAML = REPO / "config" / "vo.yaml"
DOMAIN = 100 + (os.getpid() + 11) % 100


class NullPipeline:
    def process(self, frame):  # pragma: no cover - no images in these tests
        raise AssertionError("not used")

    def reset(self):
        pass


@pytest.fixture
def context():
    """A private rclpy context; ``args`` are the node's command line (``--ros-args ...``)."""
    made = []

    def make(args=()):
        ctx = rclpy.Context()
        rclpy.init(args=["vo_node", *args], context=ctx, domain_id=DOMAIN)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        rclpy.try_shutdown(context=ctx)


def build(context, args=(), overrides=()):
    node = VONode(pipeline=NullPipeline(), context=context(args), parameter_overrides=list(overrides))
    node.destroy_node()
    return node.cfg


def test_defaults_yaml_and_node_agree(context):
    defaults = VOConfig()
    assert build(context) == defaults
    from_yaml_node = build(context, ["--ros-args", "--params-file", str(YAML)])
    assert from_yaml_node == load_config(YAML) == defaults


def test_every_config_field_is_a_parameter(context):
    ctx = context()
    node = VONode(pipeline=NullPipeline(), context=ctx)
    try:
        for name, value in default_parameters().items():
            assert node.has_parameter(name), name
            got = node.get_parameter(name).value
            assert (list(got) if not isinstance(got, (str, bool, int, float)) else got) == value, name
    finally:
        node.destroy_node()


def test_overrides_match_offline_loader(context, tmp_path):
    overrides = {"frontend.type": "orb", "frontend.num_features": 500, "geometry.ransac_threshold_px": 2,
                 "frontend.resolution": [320, 240], "ros.base_frame": "robot", "camera.fx": 400}
    cfg = build(context, overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    assert cfg == load_config(None, overrides=overrides)
    assert cfg.geometry.ransac_threshold_px == 2.0 and isinstance(cfg.geometry.ransac_threshold_px, float)
    # the same through a params file with nested keys and a -r remap style command line
    f = tmp_path / "p.yaml"
    f.write_text("/**:\n  ros__parameters:\n    frontend:\n      type: orb\n      num_features: 500\n"
                 "    geometry:\n      ransac_threshold_px: 2\n")
    cfg2 = build(context, ["--ros-args", "--params-file", str(f), "-r", "image:=/camera/image_raw"])
    assert cfg2 == load_config(f)
    assert cfg2.frontend.type == "orb" and cfg2.geometry.ransac_threshold_px == 2.0


@pytest.mark.parametrize("name,value,match", [
    ("frontend.type", "bogus", "frontend.type"),
    ("frontend.num_features", "many", "frontend.num_features"),
    ("ros.qos_depth", 0, "ros.qos_depth"),
    ("ros.camera_to_base", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0], "ros.camera_to_base"),
    ("frontend.typo", 1, "typo"),
    ("geometry.camera_height_m", -1.65, "geometry.camera_height_m"),  # metric scale: a negative height
    ("geometry.camera_height_m", 1e4, "geometry.camera_height_m"),  # ... or an absurd one
    ("ros.scale_odometry_max_age_s", 0.0, "ros.scale_odometry_max_age_s"),
])
def test_invalid_parameter_raises_naming_it(context, name, value, match):
    with pytest.raises(ConfigError, match=match):
        VONode(pipeline=NullPipeline(), context=context(), parameter_overrides=[Parameter(name, value=value)])


def test_vo_node_exits_with_clear_error_on_bad_parameter():
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(DOMAIN))
    exe = Path(sys.executable).with_name("vo_node")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "kp2d_ros.ros.node"]
    p = subprocess.run([*cmd, "--ros-args", "-p", "geometry.method:=fancy"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2
    assert "geometry.method" in p.stderr and "fancy" in p.stderr
    assert "Traceback" not in p.stderr


def test_live_parameters_are_config_fields_and_the_rest_is_refused():
    """Every name in LIVE_PARAMETERS is a config field (renames in config.py must follow here); a
    fixed one is refused by name, a live one passes through the YAML validation."""
    from kp2d_ros.ros.params import LIVE_PARAMETERS, check_changes

    names = set(default_parameters())
    assert LIVE_PARAMETERS <= names
    cfg = VOConfig()
    for name in sorted(names - LIVE_PARAMETERS):
        with pytest.raises(ConfigError, match=f"{name} cannot change while the node runs"):
            check_changes(cfg, {name: default_parameters()[name]})
    assert check_changes(cfg, {"frontend.num_features": 700.0}).frontend.num_features == 700  # YAML coercion
    assert cfg.frontend.num_features == 2000  # the input is not modified
    with pytest.raises(ConfigError, match="ros.path_period_s: must be > 0"):
        check_changes(cfg, {"ros.path_period_s": 0.0})
