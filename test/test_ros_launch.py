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
    assert {"params_file", "image", "camera_info", "namespace", "use_rviz", "bag", "bag_delay", "use_sim_time",
            "dds_profile"} <= args
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


def default_of(tree, name: str):
    (arg,) = [c for c in calls(tree, "DeclareLaunchArgument") if const(c.args[0]) == name]
    return kwarg(arg, "default_value")


def configurations(tree, node) -> set[str]:
    """Names of the LaunchConfigurations ``node`` uses, through local variables
    (``bag = LaunchConfiguration("bag")``) too."""
    local = {a.targets[0].id: a.value for a in ast.walk(tree)
             if isinstance(a, ast.Assign) and len(a.targets) == 1 and isinstance(a.targets[0], ast.Name)}
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id in local:
            out |= configurations(tree, local[n.id])
        elif isinstance(n, ast.Call) and getattr(n.func, "id", None) == "LaunchConfiguration":
            out.add(const(n.args[0]))
    return out


def test_executables_exist(tree):
    """Packages the launch file starts are dependencies, except optional ones (rviz2: a GUI that
    a headless robot should not get): those start only under a condition and the install notes
    say to install them."""
    nodes = calls(tree, "Node")
    pkgs = {(const(kwarg(n, "package")), const(kwarg(n, "executable"))) for n in nodes}
    assert (PACKAGE, "vo_node") in pkgs
    setup = (REPO / "setup.py").read_text()
    assert '"vo_node = kp2d_ros.ros.node:main"' in setup
    deps = {e.text for e in ET.parse(REPO / "package.xml").getroot() if e.tag.endswith("depend")}
    notes = (REPO / "docs" / "ros2_install.md").read_text()
    for n in nodes:
        pkg = const(kwarg(n, "package"))
        if pkg == PACKAGE or pkg in deps:
            continue
        assert kwarg(n, "condition") is not None, f"launch always starts {pkg}, package.xml does not depend on it"
        assert f"ros-$ROS_DISTRO-{pkg}" in notes, f"docs/ros2_install.md does not say how to install {pkg}"
    assert "rviz2" not in deps  # optional
    for dep in ("launch", "launch_ros", "ros2bag"):
        assert dep in deps


def test_bag_play_waits_and_drives_sim_time(tree):
    (bag,) = calls(tree, "ExecuteProcess")
    cmd = kwarg(bag, "cmd").elts
    assert [const(e) for e in cmd[:3]] == ["ros2", "bag", "play"]
    assert kwarg(bag, "condition") is not None  # only when bag:= is given
    words = [const(e) if isinstance(e, ast.Constant) else None for e in cmd]
    assert "--clock" in words and "--delay" in words
    delay = cmd[words.index("--delay") + 1]
    assert const(delay.args[0]) == "bag_delay" and float(const(default_of(tree, "bag_delay"))) >= 5.0
    # use_sim_time defaults to "a bag is given" and reaches vo_node's parameters
    assert configurations(tree, default_of(tree, "use_sim_time")) == {"bag"}
    (vo,) = [n for n in calls(tree, "Node") if const(kwarg(n, "executable")) == "vo_node"]
    (params,) = [d for d in kwarg(vo, "parameters").elts if isinstance(d, ast.Dict)]
    assert [const(k) for k in params.keys] == ["use_sim_time"]
    assert const(params.values[0].args[0]) == "use_sim_time"


def test_dds_profile_is_opt_in(tree):
    """No profile forced on every process (it would confine DDS to this machine and replace the
    user's own): empty by default, and the variable is only set when one is given."""
    assert const(default_of(tree, "dds_profile")) == ""
    (env,) = calls(tree, "SetEnvironmentVariable")
    assert const(env.args[0]) == "FASTDDS_DEFAULT_PROFILES_FILE"
    assert configurations(tree, env.args[1]) == {"dds_profile"}
    cond = kwarg(env, "condition")
    assert cond is not None and configurations(tree, cond) == {"dds_profile"}


