"""``python -m semseg_ros.node``: the same as the ``semseg_node`` executable."""

from semseg_ros.node import main

main()
