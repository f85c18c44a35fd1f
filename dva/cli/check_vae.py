"""``dva check-vae``: can the model's autoencoder reproduce these images? (thesis appendix A.2)"""

from __future__ import annotations

from pathlib import Path

import click

from dva.cli.options import click_options
from dva.core.errors import ConfigError
from dva.core.settings import RUN_SETTINGS, command_flag, select
from dva.core.specs import Option

# dva check-vae's own flags, and those of `dva run` it shares (with its own --help where it says more).
CHECK_VAE_SETTINGS = (
    command_flag("resolution", Option(int, None, "Image side the VAE encodes at, a multiple of its downsampling "
                 "(default: the model's own, as dva run uses).", 16, 4096), "--resolution"),
    command_flag("worst", Option(int, 8, "How many of the worst reconstructions the contact sheet shows.", 1, 200),
                 "--worst", flag_default=True),
    command_flag("out", Option(str, "dva-check-vae", "Output folder."), "--out", path="folder", flag_default=True),
)
CHECK_VAE_FLAGS = select((*RUN_SETTINGS, *CHECK_VAE_SETTINGS), (
    "model", "revision", "resolution", "batch_size", "device", "dtype", "worst", "out",
), help={
    "model": "Stable Diffusion folder or hub id, a dva model folder, or a diffusers AutoencoderKL folder; only its "
             "VAE loads (default: dva's bundled tiny model).",
    "batch_size": "Images per VAE batch (the scores do not depend on it).",
    "dtype": "Compute precision (auto: bf16 on CUDA, fp16 on MPS, fp32 on the CPU; float16 runs in float32 where "
             "the VAE's config asks for it).",
})


@click.command("check-vae")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click_options(CHECK_VAE_FLAGS)
def check_vae(images: tuple[str, ...], model: str | None, revision: str | None, resolution: int | None,
              batch_size: int | None, device: str | None, dtype: str | None, worst: int, out: str) -> int:
    """Encode and decode IMAGES with the model's VAE; report PSNR, SSIM and MS-SSIM per image and per class
    (class: the image's folder) and a PASS/WARN/FAIL verdict against the thresholds in docs/usage.md.

    Writes per_image.csv, classes.csv, vae_check.json, summary.md, worst.png (input | reconstruction | |error|
    of the worst) and manifest.json into --out. Exit status 1 when some image failed."""
    from rich.console import Console

    from dva.cli.evaluate import rich_progress
    from dva.core.io import collect_inputs
    from dva.core.manifest import versions
    from dva.core.outputs import ensure_output_folder, refuse_inputs_in_outputs
    from dva.core.runtime import pick_device, pick_dtype
    from dva.core.weights import identify
    from dva.evaluate.vae_check import check_images, load_vae, locate_vae, vae_resolution
    from dva.evaluate.tables import print_table
    from dva.evaluate.vae_report import FILES, class_table, verdict_line, worst_table, write_outputs

    console = Console(stderr=True, soft_wrap=True)
    target = Path(out)
    source = locate_vae(model, revision)
    files, missing = collect_inputs(images, exclude=[target])
    for _, reason in missing:
        console.print(f"[red]skipped[/] {reason}", highlight=False)
    if not files:
        raise ConfigError("No images to check: " + (missing[0][1] if missing else "pass image files or folders."))
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1.")
    refuse_inputs_in_outputs(files, target, FILES)
    ensure_output_folder(target)
    batch_size = batch_size or 1  # the flags shared with dva run are None when not given: their defaults apply
    chosen = pick_device(device or "auto")
    vae = load_vae(source, chosen, pick_dtype(dtype or "auto", chosen))
    side = vae_resolution(source, vae, resolution)
    console.print(f"VAE of {source.location} · {side} px · posterior mean · {vae.device} "
                  f"{str(vae.dtype).removeprefix('torch.')} · {len(files)} images", highlight=False)
    with rich_progress() as progress:
        result = check_images(files, vae, side, batch_size, worst, advance=progress("images", len(files)))
    for check in result.images:
        if check.status == "failed":
            console.print(f"[red]failed[/] {check.error}", highlight=False)
    weights = identify(source.location, (source.subfolder,) if source.subfolder else (), revision)
    header = {"command": "check-vae", "model": source.location, "vae_subfolder": source.subfolder,
              "weights": weights, "versions": versions(), "settings": {
                  "resolution": side, "batch_size": batch_size, "device": str(vae.device),
                  "dtype": str(vae.dtype).removeprefix("torch."), "inputs": list(images)}}
    written = write_outputs(target, result, header)
    terminal = Console(soft_wrap=False)
    print_table(terminal, class_table(result))
    if result.worst:
        print_table(terminal, worst_table(result))
    terminal.print(f"[bold]{verdict_line(result)}[/]", highlight=False, soft_wrap=True)
    console.print(f"Written to {target}/: {', '.join(written)}.", highlight=False)
    return 1 if result.overall.failed or missing else 0

