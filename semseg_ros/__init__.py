"""semseg_ros: real-time semantic segmentation for CARLA camera streams in ROS 2.

The runtime half (this package) never imports torch at import time; the offline training
half lives in the sibling ``training`` package.
"""

__version__ = '0.1.0'
