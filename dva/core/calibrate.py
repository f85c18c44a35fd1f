"""``dva calibrate``: run a model's own recipe on healthy scans and store their maps' statistics in the model folder.

The scans go through :func:`dva.core.run.run` (the same recipe as ``dva run``, the calibration itself off) into a
temporary folder; each image's model-size map (and mask) is read back from its ``attribution.safetensors``, and
:mod:`dva.core.calibration` turns them into ``MODEL/calibration/``.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from dva.core import calibration, manifest
from dva.core.errors import ConfigError
from dva.core.run import RunEvents, run
from dva.core.tiles import parse_tile


def calibrate(recipe: Any, inputs: Any, catalogue: Any, mask: str | None = None,
              events: RunEvents | None = None) -> tuple[Path, calibration.Calibration]:
    """Calibrate the recipe's model on the healthy scans ``inputs``; returns the calibration folder and what it holds.

    Refuses a model that is no local folder, and a run where an image failed (a calibration of some of the
    scans given would not say so).
    """
    from safetensors.numpy import load_file

    if parse_tile(getattr(recipe, "tile", "off")) is not None:
        raise ConfigError("dva calibrate: the entry's tile setting makes maps at each scan's own size, which have no "
                          "per-pixel statistics in common; calibrate with an entry whose tile is off.")
    recipe = dataclasses.replace(recipe, calibration="off")
    with tempfile.TemporaryDirectory(prefix="dva-calibrate-") as temporary:
        result = run(recipe, inputs, Path(temporary) / "out", catalogue, mask, events=events)
        failed = [job for job in result.jobs if job.status == "failed"]
        if failed:
            raise ConfigError(f"dva calibrate: {failed[0].path} failed ({failed[0].error}); fix or leave it out.")
        location = Path(result.header["model"]["location"])
        if not location.is_dir():
            raise ConfigError(f"dva calibrate: the model {location} is no local folder; calibrate a local copy.")
        maps = []
        for job in result.jobs:
            tensors = load_file(str(result.out / job.key / "attribution.safetensors"))
            maps.append((tensors["attribution"], tensors["mask"].astype(bool) if "mask" in tensors else None))
    header = result.header
    info = {"recipe_key": calibration.recipe_key(header), "entry": header["recipe"].get("entry"),
            "recipe": {k: v for k, v in header["recipe"].items() if k not in calibration.NOT_IN_KEY},
            "prompt": header.get("prompt"), "masks": mask is not None, "versions": manifest.versions(),
            "inputs": sorted(str(job.path) for job in result.jobs)[:1000]}
    made = calibration.compute(maps, info)
    return calibration.save(location, made), made
