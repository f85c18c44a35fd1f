"""``dva run``: healthy counterfactuals and attribution maps for images, folders and DICOM files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from dva.core.errors import ConfigError


def _prior_options(pairs: tuple[str, ...], flag: str = "--prior-option", example: str = "low_threshold=50") -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are read as TOML scalars (``0.5``, ``true``, ``150``), else as text."""
    from dva.core.registry import tomllib

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {pair}: expected KEY=VALUE, e.g. {flag} {example}.")
        try:
            options[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            options[key.strip()] = raw
    return options


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--entry", default="default", show_default=True, help="Registry entry to start from.")
@click.option("--registry", "registries", multiple=True, type=click.Path(dir_okay=False), help="Extra registry file.")
@click.option("--model", help="Stable Diffusion folder or hub id, or a dva model folder.")
@click.option("--revision", help="Hub revision (branch, tag or commit) of a hub --model; recorded in the manifest.")
@click.option("--encoder", help="Text encoder (radbert, biobert, pubmedclip, clip, ...); default: the model's own.")
@click.option("--encoder-path", help="Load the encoder from this folder (or hub id) instead of its default.")
@click.option("--prior", help="Image prior (sdedit, controlnet-canny, ...).")
@click.option("--prior-option", "prior_option", multiple=True, metavar="KEY=VALUE", help="A prior option, repeatable.")
@click.option("--scheduler", help="Scheduler (pndm, ddim, dpm-solver++, euler, unipc); default: the model's own.")
@click.option("--modality", help="Modality of the inputs (chest-xray, or a plugin's); default: chosen by their extension.")
@click.option("--bit-depth", type=click.IntRange(1, 16),
              help="Bits that hold data in 16-bit images (e.g. 12); default: detected from the values, and said.")
@click.option("--modality-option", "modality_option", multiple=True, metavar="KEY=VALUE",
              help="A modality option (e.g. brain-mri's slices=40:60), repeatable.")
@click.option("--prompt", help="Text the counterfactual is steered to (default: the modality's healthy prompt).")
@click.option("--negative-prompt", help="Text steered away from.")
@click.option("--steps", type=int, help="Scheduler steps; img2img runs int(steps * strength) of them.")
@click.option("--strength", type=float, help="SDEdit strength in [0, 1]: how far the input is noised.")
@click.option("--guidance-scale", type=float, help="Classifier-free guidance scale.")
@click.option("--seed", type=int, help="Seed of each image's own generator.")
@click.option("--batch-size", type=int, help="Images per batch (results do not depend on it).")
@click.option("--samples", type=int, help="Counterfactuals per image (seeds seed..seed+K-1); the map comes from their "
              "mean, and uncertainty.png shows their per-pixel standard deviation.")
@click.option("--reference", type=click.Choice(["input", "reconstruction"]),
              help="Subtract the counterfactual from the input (default), or from the prior's unconditional "
              "reconstruction made from the same noise: what the prompt alone changed.")
@click.option("--mask", type=click.Path(), help="Mask image, or a folder of masks matched to inputs by file stem.")
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--compile/--no-compile", "compile", default=None, help="torch.compile the UNet (GPU).")
@click.option("--channels-last/--no-channels-last", "channels_last", default=None,
              help="Channels-last memory layout for the UNet and VAE (GPU).")
@click.option("--vae-slicing/--no-vae-slicing", "vae_slicing", default=None,
              help="Decode a batch one image at a time (less memory at large batch sizes).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), help="Compute precision.")
@click.option("--strict", is_flag=True, help="Refuse an encoder the model was not trained with (another encoder, or "
              "other weights of its own), before anything loads.")
@click.option("--out", default="dva-out", show_default=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--num-processes", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Processes sharing the inputs on this machine (one per GPU; on the CPU, cores are shared).")
@click.pass_context
def run(ctx: click.Context, inputs: tuple[str, ...], entry: str, registries: tuple[str, ...], mask: str | None,
        out: str, prior_option: tuple[str, ...], modality_option: tuple[str, ...], num_processes: int,
        strict: bool, bit_depth: int | None, **flags: Any) -> int:
    """Make the healthy counterfactual and attribution map of each input (files or folders)."""
    import os

    from rich.console import Console

    from dva.core.plugins import get_catalogue
    from dva.core.registry import load_entries, resolve

    if num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        from dva.core.shards import relaunch

        return relaunch(num_processes, _without_num_processes(ctx.find_root().obj.get("argv", [])))
    # Under several processes only the first one talks; they share the inputs and its manifest says so.
    console = Console(stderr=True, soft_wrap=True, quiet=int(os.environ.get("RANK", "0")) > 0)
    catalogue = get_catalogue()
    entries = load_entries(registries)
    overrides = dict(flags)
    if prior_option:
        overrides["prior_options"] = _prior_options(prior_option)
    if flags.get("modality") is None:
        overrides["modality"] = _modality_by_extension(entries, catalogue, entry, overrides, list(inputs), Path(out))
    if modality_option:
        overrides["modality_options"] = _prior_options(modality_option, "--modality-option", "slices=40:60")
    if bit_depth is not None:
        overrides["modality_options"] = {**overrides.get("modality_options", {}), "bit_depth": bit_depth}
    recipe = resolve(entries, catalogue, entry, overrides)
    if strict:
        from dva.core.runtime import require_trained_encoder

        require_trained_encoder(recipe, catalogue)
    return _execute(recipe, list(inputs), Path(out), mask, catalogue, console)


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


def _modality_by_extension(
    entries: Any, catalogue: Any, entry: str, overrides: dict[str, Any], inputs: list[str], out: Path
) -> str | None:
    """The modality the inputs' extensions call for, when neither --modality nor the entry chose one."""
    from dva.core.modality import modality_for_inputs
    from dva.core.registry import DEFAULT_COMPONENTS, resolve

    current = resolve(entries, catalogue, entry, overrides).modality
    if current != DEFAULT_COMPONENTS["modality"]:
        return None
    chosen = modality_for_inputs(inputs, catalogue, exclude=[out])
    return chosen if chosen != current else None


def _execute(recipe: Any, inputs: list[str], out: Path, mask: str | None, catalogue: Any, console: Any) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from dva.core.run import run as run_images

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
    )
    task: dict[str, Any] = {}

    def on_loaded(runtime: Any) -> None:
        note = runtime.source.dva.get("note")
        if note:
            console.print(f"[bold yellow]Note:[/] {note}", highlight=False)
        choice = runtime.encoder_choice
        if choice is not None and not choice.paired:
            from rich.markup import escape

            console.print(f"[bold red]WARNING:[/] [red]{escape(choice.warning)}[/]", highlight=False)
        console.print(
            f"{recipe.modality} · model {runtime.source.location} · encoder {runtime.encoder.name} · prior {recipe.prior} "
            f"(strength {recipe.prior_options.get('strength')}) · {runtime.unet_calls()} denoising steps of "
            f"{recipe.steps}{f' · {recipe.samples} samples per image' if recipe.samples > 1 else ''} · "
            f"{runtime.device} {str(runtime.dtype).removeprefix('torch.')}",
            highlight=False,
        )

    def on_start(total: int) -> None:
        progress.start()
        task["id"], task["total"] = progress.add_task("images", total=total), total

    def on_more(count: int) -> None:
        task["total"] += count
        progress.update(task["id"], total=task["total"])

    def on_image(job: Any) -> None:
        from rich.markup import escape

        if job.status == "failed":
            progress.console.print(f"[red]skipped[/] {escape(str(job.error))}", highlight=False, soft_wrap=True)
        for warning in job.warnings:
            progress.console.print(f"[yellow]note[/] {escape(job.key)}: {escape(warning)}", highlight=False, soft_wrap=True)
        progress.advance(task["id"])

    try:
        with terminated_as_interrupt():
            result = run_images(recipe, inputs, out, catalogue, mask, on_start, on_image, on_loaded, on_more=on_more)
    finally:
        if task:
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
    from rich.table import Table

    table = Table(title="dva run", title_justify="left")
    table.add_column("images")
    table.add_column("count", justify="right")
    for status, label in (("done", "generated"), ("skipped", "already complete (resumed)"), ("failed", "failed")):
        table.add_row(label, str(result.count(status)))
    console.print(table)
    console.print(f"outputs: {result.out}  ·  report: {result.report}  ·  manifest: {result.out / 'manifest.json'}")