def test_fastdds_profile_loads_in_the_installed_fast_dds(tmp_path):
    """The profile's <interfaces> allowlist needs Fast DDS >= 2.14 (Jazzy 2.14, Kilted 3.x); a Fast
    DDS that does not know an element rejects the whole profile with XMLPARSER errors, which is
    what this checks for (a renamed element as the control)."""
    pytest.importorskip("rclpy")
    import subprocess
    import sys

    profile = REPO / "config" / "fastdds_shm.xml"
    udp = [t for t in ET.parse(profile).getroot().iter("{http://www.eprosima.com}transport_descriptor")
           if t.findtext("{http://www.eprosima.com}type") == "UDPv4"]
    allow = [i.get("name") for t in udp for i in t.iter("{http://www.eprosima.com}interface")]
    assert allow == ["127.0.0.1"]
    broken = tmp_path / "broken.xml"
    broken.write_text(profile.read_text().replace("interfaces>", "interfacez>"))
    code = ("import rclpy; rclpy.init(); n = rclpy.create_node('kp2d_profile_check'); "
            "n.destroy_node(); rclpy.shutdown()")
    errors = {}
    for name, path in (("shipped", profile), ("broken", broken)):
        env = dict(os.environ, FASTDDS_DEFAULT_PROFILES_FILE=str(path), RMW_IMPLEMENTATION="rmw_fastrtps_cpp",
                   ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(100 + (os.getpid() + 43) % 100))
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        errors[name] = "XMLPARSER" in p.stderr
    assert errors == {"shipped": False, "broken": True}


def test_vo_node_params_and_remappings_match_node(tree):
    rclpy = pytest.importorskip("rclpy")
    from kp2d_ros.ros.node import VONode

    (vo,) = [n for n in calls(tree, "Node") if const(kwarg(n, "executable")) == "vo_node"]
    remap_from = {const(t.elts[0]) for t in kwarg(vo, "remappings").elts}
    assert remap_from == {"image", "camera_info"}
    params = kwarg(vo, "parameters")
    assert [const(c.args[0]) for c in calls(params, "LaunchConfiguration")] == ["params_file", "use_sim_time"]

    class NullPipeline:
        def reset(self):
            pass

    assert const(kwarg(vo, "namespace").args[0]) == "namespace" and const(default_of(tree, "namespace")) == ""

    def names(namespace: str) -> tuple[set[str], set[str], set[str]]:
        ctx = rclpy.Context()
        rclpy.init(args=[], context=ctx, domain_id=100 + (os.getpid() + 41) % 100)
        try:
            node = VONode(pipeline=NullPipeline(), context=ctx, namespace=namespace)
            subscribed = {s.topic_name for s in node.subscriptions}
            published = {p.topic_name for p in node.publishers}
            services = {node.resolve_service_name(s.srv_name) for s in node.services}
            node.destroy_node()
        finally:
            rclpy.try_shutdown(context=ctx)
        return subscribed, published, services

    subscribed, published, services = names("")
    assert {f"/{t}" for t in remap_from} == subscribed
    assert {"/odom", "/path", "/keypoints", "/debug_image", "/diagnostics"} <= published
    assert "/kp2d_vo/reset" in services
    # namespace:=robot1 (a second camera or robot): its own topics and services; the aggregator's /diagnostics
    subscribed, published, services = names("robot1")
    assert {f"/robot1/{t}" for t in remap_from} == subscribed
    assert {"/robot1/odom", "/robot1/path", "/robot1/keypoints", "/robot1/debug_image", "/diagnostics"} <= published
    assert "/robot1/diagnostics" not in published and "/robot1/kp2d_vo/reset" in services


def test_rviz_config():
    cfg = yaml.safe_load(RVIZ.read_text())
    vm = cfg["Visualization Manager"]
    assert vm["Global Options"]["Fixed Frame"] == "map"  # REP 105: the path is in map, odometry in odom (TF map -> odom)
    displays = {d["Class"].split("/")[-1]: d for d in vm["Displays"]}
    assert {"Odometry", "Path", "PointCloud2", "Image", "TF"} <= set(displays)
    topics = {k: displays[k]["Topic"]["Value"] for k in ("Odometry", "Path", "PointCloud2", "Image")}
    assert topics == {"Odometry": "/odom", "Path": "/path", "PointCloud2": "/keypoints", "Image": "/debug_image"}
    assert displays["PointCloud2"]["Channel Name"] == "matched"
    from kp2d_ros.ros.conversions import KEYPOINT_FIELDS

    assert {"x", "y", "z", "matched"} <= set(KEYPOINT_FIELDS)  # XYZ position transformer works
