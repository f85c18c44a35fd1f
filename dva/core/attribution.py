"""From a counterfactual to attribution maps: the signed difference, its heatmaps (|map| and signed) and overlay.

The map is ``input - counterfactual`` on grayscale intensity (docs/method.md): positive where the input is
brighter than its healthy counterfactual (an opacity the model removed), negative where darker.
"""

from __future__ import annotations

import functools

import numpy as np

HEATMAP_COLORMAP = "inferno"
# The signed map's diverging colormap: white at zero, red where the input is brighter than its counterfactual
# (an opacity the model removed), blue where darker. matplotlib's RdBu reversed, so red means positive.
SIGNED_COLORMAP = "RdBu_r"
SCALE_PERCENTILE = 99.5
LEVELS = 256  # entries of a colormap's lookup table (matplotlib's own resolution for its named colormaps)


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


@functools.cache
def colour_table(name: str) -> np.ndarray:
    """matplotlib colormap ``name`` as a ``(256, 3)`` uint8 lookup table (what its float colours round to)."""
    from matplotlib import colormaps

    colours = colormaps[name](np.arange(LEVELS))[:, :3].astype(np.float32)
    table = (np.clip(colours, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    table.flags.writeable = False
    return table


def levels(fraction: np.ndarray) -> np.ndarray:
    """Fractions in [0, 1] as lookup-table indices, binned as matplotlib bins them (``floor(x * 256)``, 1 -> 255)."""
    return np.minimum((fraction * LEVELS).astype(np.int32), LEVELS - 1)


def heatmap_rgb8(signed: np.ndarray, scale: float) -> np.ndarray:
    """``|map| / scale`` coloured with :data:`HEATMAP_COLORMAP`, as uint8 RGB.

    A lookup table rather than calling the colormap on floats: the same colours (matplotlib bins its input
    into the same 256 entries) in a sixth of the time and memory on a full-size scan (docs/benchmarks.md).
    """
    fraction = np.clip(np.abs(signed) / np.float32(scale), 0.0, 1.0)
    return np.take(colour_table(HEATMAP_COLORMAP), levels(fraction), axis=0)


def signed_heatmap_rgb8(signed: np.ndarray, scale: float) -> np.ndarray:
    """The signed map coloured with :data:`SIGNED_COLORMAP` from ``-scale`` (blue) through 0 (white) to
    ``+scale`` (red), as uint8 RGB: the same scale as :func:`heatmap_rgb8`, centred on zero."""
    fraction = (np.clip(signed / np.float32(scale), -1.0, 1.0) + 1.0) * 0.5
    return np.take(colour_table(SIGNED_COLORMAP), levels(fraction), axis=0)


def heatmap(signed: np.ndarray, scale: float) -> np.ndarray:
    """RGB heatmap in [0, 1] of ``|map| / scale`` with matplotlib's perceptually uniform colormap."""
    return heatmap_rgb8(signed, scale).astype(np.float32) / 255.0


def overlay(
    gray: np.ndarray, signed: np.ndarray, scale: float, opacity: float = 0.6, heat: np.ndarray | None = None
) -> np.ndarray:
    """The heatmap blended over the gray input, weighted by the map's magnitude (quiet areas stay clear).

    ``heat`` is ``heatmap(signed, scale)`` (or its uint8 form) when the caller has it already.
    """
    magnitude = np.clip(np.abs(signed) / np.float32(scale), 0.0, 1.0)[..., None]
    heat = heatmap(signed, scale) if heat is None else heat
    if heat.dtype == np.uint8:
        heat = heat.astype(np.float32) / np.float32(255.0)
    alpha = np.float32(opacity) * magnitude
    return (1.0 - alpha) * gray.astype(np.float32)[..., None] + alpha * heat


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
