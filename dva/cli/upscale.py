"""``dva upscale``: super-resolution of scans or counterfactuals, by diffusers' x4 upscaler or by dva's own model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from dva.cli.options import click_options, merged_flags
from dva.core.errors import ConfigError
from dva.core.settings import RUN_SETTINGS, command_flag, select
from dva.core.specs import Option

SDEDIT_STRENGTH = 0.3  # low: the bicubic upsample's content stays and the model adds detail at its own scale

# dva upscale's own flags, and those of `dva run` it shares (with its own --help where it says more).
UPSCALE_SETTINGS = (
    command_flag("upscaler", Option(str, None, "Folder of diffusers' x4 upscaler (stabilityai/stable-diffusion-x4-"
                 "upscaler): use it instead of dva's own model."), "--upscaler", path="folder"),
    command_flag("scale", Option(int, None, "Upscaling factor (default 2 with dva's model; the x4 upscaler makes 4 "
                 "only).", 2, 8), "--scale"),
    command_flag("noise_level", Option(int, 20, "Noise added to the x4 upscaler's low-resolution input (0-350).", 0,
                 350), "--noise-level", flag_default=True),
    command_flag("out", Option(str, "dva-upscale", "Output folder."), "--out", path="folder", flag_default=True),
)
UPSCALE_FLAGS = select((*RUN_SETTINGS, *UPSCALE_SETTINGS), (
    "upscaler", "model", "entry", "registries", "encoder", "encoder_path", "scheduler", "scale", "strength", "steps",
    "prompt", "guidance_scale", "noise_level", "seed", "batch_size", "tile_overlap", "device", "dtype", "out",
), help={
    "model": "dva model or Stable Diffusion folder for SDEdit super-resolution (default: dva's bundled tiny model).",
    "strength": f"SDEdit strength on the bicubic upsample (dva's model; default {SDEDIT_STRENGTH}).",
    "prompt": "Text steering the added detail (default: none, unguided).",
    "guidance_scale": "Classifier-free guidance (with --prompt; the x4 upscaler's default is 9).",
    "batch_size": "Tiles per UNet call (dva's model; results do not depend on it).",
    "tile_overlap": "Fraction of a tile's side its neighbours share (dva's model).",
})


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click_options(UPSCALE_FLAGS)
def upscale(inputs: tuple[str, ...], upscaler: str | None, scale: int | None, noise_level: int, out: str,
            entry: str, registries: tuple[str, ...], **flags: Any) -> int:
    """Super-resolve INPUTS (scans or counterfactuals, files or folders) into OUT/<name>.png.

    With --upscaler, diffusers' StableDiffusionUpscalePipeline (x4). Otherwise dva's own model: SDEdit at low
    strength on the bicubic upsample, denoised at full size in blended tiles. 16-bit PNGs for inputs above 8
    bits; OUT/manifest.json records the settings and each input. Exit status 1 when some input failed."""
    from rich.console import Console

    from dva.cli.evaluate import rich_progress
    from dva.core.io import collect_inputs
    from dva.core.outputs import ensure_output_folder, refuse_inputs_in_outputs

    console = Console(stderr=True, soft_wrap=True)
    target = Path(out)
    files, missing = collect_inputs(inputs, exclude=[target])
    if not files:
        raise ConfigError(missing[0][1] if missing else "No inputs given; pass image files, DICOM files or folders.")
    keys = _keys(files)
    refuse_inputs_in_outputs(files, target, [*(f"{key}.png" for key in keys), "manifest.json"])
    engine, settings = _engine(upscaler, scale, noise_level, entry, registries, flags)
    ensure_output_folder(target)
    console.print(f"upscaling {len(files)} images x{settings['scale']} with {settings['engine']}", highlight=False)
    records = [{"input": str(path), "status": "failed", "error": reason} for path, reason in missing]
    _write_manifest(target, settings, records)  # at once and after each image: no earlier run's manifest stays
    with rich_progress() as progress:
        advance = progress("images", len(files))
        for path, key in zip(files, keys):
            records.append(_one(engine, path, key, target, settings["seed"]))
            _write_manifest(target, settings, records)
            advance(1)
    for record in records:
        if record["status"] == "failed":
            console.print(f"[red]failed[/] {record['error']}", highlight=False)
    _write_manifest(target, settings, records)
    done = sum(record["status"] == "done" for record in records)
    console.print(f"{done} of {len(records)} images upscaled into {target}/ (manifest.json)", highlight=False)
    return 0 if done == len(records) else 1


def _keys(files: list[Path]) -> list[str]:
    """Output names: the input's name less its extension, unique (the names ``dva run`` gives its folders)."""
    from dva.core.run.plan import output_keys

    return output_keys(files)


