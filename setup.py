"""ament_python package kp2d_ros: also a plain pip-installable Python package."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "kp2d_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
        (f"share/{PACKAGE}/models", glob("models/*.pt") + glob("models/*.md")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "setuptools",
        "numpy",
        "scipy",
        "pyyaml",
        "opencv-python-headless",
        "torch==2.13.0",
        "rosbags",
        "tqdm",
        "threadpoolctl",  # one thread per BLAS pool on small CPUs (kp2d_ros.runtime)
        "matplotlib",
        "scikit-image",  # textures of the synthetic demo scene
        "pycolmap>=4.2.1,<5",  # the local bundle adjustment's solver (backend.solver: ceres, kp2d_ros/backend.py)
        "pyceres>=2.6,<3",  # its metric distance priors (wheel odometry, ground plane) in pycolmap's Ceres problem
        "gtsam>=4.3",  # its other solver (backend.solver: gtsam)
    ],
    extras_require={
        # ROS 2 Kilted from PyPI wheels: pip-only use without a ROS install.
        "ros": [
            "ros-rclpy",
            "ros-rmw-fastrtps-cpp",
            "ros-std-msgs",
            "ros-builtin-interfaces",
            "ros-sensor-msgs",
            "ros-nav-msgs",
            "ros-geometry-msgs",
            "ros-visualization-msgs",
            "ros-diagnostic-msgs",
            "ros-std-srvs",  # Trigger services of vo_node
        ],
        # optional CPU inference engine of KeyPointNet (frontend.engine: auto picks it when installed; torch otherwise)
        "onnx": ["onnx", "onnxruntime"],
        # colcon-core + colcon-ros: test_colcon_build.py builds the package the way a ROS user does
        "test": ["pytest", "evo", "onnx", "onnxruntime", "catkin-pkg", "colcon-core", "colcon-ros"],
    },
    zip_safe=True,
    maintainer="kp2d_ros maintainers",
    maintainer_email="maintainers@kp2d-ros.org",
    description="Monocular visual odometry with learned keypoints (KP2D) for ROS 2",
    license="MIT",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "kp2d = kp2d_ros.cli:main",
            "vo_node = kp2d_ros.ros.node:main",
        ],
    },
)
