"""Normative calibration: what a model's maps look like on healthy scans, and how far a map exceeds it.

A raw map is never zero, even on a healthy scan (what the VAE cannot reproduce, resampled texture,
guidance). ``dva calibrate`` runs a model's own recipe on healthy scans and keeps that background, per pixel
at the model's size, in the model folder (``calibration/calibration.safetensors``, described by
``calibration/calibration.json``). ``dva run`` with a matching calibration then standardises each map,

    z = (|smooth(map)| - healthy mean) / max(healthy std, median healthy std)       (per pixel)

(``smooth``: a Gaussian of sigma ``SMOOTHING`` × the map's side, one latent cell of Stable Diffusion), and writes

* the **calibrated map** ``max(0, z - k)``: how far each pixel's change exceeds what healthy scans show there.
  ``k`` is chosen on the calibration scans alone: the z that ``HEALTHY_SHARE`` of their pixels exceed, each
  scan measured against the statistics of the others (left out in turn, so ``k`` is what an unseen healthy
  scan shows). A healthy scan's calibrated map is then zero but for a few specks;
* the **image-level abnormality score**: the scan's *focal excess*, the mean of the top ``TOP_FRACTION`` of z
  inside the mask less z's upper quartile there (a scan the model reproduces worse all over lifts both), in
  standard deviations of the healthy calibration scans' focal excess (each again left out in turn) above their
  mean: healthy scans score about 0, spread by about 1.

The choices (smoothing, ``HEALTHY_SHARE``, the quartile) were made on development phantom seeds and then
measured on fresh ones; what they do, what did not help (signed statistics, per-zone or median/MAD statistics,
dividing each map by its own level) and what limits the result: docs/benchmarks.md, "Calibrated maps".

A calibration belongs to one recipe: :func:`recipe_key` hashes what decides a map (the recipe less the seed,
the device, the precision and the batch size; the prompt; the model's weights less the calibration itself).
A run with another key, or a calibration of another ``FORMAT_VERSION``, never uses it (``calibration =
"require"`` refuses to run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dva.core import manifest
from dva.core.errors import ConfigError
from dva.core.io import atomic_write_bytes, atomic_write_text

FOLDER = "calibration"
TENSORS = "calibration.safetensors"
INFO = "calibration.json"
FORMAT_VERSION = 4  # 2 and 3: k at 5% (2: as now; 3: healthy top-1% means); 4: k at 2%, healthy focal excess
MODES = ("auto", "require", "off")
SMOOTHING = 1 / 64  # Gaussian sigma as a share of the map's side: 1 px at 64 px, 8 px (a latent cell) at 512 px
STD_FLOOR = 1.0  # a pixel's std is at least the median std (measured: pixel AUPRC +0.03 to +0.05 over 0.5)
HEALTHY_SHARE = 0.02  # k: the z that this share of the healthy calibration pixels exceed
TOP_FRACTION = 0.01  # the focal excess: mean of the top 1% of z inside the mask ...
BACKGROUND_PERCENTILE = 75.0  # ... less this percentile of z there (the scan's own background level)
HEATMAP_SCALE = 3.0  # calibrated.png: 3 healthy standard deviations beyond k is full colour
SCORE_METHOD = (f"focal excess (mean of the top {TOP_FRACTION:.0%} of z inside the mask less its upper quartile) "
                "in healthy calibration scans' standard deviations above their mean; calibrated map = max(0, z - k), "
                "z = (|smoothed map| - healthy mean) / max(healthy std, median healthy std) per pixel, k exceeded by "
                f"{HEALTHY_SHARE:.0%} of healthy calibration pixels")
# Recipe keys that do not make a calibration another one: a map's statistics over many scans do not depend on them.
NOT_IN_KEY = ("seed", "calibration", "device", "dtype", "model", "revision", "batch_size", "fullsize")


def recipe_key(header: dict[str, Any]) -> str:
    """The recipe fingerprint a calibration is made with and a run must match, from a run's manifest header."""
    recipe = {key: value for key, value in header["recipe"].items() if key not in NOT_IN_KEY}
    model = dict(header["weights"].get("model", {}))
    if isinstance(model.get("files"), dict):
        model["files"] = {name: digest for name, digest in model["files"].items()
                          if not name.startswith(FOLDER + "/")}
    weights = {**header["weights"], "model": model}
    from dva.core.weights import digest

    return manifest.fingerprint(recipe, {"prompt": header.get("prompt"), "weights": digest(weights)})


def smoothed(signed: np.ndarray) -> np.ndarray:
    """``signed`` under a Gaussian of sigma ``SMOOTHING`` × its side (scipy; edges repeat the nearest pixel).

    A pixel's change alone is noisy (resampled texture); a lesion spans many pixels. Measured on the bundled
    model: pixel AUPRC +0.03 to +0.07 and a steadier image score.
    """
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.asarray(signed, np.float64), SMOOTHING * max(signed.shape), mode="nearest")


