"""``dva calibrate``: learn what a model's maps look like on healthy scans (stored in the model folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dva.cli.options import click_options, merged_flags
from dva.core.settings import RUN_SETTINGS, select

# The run settings `dva calibrate` takes: those that decide a map (a calibration is for one recipe).
CALIBRATE_FLAGS = (
    "entry", "registries", "model", "encoder", "encoder_path", "prior", "prior_options", "scheduler", "modality",
    "prompt", "negative_prompt", "steps", "strength", "guidance_scale", "seed", "batch_size", "samples", "reference",
    "mask", "device", "dtype",
)


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click_options(select(RUN_SETTINGS, CALIBRATE_FLAGS))
def calibrate(inputs: tuple[str, ...], entry: str, registries: tuple[str, ...], mask: str | None,
              **flags: Any) -> int:
    """Run the model's recipe on HEALTHY scans and store their maps' statistics in the model folder.

    `dva run` with the same recipe then writes calibrated.png and an image-level abnormality score.
    """
    from rich.console import Console

    from dva.cli.progress import RunProgress
    from dva.cli.run import recipe_and_inputs
    from dva.core.calibrate import calibrate as make_calibration
    from dva.core.plugins import get_catalogue

    console = Console(stderr=True, soft_wrap=True)
    catalogue = get_catalogue()
    out = Path(".dva-calibrate-unused")
    recipe, walked = recipe_and_inputs(catalogue, entry, registries, merged_flags(RUN_SETTINGS, flags), list(inputs), out)
    progress = RunProgress(recipe, console)
    try:
        folder, made = make_calibration(recipe, walked, catalogue, mask, events=progress)
    finally:
        progress.stop()
    info = made.info
    console.print(f"calibrated on {info['images']} healthy images (recipe key {info['recipe_key']}): {folder}; "
                  f"calibrated maps start {info['threshold']:.3g} healthy standard deviations above the healthy "
                  f"mean ({info['healthy_share']:.0%} of healthy pixels lie beyond); the healthy scans' own scores "
                  f"reach {info['healthy_scores']['p95']:.3g} at their 95th percentile")
    return 0
