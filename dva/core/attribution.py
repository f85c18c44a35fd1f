"""From a counterfactual to attribution maps: the signed difference, its heatmap and overlay.

The map is ``input - counterfactual`` on grayscale intensity (docs/method.md): positive where the input is
brighter than its healthy counterfactual (an opacity the model removed), negative where darker.
"""

from __future__ import annotations

import numpy as np

HEATMAP_COLORMAP = "inferno"
SCALE_PERCENTILE = 99.5


def attribution_map(inputs: np.ndarray, counterfactuals: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Signed map ``input - counterfactual`` (float32), zero outside ``mask`` where given."""
    signed = inputs.astype(np.float32) - counterfactuals.astype(np.float32)
    if mask is not None:
        signed = np.where(mask, signed, 0.0).astype(np.float32)
    return signed


def map_scale(signed: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The magnitude shown as full colour: a high percentile of ``|map|`` (inside the mask), robust to outliers."""
    values = np.abs(signed[mask] if mask is not None and mask.any() else signed)
    scale = float(np.percentile(values, SCALE_PERCENTILE)) if values.size else 0.0
    return max(scale, 1e-6)


def heatmap(signed: np.ndarray, scale: float) -> np.ndarray:
    """RGB heatmap in [0, 1] of ``|map| / scale`` with matplotlib's perceptually uniform colormap."""
    from matplotlib import colormaps

    magnitude = np.clip(np.abs(signed) / scale, 0.0, 1.0)
    return colormaps[HEATMAP_COLORMAP](magnitude)[..., :3].astype(np.float32)


def overlay(
    gray: np.ndarray, signed: np.ndarray, scale: float, opacity: float = 0.6, heat: np.ndarray | None = None
) -> np.ndarray:
    """The heatmap blended over the gray input, weighted by the map's magnitude (quiet areas stay clear).

    ``heat`` is ``heatmap(signed, scale)`` when the caller has it already.
    """
    magnitude = np.clip(np.abs(signed) / scale, 0.0, 1.0)[..., None]
    base = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    alpha = opacity * magnitude
    return (1.0 - alpha) * base + alpha * (heatmap(signed, scale) if heat is None else heat)


def combine_samples(
    counterfactuals: np.ndarray, references: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The mean counterfactual ``(H, W, C)`` of K samples ``(K, H, W, C)``, the mean of their references
    (None without), and the per-pixel standard deviation ``(H, W)`` of the K grayscale maps (ddof 1, zero for
    one sample): how much the map moves with the seed alone.

    The map of the means is the mean of the K maps (a difference is linear), so it keeps the evidence the
    samples agree on and averages their sampling noise away. Without references every map has the same
    minuend (the input), so the spread is that of the counterfactuals.
    """
    samples = counterfactuals.astype(np.float32)
    maps = -samples.mean(axis=-1)
    if references is not None:
        maps = maps + references.astype(np.float32).mean(axis=-1)
    spread = maps.std(axis=0, ddof=1) if len(samples) > 1 else np.zeros(maps.shape[1:], np.float32)
    mean_reference = None if references is None else references.astype(np.float32).mean(axis=0)
    return samples.mean(axis=0), mean_reference, spread.astype(np.float32)
