"""``dva run``: inputs -> model images -> prior -> counterfactuals -> maps -> files, batch by batch.

UI-agnostic: progress is reported through callbacks, errors per image are recorded and skipped.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dva.core import attribution, io, manifest, outputs, weights
from dva.core.contracts import GenerateRequest
from dva.core.errors import ConfigError, InputError, machine_error
from dva.core.modality import ScanImage, ScanInput, load_result, read_input
from dva.core.registry import Recipe
from dva.core.prefetch import prefetched
from dva.core.shards import current_shard, gather

MISSING_MASK = "--mask {mask}: no such file or folder; pass a mask image or a folder of masks named like the inputs."
NO_MASK_FOR_INPUT = "no mask named like this input in {mask}: its map covers the whole image, not the lungs"
# The parts of a model folder (or hub snapshot) whose files decide a run's outputs; the encoder's are its own.
MODEL_PARTS = ("unet", "vae", "scheduler", "dva.json")
NON_FINITE = ("{path}: the model produced non-finite values (NaN or infinity) for this image, so nothing was written "
              "for it; the model's weights are likely broken (a training that diverged): check or retrain the model.")
MANIFEST_INTERVAL_S = 15.0  # the manifest grows with the run; per-image record.json files make resuming exact


@dataclass
class Generated:
    """What the prior made for one image: its (mean) counterfactual, the prior's condition image, the
    samples' per-pixel spread (``--samples`` above 1) and the unconditional reconstruction the map is
    taken against (``--reference reconstruction``); each ``(H, W, C)`` or ``(H, W)`` in [0, 1]."""

    counterfactual: np.ndarray
    condition: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    reference: np.ndarray | None = None


@dataclass
class ImageJob:
    """One input on its way through the run."""

    path: Path
    key: str
    status: str = "pending"  # pending, done, skipped, failed
    error: str | None = None
    sha256: str | None = None
    original_size: tuple[int, int] | None = None
    padding: io.Padding | None = None
    model_image: np.ndarray | None = None
    model_mask: np.ndarray | None = None
    mask: np.ndarray | None = None
    mask_path: Path | None = None
    seconds: float = 0.0
    name: str = ""  # the image's name within its file ("" when the file is one image)
    samples: int = 1  # counterfactuals averaged into this image's outputs (--samples)
    warnings: list[str] = field(default_factory=list)  # what the user should know about this image's result
    group: InputGroup | None = field(default=None, repr=False)

    def release(self) -> None:
        """Drop the pixel arrays once the image is written, so memory stays flat over a long run."""
        self.model_image = self.model_mask = self.mask = None

    def summary(self) -> dict[str, Any]:
        found = {
            "input": str(self.path),
            "output": self.key,
            "status": self.status,
            "error": self.error,
            "sha256": self.sha256,
            "original_size": list(self.original_size) if self.original_size else None,
            "padding": vars(self.padding) if self.padding else None,
            "mask": str(self.mask_path) if self.mask_path else None,
            "seconds": round(self.seconds, 3),
        }
        if self.name:
            found["image"] = self.name
        if self.samples > 1:
            found["samples"] = self.samples
        if self.warnings:
            found["warnings"] = list(self.warnings)
        return found


@dataclass
class InputGroup:
    """The images of one input file whose modality has a writer, counted down as they finish."""

    source: ScanInput
    key: str
    jobs: list[ImageJob]
    remaining: int


@dataclass
class RunResult:
    out: Path
    jobs: list[ImageJob]
    header: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None
    merged: list[dict[str, Any]] | None = None  # every process's image summaries (process 0 of several)

    def count(self, status: str) -> int:
        if self.merged is not None:
            return sum(summary["status"] == status for summary in self.merged)
        return sum(job.status == status for job in self.jobs)

    @property
    def exit_code(self) -> int:
        return 1 if self.count("failed") else 0


def output_keys(paths: list[Path], extensions: tuple[str, ...] = io.SUPPORTED_EXTENSIONS) -> list[str]:
    """Output folder names: the input's name less its extension (``brain.nii.gz`` -> ``brain``), made safe
    (:func:`dva.core.outputs.safe_key`) and unique with a short path hash where they collide."""
    keys = [outputs.safe_key(io.strip_extension(p, extensions), p) for p in paths]
    folded = [key.lower() for key in keys]  # case-insensitive file systems (macOS, Windows) fold names
    return [key if folded.count(key.lower()) == 1 else f"{key}-{outputs.path_tag(p)}" for key, p in zip(keys, paths)]


def owned_by_another_input(folder: Path, path: Path, sha256: str) -> bool:
    """Whether ``folder`` holds the outputs of another input file (other path and other content).

    Two runs of same-named inputs into one --out would otherwise overwrite each other's outputs; the same
    file moved (same content) or edited in place (same path) is the same input and reuses its folder.
    """
    record = manifest.read_record(folder)
    if record is None or record.get("sha256") == sha256 or not record.get("input"):
        return False
    return Path(record["input"]).resolve() != path.resolve()


def find_mask(mask: str | None, image: Path, extensions: tuple[str, ...] = io.SUPPORTED_EXTENSIONS) -> Path | None:
    """A mask file for ``image``: the file itself, or the file of the same name (less extension) in a mask folder."""
    if mask is None:
        return None
    location = Path(mask)
    if location.is_file():
        return location
    if location.is_dir():
        stem = io.strip_extension(image, extensions)
        for candidate in sorted(location.iterdir()):
            if io.has_extension(candidate, extensions) and io.strip_extension(candidate, extensions) == stem:
                return candidate
        return None
    raise ConfigError(MISSING_MASK.format(mask=mask))


def fit(job: ImageJob, source: ScanInput, image: ScanImage, resolution: int) -> None:
    """Fill ``job`` with one image of ``source`` fitted to the model (and its mask, if any)."""
    job.sha256 = source.sha256
    job.name = image.name
    job.original_size = (int(image.pixels.shape[0]), int(image.pixels.shape[1]))
    io.check_fits_in_memory(source.path, *job.original_size)
    if image.mask is not None and not image.mask.any():
        raise InputError(f"{job.mask_path or source.path}: the mask of {source.path.name} is empty (all zero), so its "
                         "map would be all zero; use the mask made for this image.")
    job.model_image, job.padding = io.to_model_input(image.pixels, resolution)
    if image.mask is not None:
        job.mask = image.mask
        job.model_mask = io.to_model_input(image.mask.astype(np.float32), resolution, nearest=True)[0] > 0.5
        if not job.model_mask.any():
            raise InputError(f"{job.mask_path or source.path}: the mask of {source.path.name} covers less than one pixel "
                             f"of the {resolution}-pixel model image, so its map would be all zero; check the mask.")


def prepare(job: ImageJob, resolution: int, mask: str | None) -> None:
    """Read, hash and fit one single-image input (and its mask) to the model; raises InputError."""
    job.mask_path = find_mask(mask, job.path)
    scan = io.read_scan(job.path)
    job.sha256 = scan.sha256
    image_mask = io.read_mask(job.mask_path, scan.size) if job.mask_path is not None else None
    fit(job, ScanInput(scan.path, scan.sha256, scan.kind, ()), ScanImage(scan.pixels, "", image_mask), resolution)


def expand(
    path: Path, key: str, modality: Any, options: dict[str, Any], resolution: int, mask: str | None
) -> tuple[ScanInput, list[ImageJob]]:
    """Read one input with its modality into one job per image (``key`` or ``key/name``); raises InputError.

    What the user should know about an image's result (no mask found for it, an assumed bit depth)
    goes into its job's warnings.
    """
    mask_path = find_mask(mask, path, modality.extensions or io.SUPPORTED_EXTENSIONS)
    source = read_input(modality, path, mask_path, options)
    notes = list(source.notes)
    if mask is not None and mask_path is None:
        notes.append(NO_MASK_FOR_INPUT.format(mask=mask))
    jobs = []
    for image in source.images:
        job = ImageJob(path, f"{key}/{image.name}" if image.name else key, mask_path=mask_path, warnings=list(notes))
        fit(job, source, image, resolution)
        jobs.append(job)
    return source, jobs


def write_outputs(folder: Path, job: ImageJob, generated: Generated) -> dict[str, dict[str, Any]]:
    """Write every output of one image; returns each file's name (relative to ``folder``) with its checksum.

    With ``generated.uncertainty`` (``--samples`` above 1) the per-pixel standard deviation of the samples'
    maps is written as ``uncertainty.png`` (heatmap on the map's own scale, so the two compare by eye) and
    into the safetensors. With ``generated.reference`` (``--reference reconstruction``) the map is
    ``reconstruction - counterfactual`` and ``reconstruction.png`` is written beside the counterfactual.
    """
    from safetensors.numpy import save as save_tensors

    counterfactual, reference, uncertainty = generated.counterfactual, generated.reference, generated.uncertainty
    base = job.model_image if reference is None else reference.mean(axis=-1)
    signed = attribution.attribution_map(base, counterfactual.mean(axis=-1), job.model_mask)
    scale = attribution.map_scale(signed, job.model_mask)
    full_input = io.to_original(job.model_image, job.padding, job.original_size)
    full_cf = np.clip(io.to_original(counterfactual, job.padding, job.original_size), 0.0, 1.0)
    full_reference = None if reference is None else np.clip(
        io.to_original(reference, job.padding, job.original_size), 0.0, 1.0)
    full_base = full_input if full_reference is None else full_reference.mean(axis=-1)
    full_signed = attribution.attribution_map(full_base, full_cf.mean(axis=-1), job.mask)
    heat, full_heat = attribution.heatmap(signed, scale), attribution.heatmap(full_signed, scale)
    files: dict[str, np.ndarray] = {
        "input.png": job.model_image,
        "counterfactual.png": counterfactual,
        "attribution.png": heat,
        "overlay.png": attribution.overlay(job.model_image, signed, scale, heat=heat),
        "fullsize/counterfactual.png": full_cf,
        "fullsize/attribution.png": full_heat,
        "fullsize/overlay.png": attribution.overlay(full_input, full_signed, scale, heat=full_heat),
    }
    if reference is not None:
        files["reconstruction.png"] = reference
        files["fullsize/reconstruction.png"] = full_reference
    if generated.condition is not None:
        files["condition.png"] = generated.condition
    spread: dict[str, np.ndarray] = {}
    if uncertainty is not None:
        full_spread = np.clip(io.to_original(uncertainty, job.padding, job.original_size), 0.0, None)
        spread["uncertainty"] = _inside(uncertainty, job.model_mask)
        spread["uncertainty_fullsize"] = _inside(full_spread, job.mask)
        files["uncertainty.png"] = attribution.heatmap(spread["uncertainty"], scale)
        files["fullsize/uncertainty.png"] = attribution.heatmap(spread["uncertainty_fullsize"], scale)
    written: dict[str, dict[str, Any]] = {}
    for name, array in files.items():
        data = io.png_bytes(array)
        io.atomic_write_bytes(folder / name, data)
        written[name] = manifest.checksum(data)
    tensors = {"attribution": signed, "attribution_fullsize": full_signed.astype(np.float32), **spread}
    if job.model_mask is not None:
        tensors["mask"] = job.model_mask.astype(np.uint8)
    minuend = "input" if reference is None else "unconditional reconstruction"
    counterfactuals = "counterfactual" if uncertainty is None else f"mean of {job.samples} counterfactuals"
    if reference is not None and uncertainty is not None:
        minuend = f"mean of {job.samples} unconditional reconstructions"
    metadata = {"definition": f"{minuend} - {counterfactuals} (grayscale, [0,1])", "heatmap_scale": f"{scale:.6g}"}
    if uncertainty is not None:
        metadata.update(
            samples=str(job.samples),
            uncertainty="per-pixel standard deviation (ddof 1) of the samples' grayscale maps",
        )
    data = save_tensors(tensors, metadata=metadata)
    io.atomic_write_bytes(folder / "attribution.safetensors", data)
    written["attribution.safetensors"] = manifest.checksum(data)
    return written


def _inside(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``values`` (float32), zero outside ``mask`` where given, as the maps are."""
    return (values if mask is None else np.where(mask, values, 0.0)).astype(np.float32)


def run_header(recipe_dict: dict[str, Any], runtime: Any) -> dict[str, Any]:
    """What the manifest says about the whole run: versions, recipe, model, encoder, device, seeds.

    ``encoder_pairing`` says whether the encoder is the one the model was trained with (``paired``), where
    each comes from, and the warning shown when it is not.
    """
    encoder = runtime.encoder
    choice = getattr(runtime, "encoder_choice", None)
    return {
        "tool": "dva run",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": manifest.versions(),
        "recipe": recipe_dict,
        "prompt": runtime.prompt,
        "model": {"location": runtime.source.location, "dva": runtime.source.dva},
        "model_note": runtime.source.dva.get("note"),
        "encoder": {
            "name": encoder.name,
            "family": encoder.family,
            "source": None if choice is None else choice.location,
            "projection": None if encoder.projection is None
            else ("trained" if encoder.projection_trained else "UNTRAINED (random, seed 0)"),
        },
        "encoder_pairing": None if choice is None else choice.as_dict(),
        "device": str(runtime.device),
        "dtype": str(runtime.dtype).removeprefix("torch."),
        "resolution": runtime.resolution,
        "unet_calls": runtime.unet_calls(),
        "seeds": {"per_image": recipe_dict["seed"], "generator": "torch.Generator('cpu').manual_seed(seed), one per image"},
        "samples": recipe_dict.get("samples", 1),
        "processes": 1,
    }


def weights_used(runtime: Any) -> dict[str, Any]:
    """The identity of every weight file the run loaded: the model's parts, a LoRA folder, the encoder's.

    Content hashes (cached, so a large model is hashed once) or a hub commit: see :mod:`dva.core.weights`.
    An encoder that does not say where its weights came from (a plugin's) is recorded as unknown.
    """
    cache = weights.HashCache.open()
    source = runtime.source
    found = {"model": weights.identify(source.location, MODEL_PARTS, runtime.recipe.revision, cache)}
    if source.dva.get("lora_folder"):
        found["lora"] = weights.identify(str(source.dva["lora_folder"]), (), None, cache)
    encoder_sources = getattr(runtime.encoder, "weight_sources", None)
    if not encoder_sources:
        found["encoder"] = {"unknown": f"the '{runtime.encoder.name}' encoder does not say where its weights are"}
    for role, (location, parts) in (encoder_sources or {}).items():
        found[role] = weights.identify(location, parts, None, cache)
    cache.save()
    return found


def write_group(out: Path, group: InputGroup, modality: Any, recipe_fingerprint: str) -> None:
    """Run the modality's writer on a file whose images are all written, then the file's own record.

    The writer gets each image's results read back from its folder, so a resumed run gives it the same
    values. Raises InputError (the writer cannot map this file back) or ConfigError (cannot write).
    """
    folder = out / group.key
    results = [load_result(image, out / job.key) for image, job in zip(group.source.images, group.jobs)]
    try:
        files = modality.write(folder, group.source, results)
    except OSError as error:
        raise ConfigError(cannot_write(Path(error.filename or folder), out, error)) from error
    record = {
        "input": str(group.source.path), "output": group.key, "status": "done", "sha256": group.source.sha256,
        "fingerprint": recipe_fingerprint, "images": [job.key for job in group.jobs], "files": files,
    }
    manifest.write_record(folder, record)


def run(
    recipe: Recipe,
    inputs: list[str] | io.InputWalk,
    out: Path,
    catalogue: Any,
    mask: str | None = None,
    on_start: Callable[[int], None] = lambda total: None,
    on_image: Callable[[ImageJob], None] = lambda job: None,
    on_loaded: Callable[[Any], None] = lambda runtime: None,
    writer_threads: int | None = None,
    on_more: Callable[[int], None] = lambda count: None,
    reader_threads: int | None = None,
) -> RunResult:
    """Generate counterfactuals and maps for every input into ``out``; resumes what is complete.

    ``inputs`` are paths, or their walk (:func:`dva.core.io.walk_inputs`, excluding ``out``) when the caller has
    walked them already. Inputs are read with the recipe's modality: a file may hold several images
    (``OUT/<file>/<name>/``), and a modality with a writer writes outputs of its own into ``OUT/<file>/`` once
    they are done.
    ``on_start`` gets the number of inputs, ``on_more`` how many more images a file gave than one.
    ``writer_threads``: threads writing outputs while the next batch samples, ``reader_threads``: threads
    reading the next inputs meanwhile (both default to 2 on an accelerator, 0 = inline on the CPU, where
    they would compete with torch for the same cores).

    One run at a time writes into ``out`` (a lock file held by the first process); another is refused.
    """
    modality = catalogue.get("modality", recipe.modality)
    extensions = modality.extensions or io.SUPPORTED_EXTENSIONS
    walk = inputs if isinstance(inputs, io.InputWalk) else io.walk_inputs(inputs, exclude=[out], extensions=extensions)
    files, missing = walk.select(extensions)
    if not files and not missing:
        raise ConfigError("No inputs given; pass image files, DICOM files or folders.")
    if mask is not None and not Path(mask).exists():
        raise ConfigError(MISSING_MASK.format(mask=mask))  # before any model is loaded
    check_samples(recipe, catalogue)  # before any model is loaded
    shard = current_shard(recipe.device)
    if not shard.is_main:  # the first process holds the folder for all of them
        outputs.ensure_output_folder(out)
        return _run(recipe, files, missing, out, catalogue, mask, shard, on_start, on_image, on_loaded,
                    writer_threads, on_more, reader_threads)
    with outputs.claimed(out):
        return _run(recipe, files, missing, out, catalogue, mask, shard, on_start, on_image, on_loaded,
                    writer_threads, on_more, reader_threads)


def _run(recipe: Recipe, files: list[Path], missing: list[tuple[Path, str]], out: Path, catalogue: Any,
         mask: str | None, shard: Any, on_start: Callable[[int], None], on_image: Callable[[ImageJob], None],
         on_loaded: Callable[[Any], None], writer_threads: int | None, on_more: Callable[[int], None],
         reader_threads: int | None) -> RunResult:
    """:func:`run` once the output folder is held: load, generate, write, report."""
    import torch

    from dva.core.runtime import assemble

    modality = catalogue.get("modality", recipe.modality)
    extensions = modality.extensions or io.SUPPORTED_EXTENSIONS
    keys = output_keys(files, extensions)
    position = {key: index for index, key in enumerate(keys)}
    failed_paths = [ImageJob(path, path.name, "failed", message) for path, message in missing] if shard.is_main else []
    runtime = assemble(recipe, catalogue)
    on_loaded(runtime)
    positive, negative = runtime.prompt_embeddings()
    recipe_dict = recipe.to_dict()
    header = run_header(recipe_dict, runtime)
    header["weights"] = weights_used(runtime)
    # Keys at their defaults leave the fingerprints of runs made before they existed unchanged.
    recipe_dict = {key: value for key, value in recipe_dict.items()
                   if (key, value) not in (("samples", 1), ("reference", "input"), ("revision", None))}
    recipe_fingerprint = manifest.fingerprint(
        recipe_dict, {"dtype": header["dtype"], "device": runtime.device.type, "prompt": runtime.prompt,
                      "weights": weights.digest(header["weights"])}
    )
    header["fingerprint"] = recipe_fingerprint
    header["processes"] = shard.count
    result = RunResult(out, list(failed_paths), header)
    mine = shard.take(list(zip(files, keys)))
    on_start(len(failed_paths) + len(mine))
    for job in failed_paths:
        on_image(job)

    def finished(job: ImageJob) -> None:
        """An image is done or skipped; the last image of a file with a writer sets its writer off."""
        on_image(job)
        group = job.group
        if group is None:
            return
        group.remaining -= 1
        if group.remaining:
            return
        all_skipped = all(j.status == "skipped" for j in group.jobs)
        try:
            if any(j.status == "failed" for j in group.jobs):
                raise InputError(f"{group.source.path}: an image of this file failed, so the file's own outputs "
                                 "were not written; fix the cause and rerun to resume.")
            if not (all_skipped and manifest.is_complete(out / group.key, group.source.sha256, recipe_fingerprint)):
                write_group(out, group, modality, recipe_fingerprint)
        except InputError as error:
            failed = ImageJob(group.source.path, group.key, "failed", str(error), sha256=group.source.sha256)
            result.jobs.append(failed)
            on_image(failed)
        finally:
            for member in group.jobs:
                member.group = None  # the file's pixels can go now

    # Writing overlaps sampling only when sampling runs on an accelerator; on the CPU the writer threads
    # would compete with torch's own threads for the same cores (measured slower), so write inline.
    if writer_threads is None:
        writer_threads = 0 if runtime.device.type == "cpu" else 2
    if reader_threads is None:
        reader_threads = 0 if runtime.device.type == "cpu" else 2
    samples = recipe.samples
    # --samples K: each image takes K entries of a prior call; a call holds batch_size // K images (at least one).
    images_per_call = max(1, recipe.batch_size // samples)
    writer = OutputWriter(out, recipe_fingerprint, finished, workers=writer_threads)
    pending: list[ImageJob] = []
    last_manifest = time.monotonic()

    def save_manifest(force: bool = False) -> None:
        """The manifest so far (one process only; several processes merge theirs at the end)."""
        nonlocal last_manifest
        if shard.count == 1 and (force or time.monotonic() - last_manifest > MANIFEST_INTERVAL_S):
            try:
                manifest.write_manifest(out, header, [j.summary() for j in result.jobs])
            except OSError as error:
                raise ConfigError(cannot_write(out / manifest.MANIFEST, out, error)) from error
            last_manifest = time.monotonic()

    def flush() -> None:
        if not pending:
            return
        started = time.perf_counter()
        gray = np.stack([job.model_image for job in pending])
        conditions = runtime.prior.condition(gray)
        # Sample k of image i is entry i * K + k, with its own generator seeded seed + k.
        images = torch.from_numpy(gray)[:, None].repeat_interleave(samples, 0).repeat(1, 3, 1, 1)
        condition_tensor = None if conditions is None else (
            torch.from_numpy(conditions)[:, None].repeat_interleave(samples, 0).repeat(1, 3, 1, 1)
        )
        def generators() -> list[torch.Generator]:
            return [torch.Generator("cpu").manual_seed(recipe.seed + k) for _ in pending for k in range(samples)]

        counterfactuals = runtime.prior.generate(GenerateRequest(
            images, positive, negative, generators(), recipe.steps, recipe.guidance_scale, condition_tensor
        )).permute(0, 2, 3, 1).numpy()
        references = None
        if recipe.reference == "reconstruction":
            # The same prior from the same noise, unconditional and unguided: everything but the prompt's effect.
            references = runtime.prior.generate(GenerateRequest(
                images, negative, negative, generators(), recipe.steps, 1.0, condition_tensor
            )).permute(0, 2, 3, 1).numpy()
        share = (time.perf_counter() - started) / len(pending)
        for index, job in enumerate(pending):
            job.seconds += share
            own = slice(index * samples, (index + 1) * samples)
            if not (np.isfinite(counterfactuals[own]).all() and (references is None or np.isfinite(references[own]).all())):
                job.status, job.error = "failed", NON_FINITE.format(path=job.path)
                job.release()
                finished(job)
                continue
            condition = None if conditions is None else conditions[index]
            if samples == 1:
                writer.submit(job, Generated(counterfactuals[index], condition,
                                             reference=None if references is None else references[index]))
                continue
            job.samples = samples
            mean, reference, spread = attribution.combine_samples(
                counterfactuals[own], None if references is None else references[own]
            )
            writer.submit(job, Generated(mean, condition, spread, reference))
        pending.clear()
        save_manifest()

    def read(item: tuple[Path, str]) -> tuple[ScanInput, list[ImageJob], float, str]:
        started = time.perf_counter()
        path, key = item
        source, jobs = expand(path, key, modality, recipe.modality_options, runtime.resolution, mask)
        taken = next((folder for folder in (out / key, out / jobs[0].key)
                      if owned_by_another_input(folder, path, source.sha256)), None)
        if taken is not None:  # a same-named input of an earlier run keeps its outputs; this one goes beside them
            own_key = f"{key}-{outputs.path_tag(path)}"
            for job in jobs:
                job.key = own_key + job.key[len(key):]
                job.warnings.append(f"{taken} holds the outputs of another input of the same name, so this "
                                    f"input's outputs are in {out / own_key}")
            key = own_key
        return source, jobs, time.perf_counter() - started, key

    completed = False
    save_manifest(force=True)  # from the start, so an interrupted run always leaves one
    try:
        for (path, key), outcome in prefetched(mine, read, reader_threads, depth=max(8, 2 * images_per_call)):
            if isinstance(outcome, InputError):
                failed = ImageJob(path, key, "failed", str(outcome))
                result.jobs.append(failed)
                on_image(failed)
                continue
            source, jobs, seconds, key = outcome
            result.jobs.extend(jobs)
            if len(jobs) > 1:
                on_more(len(jobs) - 1)
            group = InputGroup(source, key, jobs, len(jobs)) if modality.writer else None
            share = seconds / len(jobs)
            for job in jobs:
                job.seconds, job.group = share, group
                if manifest.is_complete(out / job.key, job.sha256, recipe_fingerprint):
                    job.status = "skipped"
                    job.release()
                    finished(job)
                    continue
                pending.append(job)
                if len(pending) >= images_per_call:
                    flush()
        flush()
        writer.drain()
        completed = True
    finally:
        writer.close()
        try:
            save_manifest(force=True)
        except ConfigError:
            if completed:
                raise
            # Another error is on its way out (a full disk, an interrupt): it is the one to report, and
            # the last manifest written stays in place.
    from dva.core.report import write_report

    summaries = [job.summary() for job in result.jobs]
    if shard.count > 1:
        numbered = [(position.get(summary["output"].split("/", 1)[0], -1), index, shard.index, summary)
                    for index, summary in enumerate(summaries)]
        everything = gather(numbered, shard)
        if not shard.is_main:
            return result
        header["images_per_process"] = [sum(item[2] == rank for item in everything) for rank in range(shard.count)]
        summaries = result.merged = [item[3] for item in sorted(everything, key=lambda item: item[:2])]
    try:
        if shard.count > 1:
            manifest.write_manifest(out, header, summaries)
        result.report = write_report(out, header, summaries)
    except OSError as error:
        raise ConfigError(cannot_write(Path(error.filename or out), out, error)) from error
    return result


def cannot_write(file: Path, out: Path, error: OSError) -> str:
    """The sentence for an output that could not be written: which file, why, and what to do."""
    what = machine_error(error, file) or f"{file} cannot be written ({error.strerror or error})"
    return f"{what[0].upper()}{what[1:]}; then rerun to resume (the completed images in {out} are kept)."


def check_samples(recipe: Recipe, catalogue: Any) -> None:
    """``--samples`` above 1 needs a prior that draws noise: a deterministic one would give K equal samples."""
    if recipe.samples > 1 and getattr(catalogue.get("prior", recipe.prior).resolve(), "deterministic", False):
        raise ConfigError(
            f"--samples {recipe.samples}: the prior '{recipe.prior}' is deterministic, so every sample would be the "
            "same; drop --samples or use a stochastic prior such as sdedit."
        )


class OutputWriter:
    """Writes each image's outputs on background threads while the next batch samples.

    PNG encoding releases the GIL, so writing overlaps sampling on a GPU. At most ``max_pending``
    images wait, which keeps memory flat. Errors (and interrupts) raised while writing reach the main
    thread when that image is finished, in input order. With ``workers=0`` it writes inline.
    """

    def __init__(
        self, out: Path, recipe_fingerprint: str, on_done: Callable[[ImageJob], None],
        workers: int = 2, max_pending: int = 8,
    ) -> None:
        self.out = out
        self.fingerprint = recipe_fingerprint
        self.on_done = on_done
        self.max_pending = max_pending
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="dva-writer") if workers > 0 else None
        self.pending: deque[tuple[ImageJob, Future]] = deque()

    def submit(self, job: ImageJob, generated: Generated) -> None:
        if self.pool is None:
            done: Future = Future()
            try:
                self._write(job, generated)
                done.set_result(None)
            except Exception as error:  # surfaces through _finish_oldest like a background failure
                done.set_exception(error)
            self.pending.append((job, done))
            self._finish_oldest()
            return
        self.pending.append((job, self.pool.submit(self._write, job, generated)))
        while len(self.pending) > self.max_pending:
            self._finish_oldest()

    def _write(self, job: ImageJob, generated: Generated) -> None:
        started = time.perf_counter()
        folder = self.out / job.key
        if not outputs.inside(folder, self.out):
            raise InputError(f"{job.path}: its output folder {job.key!r} would lie outside {self.out}; rename the input.")
        # This image's folder is this process's alone while it writes. Its old record goes first, so an
        # interruption leaves a folder that is redone, never one that mixes two runs' files.
        previous = manifest.read_record(folder) or {}
        (folder / manifest.RECORD).unlink(missing_ok=True)
        outputs.remove_stale_temporaries(folder, self.out)
        written = write_outputs(folder, job, generated)
        outputs.remove_stale_outputs(folder, set(written), [str(name) for name in previous.get("files", [])])
        job.seconds += time.perf_counter() - started
        record = {**job.summary(), "status": "done", "fingerprint": self.fingerprint, "files": list(written),
                  "checksums": written}
        manifest.write_record(folder, record)

    def _finish_oldest(self) -> None:
        job, future = self.pending.popleft()
        try:
            future.result()
        except InputError as error:
            job.status, job.error = "failed", str(error)
            job.release()
            self.on_done(job)
            return
        except OSError as error:
            raise ConfigError(cannot_write(Path(error.filename or self.out / job.key), self.out, error)) from error
        job.status = "done"
        job.release()
        self.on_done(job)

    def drain(self) -> None:
        while self.pending:
            self._finish_oldest()

    def close(self) -> None:
        """Let writes in flight finish (never a half-written image), drop queued ones, mark what completed."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        for job, future in self.pending:
            if future.done() and not future.cancelled() and future.exception() is None:
                job.status = "done"
        self.pending.clear()
