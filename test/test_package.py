"""Package metadata: package.xml is valid for catkin_pkg, setup.py installs what ROS needs."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_package_xml_valid():
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(REPO / "package.xml"))
    pkg.validate()
    assert pkg.name == "kp2d_ros" and pkg.package_format == 3
    assert pkg.get_build_type() == "ament_python"
    assert all("@" in m.email and "." in m.email.split("@")[1] for m in pkg.maintainers)


def test_setup_installs_ament_resources():
    src = (REPO / "setup.py").read_text()
    tree = ast.parse(src)
    assert (REPO / "resource" / "kp2d_ros").is_file()
    for needle in ("share/ament_index/resource_index/packages", "launch/*.py", "config/*.yaml", "models/*.pt",
                   "vo_node = kp2d_ros.ros.node:main", "kp2d = kp2d_ros.cli:main"):
        assert needle in src, needle
    assert tree is not None
    cfg = (REPO / "setup.cfg").read_text()
    assert "script_dir=$base/lib/kp2d_ros" in cfg and "install_scripts=$base/lib/kp2d_ros" in cfg


def test_core_does_not_import_ros():
    """Only kp2d_ros/ros/ may import rclpy (the core runs without ROS)."""
    offenders = []
    for path in (REPO / "kp2d_ros").rglob("*.py"):
        if "ros" in path.relative_to(REPO / "kp2d_ros").parts[:1]:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("rclpy", "sensor_msgs", "nav_msgs", "geometry_msgs") for n in names):
                offenders.append(str(path))
    assert not offenders, offenders
