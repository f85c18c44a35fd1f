"""Evaluation measures: FID on Inception features, SSIM/MS-SSIM, and localisation of attribution maps.

Torch-importing modules: the metric specs in :mod:`dva.plugins.metrics` name them lazily.
"""
