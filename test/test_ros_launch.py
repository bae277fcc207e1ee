"""Static checks of launch/vo.launch.py and config/vo.rviz (launch and rviz are not installable here).

The launch file is parsed, not run: its arguments, the executables, packages and files it names,
and its remappings are checked against setup.py, package.xml and the node's real topic names.
"""
import ast
import fnmatch
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "vo.launch.py"
RVIZ = REPO / "config" / "vo.rviz"
PACKAGE = "kp2d_ros"


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def kwarg(call: ast.Call, key: str):
    for k in call.keywords:
        if k.arg == key:
            return k.value
    return None


def const(node) -> object:
    return ast.literal_eval(node)


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


@pytest.fixture(scope="module")
def data_files() -> list[tuple[str, list[str]]]:
    """setup.py data_files as (destination, [glob patterns or paths])."""
    setup = ast.parse((REPO / "setup.py").read_text())
    pkg = {n.targets[0].id: const(n.value) for n in setup.body
           if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and isinstance(n.value, ast.Constant)}
    (call,) = calls(setup, "setup")
    out = []
    for tup in kwarg(call, "data_files").elts:
        dest_node, files_node = tup.elts
        if isinstance(dest_node, ast.JoinedStr):
            dest = "".join(str(const(v)) if isinstance(v, ast.Constant) else str(pkg[v.value.id])
                           for v in dest_node.values)
        else:
            dest = const(dest_node)
        pats = [const(c.args[0]) for c in calls(files_node, "glob")]
        pats += [n.value for n in ast.walk(files_node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                 and not any(n.value == p for p in pats)]
        out.append((dest, pats))
    return out


def installed_to(rel: str, data_files) -> str | None:
    for dest, pats in data_files:
        if any(fnmatch.fnmatch(rel, p) for p in pats):
            return dest
    return None


def test_generate_launch_description_and_arguments(tree):
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    args = {const(c.args[0]) for c in calls(tree, "DeclareLaunchArgument")}
    assert {"params_file", "image", "camera_info", "use_rviz", "bag"} <= args
    # every LaunchConfiguration used is declared
    used = {const(c.args[0]) for c in calls(tree, "LaunchConfiguration")}
    assert used <= args


def test_launch_file_installed(data_files):
    assert installed_to("launch/vo.launch.py", data_files) == f"share/{PACKAGE}/launch"


def test_files_named_exist_and_are_installed(tree, data_files):
    """os.path.join(share, "config", X): X exists in the repo and setup.py installs it there."""
    joins = [c for c in calls(tree, "join") if c.args and getattr(c.args[0], "id", None) == "share"]
    assert len(joins) >= 3
    for c in joins:
        rel = "/".join(const(a) for a in c.args[1:])
        assert (REPO / rel).is_file(), rel
        assert installed_to(rel, data_files) == f"share/{PACKAGE}/{os.path.dirname(rel)}", rel


def test_executables_exist(tree):
    nodes = calls(tree, "Node")
    pkgs = {(const(kwarg(n, "package")), const(kwarg(n, "executable"))) for n in nodes}
    assert (PACKAGE, "vo_node") in pkgs
    setup = (REPO / "setup.py").read_text()
    assert '"vo_node = kp2d_ros.ros.node:main"' in setup
    deps = {e.text for e in ET.parse(REPO / "package.xml").getroot() if e.tag.endswith("depend")}
    for pkg, _exe in pkgs - {(PACKAGE, "vo_node")}:
        assert pkg in deps, f"launch starts {pkg} but package.xml does not depend on it"
    for dep in ("launch", "launch_ros"):
        assert dep in deps
    (bag,) = calls(tree, "ExecuteProcess")
    cmd = kwarg(bag, "cmd")
    assert [const(e) for e in cmd.elts[:3]] == ["ros2", "bag", "play"]
    assert kwarg(bag, "condition") is not None  # only when bag:= is given


def test_vo_node_params_and_remappings_match_node(tree):
    rclpy = pytest.importorskip("rclpy")
    from kp2d_ros.ros.node import VONode

    (vo,) = [n for n in calls(tree, "Node") if const(kwarg(n, "executable")) == "vo_node"]
    remap_from = {const(t.elts[0]) for t in kwarg(vo, "remappings").elts}
    assert remap_from == {"image", "camera_info"}
    params = kwarg(vo, "parameters")
    assert [const(c.args[0]) for c in calls(params, "LaunchConfiguration")] == ["params_file"]

    class NullPipeline:
        def reset(self):
            pass

    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx, domain_id=100 + (os.getpid() + 41) % 100)
    try:
        node = VONode(pipeline=NullPipeline(), context=ctx)
        subscribed = {s.topic_name for s in node.subscriptions}
        published = {p.topic_name for p in node.publishers}
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)
    assert {f"/{t}" for t in remap_from} == subscribed
    assert {"/odom", "/path", "/keypoints", "/debug_image", "/diagnostics"} <= published


def test_rviz_config():
    cfg = yaml.safe_load(RVIZ.read_text())
    vm = cfg["Visualization Manager"]
    assert vm["Global Options"]["Fixed Frame"] == "odom"
    displays = {d["Class"].split("/")[-1]: d for d in vm["Displays"]}
    assert {"Odometry", "Path", "PointCloud2", "Image", "TF"} <= set(displays)
    topics = {k: displays[k]["Topic"]["Value"] for k in ("Odometry", "Path", "PointCloud2", "Image")}
    assert topics == {"Odometry": "/odom", "Path": "/path", "PointCloud2": "/keypoints", "Image": "/debug_image"}
    assert displays["PointCloud2"]["Channel Name"] == "matched"
    from kp2d_ros.ros.conversions import KEYPOINT_FIELDS

    assert {"x", "y", "z", "matched"} <= set(KEYPOINT_FIELDS)  # XYZ position transformer works
