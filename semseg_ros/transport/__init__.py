"""The standalone adapter's middleware: ROS 2 messages over Cyclone DDS, without ROS.

* :mod:`~semseg_ros.transport.msgs`     the ROS message types as DDS types, with a fast ROS 2
  CDR codec (needs ``cyclonedds``);
* :mod:`~semseg_ros.transport.dds`      participant, QoS, publishers and subscriptions on
  ``rt/<topic>`` (needs ``cyclonedds``);
* :mod:`~semseg_ros.transport.names`    ROS topic names and ``ROS_DOMAIN_ID`` (no dependency);
* :mod:`~semseg_ros.transport.process`  the ``--loopback`` flag, stop signals, and a clear
  error when ``cyclonedds`` is missing (no dependency).

``cyclonedds`` is the ``dds`` extra (``pip install -e '.[dds]'``); nothing outside this package,
``semseg run|replay|record`` and ``semseg bench`` imports it.
"""
