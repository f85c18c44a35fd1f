"""Evaluation of runs: the thesis' FID and SSIM tables, localisation of maps, and comparisons of combinations."""
