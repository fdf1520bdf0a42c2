"""Offline half of semseg_ros: datasets, the PyTorch trainer, evaluation and export.

May import ``semseg_ros`` (class sets, metrics); never imports rclpy.
"""
