"""Package metadata: package.xml is valid for catkin_pkg, setup.py installs what ROS needs."""
import ast
import re
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


def _module_imports() -> dict[str, set[str]]:
    """kp2d_ros module -> the kp2d_ros modules it imports, at module level or inside a function."""
    modules = {}
    for path in (REPO / "kp2d_ros").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycles():
    """No kp2d_ros module imports one that imports it back, directly or through others, even lazily inside a
    function (``frontend`` built the learned frontend, whose module imported ``frontend`` for its helpers: they
    live in the leaf ``frontend_common`` now)."""
    graph = _module_imports()
    assert "kp2d_ros.frontend_common" in graph["kp2d_ros.networks.kp2d_frontend"]

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return seen

    cycles = sorted(m for m in graph if m in reaches(m))
    assert not cycles, cycles


# --------------------------------------------------------------------------------------------
# package.xml against the imports
# --------------------------------------------------------------------------------------------
# Import name -> its package.xml entry where the two differ (rosdep keys: ros/rosdistro
# rosdep/python.yaml). Any other third-party import must be a dependency of the same name (a ROS
# package: rclpy, sensor_msgs, ...).
ROSDEP_KEYS = {
    "cv2": "python3-opencv", "numpy": "python3-numpy", "yaml": "python3-yaml", "scipy": "python3-scipy",
    "torch": "python3-torch", "rosbags": "python3-rosbags-pip", "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib", "skimage": "python3-skimage",
    "tf2_ros": "tf2_ros_py",  # the Python tf2_ros module ships in the tf2_ros_py package
}
# No rosdep key: installed with pip (setup.py install_requires and docs/ros2_install.md say so).
PIP_ONLY = {"threadpoolctl": "threadpoolctl", "pycolmap": "pycolmap", "pyceres": "pyceres"}
# Optional: imported inside a function only, by a CLI option that names what to install.
OPTIONAL = {"onnxruntime", "onnx"}  # frontend.engine: onnxruntime (and torch's exporter, onnx), optional
# setup.py install_requires distribution -> import name
DIST_MODULES = {"opencv-python-headless": "cv2", "pyyaml": "yaml", "scikit-image": "skimage"}


def third_party_imports() -> dict[str, list[tuple[str, bool]]]:
    """Top-level module -> [(file, imported at module level)] over kp2d_ros/ and launch/."""
    import sys

    found: dict[str, list[tuple[str, bool]]] = {}
    files = sorted((REPO / "kp2d_ros").rglob("*.py")) + sorted((REPO / "launch").glob("*.py"))
    for path in files:
        tree = ast.parse(path.read_text())
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "kp2d_ros":
                    continue
                found.setdefault(top, []).append((str(path.relative_to(REPO)), id(node) in top_level))
    return found


def package_xml_depends() -> set[str]:
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(REPO / "package.xml"))
    return {d.name for d in pkg.exec_depends + pkg.build_export_depends + pkg.build_depends}


def test_every_import_has_a_package_xml_entry():
    deps = package_xml_depends()
    imports = third_party_imports()
    assert {"rclpy", "torch", "cv2", "rosbags"} <= set(imports)  # the scan sees the package
    missing = []
    for module, where in sorted(imports.items()):
        if module in OPTIONAL:
            assert not any(top for _, top in where), f"{module} must only be imported where it is used: {where}"
            continue
        if module in PIP_ONLY:
            continue
        key = ROSDEP_KEYS.get(module, module)
        if key not in deps:
            missing.append(f"{module} (imported by {where[0][0]}) needs <exec_depend>{key}</exec_depend>")
    assert not missing, "\n".join(missing)


def test_pip_only_modules_are_installed_by_pip():
    setup = ast.parse((REPO / "setup.py").read_text())
    (call,) = [n for n in ast.walk(setup) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"]
    requires = {re.split(r"[<>=!~ ;\[]", ast.literal_eval(e))[0]
                for k in call.keywords if k.arg == "install_requires" for e in k.value.elts}
    notes = (REPO / "docs" / "ros2_install.md").read_text()
    pip_lines = [ln for ln in notes.splitlines() if "pip install" in ln]
    for module, dist in PIP_ONLY.items():
        assert dist in requires, f"setup.py install_requires lacks {dist}"
        assert any(dist in ln for ln in pip_lines), f"docs/ros2_install.md has no pip install line for {dist}"


def test_no_unused_dependencies():
    """Every python3-* rosdep key and every install_requires entry is imported somewhere."""
    imports = set(third_party_imports())
    unused_keys = [k for k in package_xml_depends() if k.startswith("python3-") and k != "python3-pytest"
                   and k not in {ROSDEP_KEYS.get(m, m) for m in imports}]
    assert not unused_keys, f"package.xml keys no code imports: {unused_keys}"
    setup = ast.parse((REPO / "setup.py").read_text())
    (call,) = [n for n in ast.walk(setup) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"]
    requires = [ast.literal_eval(e) for k in call.keywords if k.arg == "install_requires" for e in k.value.elts]
    dists = [re.split(r"[<>=!~ ;\[]", r)[0] for r in requires]
    unused = [d for d in dists if d != "setuptools" and DIST_MODULES.get(d, d.replace("-", "_")) not in imports]
    assert not unused, f"setup.py install_requires entries no code imports: {unused}"