def focal_excess(z: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The mean of the top ``TOP_FRACTION`` of ``z`` inside ``mask`` (everywhere without one) less its
    ``BACKGROUND_PERCENTILE`` there."""
    values = z[mask] if mask is not None and mask.any() else z.ravel()
    count = max(1, round(TOP_FRACTION * values.size))
    return float(np.sort(values)[-count:].mean() - np.percentile(values, BACKGROUND_PERCENTILE))


@dataclass
class Calibration:
    """Per-pixel statistics of ``|smoothed map|`` over healthy scans (model size), the threshold ``k`` and the
    healthy scans' focal excess (each scan against the others' statistics)."""

    mean: np.ndarray
    std: np.ndarray  # floored (:func:`floored`)
    threshold: float
    healthy_focal: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def standardised(self, signed: np.ndarray) -> np.ndarray:
        """z: how many healthy standard deviations each pixel's smoothed ``|map|`` lies above the healthy mean."""
        if signed.shape != self.mean.shape:
            raise ConfigError(f"The calibration is for {self.mean.shape[1]}x{self.mean.shape[0]} maps, this map is "
                              f"{signed.shape[1]}x{signed.shape[0]}; recalibrate with dva calibrate.")
        return (np.abs(smoothed(signed)) - self.mean) / self.std

    def assess(self, signed: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """The calibrated map ``max(0, z - k)`` (zero outside ``mask``) and the image's abnormality score."""
        z = self.standardised(signed)
        calibrated = np.maximum(0.0, z - self.threshold)
        calibrated = calibrated if mask is None else np.where(mask, calibrated, 0.0)
        return calibrated.astype(np.float32), self.score(focal_excess(z, mask))

    def score(self, focal: float) -> float:
        """A focal excess in standard deviations of the healthy scans' focal excess above their mean."""
        spread = float(self.healthy_focal.std(ddof=1)) if self.healthy_focal.size > 1 else 0.0
        return (focal - float(self.healthy_focal.mean())) / (spread if spread > 0 else 1.0)

    def percentile(self, score: float) -> float:
        """The share of the healthy calibration scans scoring below ``score`` (0 to 1)."""
        healthy = [self.score(focal) for focal in self.healthy_focal]
        return float(np.mean(np.asarray(healthy) < score)) if healthy else float("nan")


def floored(std: np.ndarray) -> np.ndarray:
    """``std`` no lower than ``STD_FLOOR`` times its median over the pixels healthy maps ever changed."""
    moving = std[std > 0]
    floor = STD_FLOOR * float(np.median(moving)) if moving.size else 1.0
    return np.maximum(std, max(floor, 1e-6))


def _statistics(total: np.ndarray, squares: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and floored std from sums over the scans whose mask held the pixel; a pixel fewer than 2
    scans held gets the mean and std of the others."""
    mean = total / np.maximum(count, 1)
    std = np.sqrt(np.maximum(squares - count * mean ** 2, 0.0) / np.maximum(count - 1, 1))
    known = count >= 2
    mean = np.where(known, mean, mean[known].mean() if known.any() else 0.0)
    std = np.where(known, std, std[known].mean() if known.any() else 1.0)
    return mean, floored(std)


def compute(maps: list[tuple[np.ndarray, np.ndarray | None]], info: dict[str, Any]) -> Calibration:
    """The calibration from healthy scans' signed maps ``(map, mask or None)``, all at the model's size.

    ``k`` and the healthy scans' scores come from each scan against the statistics of the others (leave one
    out, from the sums), so they are what an unseen healthy scan shows, not what the scans show of themselves.
    """
    if len(maps) < 3:
        raise ConfigError("dva calibrate needs at least 3 healthy images; pass more (a few dozen suffice).")
    magnitudes = np.stack([np.abs(smoothed(signed)) for signed, _ in maps])
    inside = np.stack([np.ones(signed.shape, bool) if mask is None else mask.astype(bool) for signed, mask in maps])
    held = magnitudes * inside
    total, squares, count = held.sum(axis=0), (held * magnitudes).sum(axis=0), inside.sum(axis=0)
    left_out_z, focal = [], []
    for magnitude, scan_inside in zip(magnitudes, inside):
        kept = magnitude * scan_inside
        mean, std = _statistics(total - kept, squares - kept * magnitude, count - scan_inside)
        z = (magnitude - mean) / std
        left_out_z.append(z[scan_inside])
        focal.append(focal_excess(z, scan_inside))
    threshold = float(np.quantile(np.concatenate(left_out_z), 1.0 - HEALTHY_SHARE))
    mean, std = _statistics(total, squares, count)
    made = Calibration(mean.astype(np.float32), std.astype(np.float32), threshold, np.array(focal, np.float32), info)
    scores = np.array([made.score(value) for value in focal])
    made.info.update(images=len(maps), score_method=SCORE_METHOD, format_version=FORMAT_VERSION, threshold=threshold,
                     healthy_share=HEALTHY_SHARE, smoothing=SMOOTHING,
                     healthy_scores={"p95": float(np.percentile(scores, 95)), "max": float(scores.max())})
    return made


def save(model_folder: Path, calibration: Calibration) -> Path:
    """Write ``calibration/`` into ``model_folder``; returns the folder."""
    from safetensors.numpy import save as save_tensors

    folder = Path(model_folder) / FOLDER
    tensors = {"mean": calibration.mean, "std": calibration.std, "healthy_focal": calibration.healthy_focal,
               "threshold": np.array([calibration.threshold], np.float32)}
    metadata = {"recipe_key": calibration.info["recipe_key"], "format_version": str(FORMAT_VERSION)}
    atomic_write_bytes(folder / TENSORS, save_tensors(tensors, metadata=metadata))
    atomic_write_text(folder / INFO, json.dumps(calibration.info, indent=2, sort_keys=True) + "\n")
    return folder


def stored_info(model_location: str) -> dict[str, Any] | None:
    """What ``calibration.json`` in a model folder says, or None when the folder has no calibration."""
    folder = Path(model_location).expanduser() / FOLDER
    if not (folder / TENSORS).is_file():
        return None
    try:
        info = json.loads((folder / INFO).read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"The calibration in {folder} cannot be read ({error}); rerun dva calibrate.") from error
    return info if isinstance(info, dict) else {}


def stale(info: dict[str, Any], folder: str) -> str | None:
    """Why a calibration of another format cannot be used (one clause), else None."""
    version = info.get("format_version")
    if version == FORMAT_VERSION:
        return None
    made = f"format {version}" if version is not None else "an unknown format"
    return f"the calibration in {folder} is of {made}, and this dva reads format {FORMAT_VERSION} only"


def load(model_location: str) -> Calibration | None:
    """The calibration in a model folder, or None when it has none; one of another format is refused."""
    info = stored_info(model_location)
    if info is None:
        return None
    folder = Path(model_location).expanduser() / FOLDER
    if (reason := stale(info, str(folder))) is not None:
        raise ConfigError(f"T{reason[1:]}; rerun dva calibrate.")
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(folder / TENSORS))
        return Calibration(tensors["mean"], tensors["std"], float(tensors["threshold"][0]), tensors["healthy_focal"],
                           info)
    except (OSError, ValueError, KeyError, IndexError) as error:
        raise ConfigError(f"The calibration in {folder} cannot be read ({error}); rerun dva calibrate.") from error


def for_run(header: dict[str, Any], mode: str, masks: bool | None = None) -> tuple[Calibration | None, dict[str, Any]]:
    """The calibration a run uses (or None) and what its manifest says about it.

    ``mode``: ``auto`` uses the model folder's calibration when it was made with this recipe (and this format),
    ``require`` refuses to run without one, ``off`` uses none. ``masks``: whether the run has masks; a
    calibration made with lung masks has no statistics for a whole-image score, nor one made without them for a
    lung-only score, so one made the other way is not used either.
    """
    if mode == "off":
        return None, {"calibrated": False, "reason": "calibration off"}
    location = header["model"]["location"]
    info = stored_info(location)
    key = recipe_key(header)
    if info is None:
        reason = f"the model folder {location} has no calibration (dva calibrate makes one)"
    elif (old := stale(info, location)) is not None:
        reason = f"{old}, so it is not used (dva calibrate makes a new one)"
    elif info.get("recipe_key") != key:
        reason = (f"the calibration in {location} was made with another recipe ({info.get('entry')!r}, key "
                  f"{info.get('recipe_key')}; this run's key is {key}), so it is not used")
    elif masks is not None and "masks" in info and bool(info["masks"]) != masks:
        reason = (f"the calibration in {location} was made {'with' if info['masks'] else 'without'} lung masks and "
                  f"this run has {'none' if info['masks'] else 'them'}, so its scores would not compare; it is not "
                  f"used ({'pass --mask' if info['masks'] else 'calibrate with --mask'})")
    else:
        calibration = load(location)
        return calibration, {"calibrated": True, "recipe_key": key, "images": info.get("images"),
                             "score_method": SCORE_METHOD}
    if mode == "require":
        raise ConfigError(f"--calibration require: {reason}; run dva calibrate with this run's settings.")
    return None, {"calibrated": False, "reason": reason}
