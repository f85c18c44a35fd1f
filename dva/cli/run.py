"""``dva run``: healthy counterfactuals and attribution maps for images, folders and DICOM files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from dva.cli.options import click_options, merged_flags
from dva.core.settings import RUN_SETTINGS, select

# The settings `dva run` takes as flags, in --help's order (see dva.core.settings.RUN_SETTINGS).
RUN_FLAGS = (
    "entry", "registries", "model", "revision", "encoder", "encoder_path", "prior", "prior_options", "scheduler",
    "modality", "bit_depth", "modality_options", "prompt", "negative_prompt", "steps", "strength", "region", "guidance_scale",
    "seed", "batch_size", "tile", "tile_overlap", "samples", "reference", "calibration", "fullsize", "mask", "device", "compile", "channels_last",
    "vae_slicing", "dtype", "strict", "out", "num_processes",
)


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click_options(select(RUN_SETTINGS, RUN_FLAGS))
@click.pass_context
def run(ctx: click.Context, inputs: tuple[str, ...], entry: str, registries: tuple[str, ...], mask: str | None,
        out: str, num_processes: int, strict: bool, **flags: Any) -> int:
    """Make the healthy counterfactual and attribution map of each input (files or folders)."""
    import os

    from rich.console import Console

    from dva.core.plugins import get_catalogue

    if num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        from dva.core.shards import relaunch

        return relaunch(num_processes, _without_num_processes(ctx.find_root().obj.get("argv", [])))
    # Under several processes only the first one talks; they share the inputs and its manifest says so.
    console = Console(stderr=True, soft_wrap=True, quiet=int(os.environ.get("RANK", "0")) > 0)
    catalogue = get_catalogue()
    recipe, walked = recipe_and_inputs(catalogue, entry, registries, merged_flags(RUN_SETTINGS, flags), list(inputs),
                                       Path(out))
    if strict:
        from dva.core.runtime import require_trained_encoder

        require_trained_encoder(recipe, catalogue)
    return _execute(recipe, walked, Path(out), mask, catalogue, console)


def _without_num_processes(argv: list[str]) -> list[str]:
    """The command line again, less ``--num-processes N``: what each launched process runs."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--num-processes":
            skip = True
        elif not arg.startswith("--num-processes="):
            kept.append(arg)
    return kept


def recipe_and_inputs(catalogue: Any, entry: str | None, registries: tuple[str, ...], flags: dict[str, Any],
                      inputs: list[str], out: Path) -> tuple[Any, Any]:
    """The recipe, resolved once (the entry, then the flags), and the inputs for the run.

    When neither ``--modality`` nor the entry chose a modality (or the entry chose the default one), the inputs
    are walked here, the files' extensions may choose another, and the walk is what the run reads.
    """
    from dva.core.modality import modality_for_inputs, walk_for_any_modality
    from dva.core.registry import DEFAULT_COMPONENTS, Draft, load_entries

    draft = Draft.of(load_entries(registries), entry)
    walked: Any = inputs
    default = DEFAULT_COMPONENTS["modality"]
    if flags.get("modality") is None and draft.component("modality") == default:
        walked = walk_for_any_modality(inputs, catalogue, exclude=[out])
        chosen = modality_for_inputs(walked, catalogue)
        if chosen is not None and chosen != default:
            flags = {**flags, "modality": chosen}
    return draft.apply(flags).build(catalogue), walked


def _execute(recipe: Any, inputs: Any, out: Path, mask: str | None, catalogue: Any, console: Any) -> int:
    """Run ``recipe`` on ``inputs`` (paths or their walk) with a progress bar on ``console``; prints the summary
    and returns the exit status."""
    from dva.cli.progress import RunProgress
    from dva.core.run import run as run_images

    progress = RunProgress(recipe, console)
    try:
        with terminated_as_interrupt():
            result = run_images(recipe, inputs, out, catalogue, mask, events=progress)
    finally:
        progress.stop()
    _summary(console, result)
    return result.exit_code


@contextlib.contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cluster's time limit, ``kill``) ends the run like Ctrl-C: the images written so far are kept,
    the manifest is saved, and the message says to rerun to resume."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _summary(console: Any, result: Any) -> None:
    """How many images were generated, resumed and failed, and where the outputs are."""
    from dva.evaluate.tables import Table, print_table

    counts = [[label, result.count(status)] for status, label in
              (("done", "generated"), ("skipped", "already complete (resumed)"), ("failed", "failed"))]
    print_table(console, Table("run", "dva run", ["images", "count"], counts))
    calibration = result.header.get("calibration") or {}
    if calibration.get("calibrated"):
        console.print(f"calibrated maps and image scores (against {calibration.get('images')} healthy scans)")
    elif calibration.get("reason") and calibration["reason"] != "calibration off":
        console.print(f"not calibrated: {calibration['reason']}; maps are raw and images have no score",
                      highlight=False)
    console.print(f"outputs: {result.out}  ·  report: {result.report}  ·  manifest: {result.out / 'manifest.json'}")
