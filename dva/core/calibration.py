"""Normative calibration: what a model's maps look like on healthy scans, and how far a map exceeds it.

``dva calibrate`` runs a model's own recipe on healthy scans and keeps, in the model folder
(``calibration/calibration.safetensors`` and ``calibration/calibration.json``), the per-pixel mean and standard
deviation of ``|map|`` at the model's size, and the image-level scores of the healthy scans themselves. The
background a map has on every scan (what the VAE cannot reproduce, resampled texture, guidance) is then
known pixel by pixel. ``dva run`` with a matching calibration writes the **calibrated map**

    z = max(0, (|map| - mean) / max(std, STD_FLOOR × median std))

(how many healthy standard deviations a pixel's change exceeds what healthy scans show there), and the
**image-level abnormality score**, the mean of the top ``TOP_FRACTION`` of z inside the mask.

A calibration belongs to one recipe: :func:`recipe_key` hashes what decides a map (the recipe less the seed,
the device, the precision and the batch size; the prompt; the model's weights less the calibration itself).
A run with another key never uses it (``calibration = "require"`` refuses to run).
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
FORMAT_VERSION = 1
MODES = ("auto", "require", "off")
TOP_FRACTION = 0.01  # the score: mean of the top 1% of calibrated values inside the mask
STD_FLOOR = 1.0  # a pixel's std is at least the median std (measured: pixel AUPRC +0.03 to +0.05 over 0.5)
HEATMAP_SCALE = 4.0  # calibrated.png: z = 4 healthy standard deviations is full colour
SCORE_METHOD = (f"mean of the top {TOP_FRACTION:.0%} of the calibrated map inside the mask; calibrated map = "
                f"max(0, (|map| - healthy mean) / max(healthy std, {STD_FLOOR} x median healthy std)), per pixel")
# Recipe keys that do not make a calibration another one: a map's statistics over many scans do not depend on them.
NOT_IN_KEY = ("seed", "calibration", "device", "dtype", "model", "revision", "batch_size")


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


@dataclass
class Calibration:
    """Per-pixel statistics of ``|map|`` over healthy scans (model size) and the healthy scans' scores."""

    mean: np.ndarray
    std: np.ndarray
    healthy_scores: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def calibrated(self, signed: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """How far each pixel's ``|map|`` exceeds the healthy scans' (in their standard deviations), zero outside
        ``mask``."""
        if signed.shape != self.mean.shape:
            raise ConfigError(f"The calibration is for {self.mean.shape[1]}x{self.mean.shape[0]} maps, this map is "
                              f"{signed.shape[1]}x{signed.shape[0]}; recalibrate with dva calibrate.")
        z = np.maximum(0.0, (np.abs(signed) - self.mean) / floored(self.std))
        return (z if mask is None else np.where(mask, z, 0.0)).astype(np.float32)

    def percentile(self, score: float) -> float:
        """The share of the healthy calibration scans scoring below ``score`` (0 to 1)."""
        return float(np.mean(self.healthy_scores < score)) if self.healthy_scores.size else float("nan")


def floored(std: np.ndarray) -> np.ndarray:
    """``std`` no lower than ``STD_FLOOR`` times its median over the pixels healthy maps ever changed."""
    moving = std[std > 0]
    floor = STD_FLOOR * float(np.median(moving)) if moving.size else 1.0
    return np.maximum(std, max(floor, 1e-6)).astype(np.float32)


def score(calibrated: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The image-level abnormality score: the mean of the top ``TOP_FRACTION`` of ``calibrated`` inside ``mask``."""
    values = calibrated[mask] if mask is not None and mask.any() else calibrated.ravel()
    count = max(1, int(round(TOP_FRACTION * values.size)))
    return float(np.sort(values)[-count:].mean())


def compute(maps: list[tuple[np.ndarray, np.ndarray | None]], info: dict[str, Any]) -> Calibration:
    """The calibration from healthy scans' signed maps ``(map, mask or None)``, all at the model's size.

    A pixel outside every mask (no healthy statistics) gets the mean and std of all pixels that had some.
    """
    if len(maps) < 2:
        raise ConfigError("dva calibrate needs at least 2 healthy images; pass more.")
    magnitudes = np.stack([np.abs(signed) for signed, _ in maps]).astype(np.float64)
    inside = np.stack([np.ones(signed.shape, bool) if mask is None else mask.astype(bool) for signed, mask in maps])
    count = inside.sum(axis=0)
    mean = np.where(count > 0, (magnitudes * inside).sum(axis=0) / np.maximum(count, 1), 0.0)
    variance = ((magnitudes - mean) ** 2 * inside).sum(axis=0) / np.maximum(count - 1, 1)
    std = np.sqrt(variance)
    known = count >= 2
    mean = np.where(known, mean, mean[known].mean() if known.any() else 0.0)
    std = np.where(known, std, std[known].mean() if known.any() else 1.0)
    calibration = Calibration(mean.astype(np.float32), std.astype(np.float32), np.zeros(0, np.float32), info)
    calibration.healthy_scores = np.array(
        [score(calibration.calibrated(signed, mask), mask) for signed, mask in maps], np.float32)
    scores = calibration.healthy_scores
    calibration.info.update(images=len(maps), score_method=SCORE_METHOD, format_version=FORMAT_VERSION,
                            healthy_scores={"mean": float(scores.mean()), "p95": float(np.percentile(scores, 95)),
                                            "max": float(scores.max())})
    return calibration


def save(model_folder: Path, calibration: Calibration) -> Path:
    """Write ``calibration/`` into ``model_folder``; returns the folder."""
    from safetensors.numpy import save as save_tensors

    folder = Path(model_folder) / FOLDER
    tensors = {"abs_mean": calibration.mean, "abs_std": calibration.std, "healthy_scores": calibration.healthy_scores}
    atomic_write_bytes(folder / TENSORS, save_tensors(tensors, metadata={"recipe_key": calibration.info["recipe_key"]}))
    atomic_write_text(folder / INFO, json.dumps(calibration.info, indent=2, sort_keys=True) + "\n")
    return folder


def load(model_location: str) -> Calibration | None:
    """The calibration in a model folder, or None when it has none (or is no local folder)."""
    folder = Path(model_location).expanduser() / FOLDER
    if not (folder / TENSORS).is_file():
        return None
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(folder / TENSORS))
        info = json.loads((folder / INFO).read_text())
        return Calibration(tensors["abs_mean"], tensors["abs_std"], tensors["healthy_scores"], info)
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"The calibration in {folder} cannot be read ({error}); rerun dva calibrate.") from error


def for_run(header: dict[str, Any], mode: str) -> tuple[Calibration | None, dict[str, Any]]:
    """The calibration a run uses (or None) and what its manifest says about it.

    ``mode``: ``auto`` uses the model folder's calibration when it was made with this recipe, ``require``
    refuses to run without one, ``off`` uses none.
    """
    if mode == "off":
        return None, {"calibrated": False, "reason": "calibration off"}
    location = header["model"]["location"]
    calibration = load(location)
    key = recipe_key(header)
    if calibration is None:
        reason = f"the model folder {location} has no calibration (dva calibrate makes one)"
    elif calibration.info.get("recipe_key") != key:
        reason = (f"the calibration in {location} was made with another recipe ({calibration.info.get('entry')!r}, "
                  f"key {calibration.info.get('recipe_key')}; this run's key is {key}), so it is not used")
    else:
        return calibration, {"calibrated": True, "recipe_key": key, "images": calibration.info.get("images"),
                             "score_method": SCORE_METHOD}
    if mode == "require":
        raise ConfigError(f"--calibration require: {reason}; run dva calibrate with this run's settings.")
    return None, {"calibrated": False, "reason": reason}
