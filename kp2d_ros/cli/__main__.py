import sys

from kp2d_ros.cli import main

sys.exit(main())
