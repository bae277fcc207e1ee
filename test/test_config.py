"""Config: defaults, YAML file, round trip and error cases."""
from pathlib import Path

import pytest
import yaml

from kp2d_ros.config import (VOConfig, dump_config, flatten, from_dict, load_config, strip_ros_wrapper,
                             to_dict, unflatten)
from kp2d_ros.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
VO_YAML = REPO / "config" / "vo.yaml"


def test_vo_yaml_has_exactly_the_dataclass_keys():
    """config/vo.yaml (the node's params file) and the dataclasses declare the same keys."""
    raw = yaml.safe_load(VO_YAML.read_text())
    assert set(raw) == {"/**"} and set(raw["/**"]) == {"ros__parameters"}
    file_keys = set(flatten(raw["/**"]["ros__parameters"]))
    assert file_keys == set(flatten(to_dict(VOConfig())))


def test_vo_yaml_loads_and_validates():
    cfg = load_config(VO_YAML)
    assert isinstance(cfg, VOConfig)


def test_round_trip(tmp_path):
    cfg = load_config(VO_YAML, overrides={"frontend.type": "orb", "geometry.ransac_threshold_px": 0.75,
                                          "frontend.resolution": [640, 480]})
    out = tmp_path / "effective.yaml"
    dump_config(cfg, out)
    again = load_config(out)
    assert again == cfg
    assert again.frontend.resolution == [640, 480]
    # bare mapping (no ROS wrapper) too
    bare = tmp_path / "bare.yaml"
    dump_config(cfg, bare, ros=False)
    assert load_config(bare) == cfg


def test_dotted_keys_and_wrapper():
    data = {"kp2d_vo": {"ros__parameters": {"frontend.type": "orb", "geometry": {"min_inliers": 30}}}}
    cfg = from_dict(VOConfig, strip_ros_wrapper(data))
    assert cfg.frontend.type == "orb" and cfg.geometry.min_inliers == 30
    assert unflatten(flatten({"a": {"b": 1, "c": {"d": 2}}})) == {"a": {"b": 1, "c": {"d": 2}}}


@pytest.mark.parametrize("overrides, key", [
    ({"frontend.typo": 1}, "frontend.typo"),
    ({"nosection.x": 1}, "nosection"),
    ({"frontend.type": "surf"}, "frontend.type"),
    ({"geometry.confidence": 1.5}, "geometry.confidence"),
    ({"geometry.min_inliers": "many"}, "geometry.min_inliers"),
    ({"geometry.min_inliers": 2.5}, "geometry.min_inliers"),
    ({"matching.mutual": "yes"}, "matching.mutual"),
    ({"frontend.resolution": [640]}, "frontend.resolution"),
    ({"ros.camera_to_base": [0, 0, 0, 0, 0, 0, 2]}, "ros.camera_to_base"),
    ({"camera.fx": float("nan")}, "camera.fx"),
    ({"pipeline.blur_ratio": 1.0}, "pipeline.blur_ratio"),
    ({"pipeline.max_blurred_frames": 0}, "pipeline.max_blurred_frames"),
    ({"frontend.min_brightness": 300.0}, "frontend.min_brightness"),
    ({"frontend.min_brightness": -1.0}, "frontend.min_brightness"),
    ({"refine.exposure_min_change": -0.5}, "refine.exposure_min_change"),
])
def test_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config(VO_YAML, overrides=overrides)
    assert key in str(e.value)


def test_missing_and_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("frontend: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_int_accepted_for_float_fields():
    cfg = load_config(None, overrides={"geometry.ransac_threshold_px": 2})
    assert cfg.geometry.ransac_threshold_px == 2.0 and isinstance(cfg.geometry.ransac_threshold_px, float)
