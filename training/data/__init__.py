"""Datasets in the Lyft-Udacity (Kaggle) layout: reader, splits, checker, synthetic generator.

Torch-free: these modules import with numpy and OpenCV only.
"""