def _engine(upscaler: str | None, scale: int | None, noise_level: int, entry: str, registries: tuple[str, ...],
            flags: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The upscaler the flags ask for, and the settings the manifest records."""
    seed = flags.get("seed") or 0
    if upscaler is not None:
        return _x4(upscaler, scale, noise_level, flags, seed)
    from dva.components.upscaling import SDEditUpscaler
    from dva.core.plugins import get_catalogue
    from dva.core.registry import Draft, load_entries
    from dva.core.runtime import assemble
    from dva.core.tiles import tiling_for

    catalogue = get_catalogue()
    chosen = {**merged_flags(RUN_SETTINGS, flags), "prior": "sdedit", "tile": "auto"}
    chosen.setdefault("strength", SDEDIT_STRENGTH)
    recipe = Draft.of(load_entries(registries), entry).apply(chosen).build(catalogue)
    runtime = assemble(recipe, catalogue)
    scale = scale or 2
    engine = SDEditUpscaler(runtime, tiling_for(recipe, runtime.prior, runtime.resolution), scale,
                            prompted=flags.get("prompt") is not None)
    return engine, {"engine": "sdedit", "model": runtime.source.location, "scale": scale, "seed": recipe.seed,
                    "strength": recipe.prior_options["strength"], "steps": recipe.steps,
                    "prompt": flags.get("prompt"), "guidance_scale": engine.guidance_scale,
                    "scheduler": type(runtime.prior.pipeline.scheduler).__name__,
                    "tile": runtime.resolution, "tile_overlap": recipe.tile_overlap}


def _x4(folder: str, scale: int | None, noise_level: int, flags: dict[str, Any], seed: int) -> tuple[Any, dict[str, Any]]:
    """diffusers' x4 upscaler from ``folder``; refuses what it cannot do."""
    from dva.components.upscaling import X4, X4Upscaler
    from dva.core.runtime import pick_device, pick_dtype

    if scale not in (None, X4):
        raise ConfigError(f"--scale {scale}: diffusers' x4 upscaler makes 4x images only; drop --scale or pass --scale 4.")
    ignored = [f"--{name.replace('_', '-')}" for name in ("model", "strength", "encoder", "scheduler", "tile_overlap")
               if flags.get(name) is not None]
    if ignored:
        raise ConfigError(f"{', '.join(ignored)}: for dva's own model, not the x4 upscaler; drop them or drop --upscaler.")
    device = pick_device(flags.get("device") or "auto")
    steps, guidance = flags.get("steps") or 75, flags.get("guidance_scale") or 9.0
    prompt = flags.get("prompt") or ""
    engine = X4Upscaler(folder, device, pick_dtype(flags.get("dtype") or "auto", device), steps, guidance, noise_level,
                        prompt)
    return engine, {"engine": "x4-upscaler", "upscaler": folder, "scale": X4, "seed": seed, "steps": steps,
                    "guidance_scale": guidance, "noise_level": noise_level, "prompt": prompt}


def _one(engine: Any, path: Path, key: str, target: Path, seed: int) -> dict[str, Any]:
    """Upscale one input into ``target/<key>.png``; its manifest record (failed, with why, for a bad file)."""
    from dva.core.errors import InputError
    from dva.core.io import atomic_write_bytes, check_fits_in_memory, read_scan

    started = time.perf_counter()
    try:
        scan = read_scan(path)
        check_fits_in_memory(path, *(side * engine.scale for side in scan.pixels.shape[:2]))
        made, note = engine.upscale(scan.pixels, seed)
    except InputError as error:
        return {"input": str(path), "status": "failed", "error": str(error)}
    except (RuntimeError, ValueError, MemoryError) as error:  # torch's out-of-memory is a RuntimeError
        return {"input": str(path), "status": "failed", "error": f"{path}: upscaling failed ({error})."}
    if not np.isfinite(made).all():
        return {"input": str(path), "status": "failed", "error": f"{path}: the model produced non-finite values."}
    bits = scan.bit_depth or (16 if scan.kind == "dicom" else 8)
    atomic_write_bytes(target / f"{key}.png", png_bytes(made, bits))
    record = {"input": str(path), "output": f"{key}.png", "status": "done", "sha256": scan.sha256,
              "size": list(scan.size), "upscaled_size": list(made.shape), "bits": bits,
              "seconds": round(time.perf_counter() - started, 3)}
    if note:
        record["warnings"] = [note]
    return record


def png_bytes(pixels: np.ndarray, bits: int) -> bytes:
    """A gray PNG of ``pixels`` in [0, 1]: 8-bit for an 8-bit input, else 16-bit on the input's own scale, as
    ``dva run``'s 16-bit counterfactual (:func:`dva.core.io.png16_bytes`)."""
    from dva.core import io

    if bits <= 8:
        return io.png_bytes(pixels)
    return io.png16_bytes(io.to_stored_values(pixels, bits))


def _write_manifest(target: Path, settings: dict[str, Any], records: list[dict[str, Any]]) -> None:
    from dva.core.manifest import versions, write_manifest

    write_manifest(target, {"command": "upscale", "settings": settings, "versions": versions()}, records)

