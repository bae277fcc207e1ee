"""A ROS client in its own process, driven line by line over stdin (used by the node tests).

Commands (one per line), each answered by one JSON line on stdout:
  ``call SERVICE``          std_srvs/Trigger -> {"success": bool, "message": str}
  ``set NODE NAME YAML``    set one parameter through NODE's set_parameters service
                            -> {"successful": bool, "reason": str}
  ``image TOPIC W H STAMP`` publish a W x H mono8 texture with that header stamp (s) once a
                            subscriber is matched -> {"published": true}
  ``quit``
Environment: ROS_DOMAIN_ID / ROS_AUTOMATIC_DISCOVERY_RANGE of the caller.
"""
import json
import sys

import time

import cv2
import numpy as np
import rclpy
import yaml
from builtin_interfaces.msg import Time
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

TIMEOUT_S = 30.0


def call(node, srv_type, name, request):
    client = node.create_client(srv_type, name)
    try:
        if not client.wait_for_service(timeout_sec=TIMEOUT_S):
            raise RuntimeError(f"service {name} not available")
        future = client.call_async(request)
        rclpy.spin_until_future_complete(node, future, timeout_sec=TIMEOUT_S)
        if not future.done():
            raise RuntimeError(f"service {name} did not answer")
        return future.result()
    finally:
        node.destroy_client(client)


def publish_image(node, publishers, topic, width, height, stamp) -> bool:
    if topic not in publishers:
        publishers[topic] = node.create_publisher(Image, topic, QoSProfile(depth=10))
    pub = publishers[topic]
    deadline = time.monotonic() + TIMEOUT_S
    while pub.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    rng = np.random.default_rng(width)
    img = cv2.GaussianBlur(rng.integers(0, 256, (height, width), dtype=np.uint8), (0, 0), 1.5 * max(1, width // 640))
    ns = int(round(stamp * 1e9))
    msg = Image(height=height, width=width, encoding="mono8", step=width, data=img.tobytes())
    msg.header.stamp = Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
    pub.publish(msg)
    return True


def main() -> int:
    rclpy.init()
    node = rclpy.create_node("test_client")
    publishers = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        words = line.split(maxsplit=3)
        if not words or words[0] == "quit":
            break
        if words[0] == "call":
            res = call(node, Trigger, words[1], Trigger.Request())
            out = {"success": res.success, "message": res.message}
        elif words[0] == "set":
            param = Parameter(words[2], value=yaml.safe_load(words[3]))
            req = SetParameters.Request(parameters=[param.to_parameter_msg()])
            res = call(node, SetParameters, f"{words[1]}/set_parameters", req).results[0]
            out = {"successful": res.successful, "reason": res.reason}
        elif words[0] == "image":
            h, stamp = words[3].split()
            out = {"published": publish_image(node, publishers, words[1], int(words[2]), int(h), float(stamp))}
        else:
            out = {"error": f"unknown command {words[0]}"}
        print(json.dumps(out), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
