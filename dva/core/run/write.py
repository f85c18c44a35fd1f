"""Stage 3, write: each image's outputs (PNGs, the map's safetensors) and its record, on writer threads.

An image's folder is written whole or redone: its old record goes first, stale temporaries and outputs
of other settings go, and the record (with every file's checksum) is written last.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dva.core import attribution, dicom_outputs, io, manifest, outputs
from dva.core import calibration as calibration_module
from dva.core.calibration import Calibration
from dva.core.errors import ConfigError, InputError, machine_error
from dva.core.run.jobs import Generated, ImageJob
from dva.core.settings import RUN_SETTINGS, by_name


@dataclass
class Maps:
    """One image's signed attribution map at the model's size and at the input's own size, on one heatmap
    scale, with the gray full-size images it was taken from (``full_base`` less ``full_counterfactual``)."""

    signed: np.ndarray
    full_signed: np.ndarray
    scale: float
    full_base: np.ndarray
    full_counterfactual: np.ndarray
    full_reference: np.ndarray | None


# --fullsize (dva.core.settings): which images are written at the input's size too. Each is the image the model
# worked at resized (its size; with --tile, about the scan's own), the maps' values are in attribution.safetensors,
# and as PNGs they cost the most time at real scan sizes (docs/benchmarks.md): by default only the counterfactual.
FULLSIZE_DEFAULT: str = by_name(RUN_SETTINGS)["fullsize"].option.default
COUNTERFACTUAL_16BIT = "fullsize/counterfactual-16bit.png"


def write_outputs(folder: Path, job: ImageJob, generated: Generated, calibration: Calibration | None = None,
                  fullsize: str = FULLSIZE_DEFAULT, maps: Maps | None = None) -> dict[str, dict[str, Any]]:
    """Write every output of one image; returns each file's name (relative to ``folder``) with its checksum.

    With ``generated.uncertainty`` (``--samples`` above 1) the per-pixel standard deviation of the samples'
    maps is written as ``uncertainty.png`` (heatmap on the map's own scale, so the two compare by eye) and
    into the safetensors. With ``generated.reference`` (``--reference reconstruction``) the map is
    ``reconstruction - counterfactual`` and ``reconstruction.png`` is written beside the counterfactual.
    With a ``calibration`` (:mod:`dva.core.calibration`) the calibrated map is written as ``calibrated.png`` and
    into the safetensors, and ``job.score`` is set. ``fullsize="all"`` writes every image at the input's size
    too, the default only the counterfactual (and, for an input above 8 bits, its 16-bit version).
    ``maps``: :func:`attribution_maps` of the image when the caller has them.
    """
    maps = maps or attribution_maps(job, generated)
    everything = fullsize == "all"
    files = image_files(job, generated, maps, everything)
    spread = {} if generated.uncertainty is None else uncertainty_maps(job, generated.uncertainty)
    if spread:
        files["uncertainty.png"] = attribution.heatmap_rgb8(spread["uncertainty"], maps.scale)
        if everything:
            files["fullsize/uncertainty.png"] = attribution.heatmap_rgb8(spread["uncertainty_fullsize"], maps.scale)
    if calibration is not None:
        spread.update(calibrated_maps(job, maps, calibration))
        files["calibrated.png"] = attribution.heatmap_rgb8(spread["calibrated"], calibration_module.HEATMAP_SCALE)
        if everything:
            files["fullsize/calibrated.png"] = attribution.heatmap_rgb8(spread["calibrated_fullsize"],
                                                                        calibration_module.HEATMAP_SCALE)
    encoded = {name: io.png_bytes(array) for name, array in files.items()}
    if job.bit_depth is not None and job.bit_depth > 8:
        encoded[COUNTERFACTUAL_16BIT] = io.png16_bytes(io.to_stored_values(maps.full_counterfactual, job.bit_depth))
    encoded["attribution.safetensors"] = tensor_file(job, generated, maps, spread)
    written: dict[str, dict[str, Any]] = {}
    for name, data in encoded.items():
        io.atomic_write_bytes(folder / name, data)
        written[name] = manifest.checksum(data)
    if job.kind == "dicom" and not job.name:  # the counterfactual and map in the input's study, for DICOM viewers
        overlay = files.get("fullsize/overlay.png")
        if overlay is None:
            overlay = full_overlay(job, maps)
        written.update(dicom_outputs.write_dicom_outputs(folder, job.path, job.sha256, maps.full_counterfactual,
                                                         maps.full_signed, maps.scale, overlay, job.warnings))
    return written


def attribution_maps(job: ImageJob, generated: Generated) -> Maps:
    """The signed maps (the input, or the reconstruction, less the counterfactual; zero outside the mask).

    At full size the gray model-size images are resized (one resize each, not one per colour channel): the
    resize is linear, so the gray of the resized colours is the resize of the gray, up to the clip to [0, 1].
    """
    counterfactual, reference = generated.counterfactual.mean(axis=-1), generated.reference
    base = job.model_image if reference is None else reference.mean(axis=-1)
    signed = attribution.attribution_map(base, counterfactual, job.model_mask)
    full_cf = _full(counterfactual, job)
    full_base = _full(base, job, clip=reference is not None)
    full_signed = attribution.attribution_map(full_base, full_cf, job.mask)
    return Maps(signed, full_signed, attribution.map_scale(signed, job.model_mask), full_base, full_cf,
                None if reference is None else full_base)


def _full(gray: np.ndarray, job: ImageJob, clip: bool = True) -> np.ndarray:
    """A gray model-size image at the input's own size (clipped to [0, 1] unless ``clip`` is False)."""
    full = io.to_original(gray, job.padding, job.original_size)
    return np.clip(full, 0.0, 1.0) if clip else full


def image_files(job: ImageJob, generated: Generated, maps: Maps, fullsize: bool = False) -> dict[str, np.ndarray]:
    """The PNGs of one image by file name (the uncertainty and calibrated heatmaps aside); with ``fullsize``
    every image at the input's size too, else its counterfactual only.

    ``signed.png`` shows the signed map with a diverging colormap on the |map| heatmap's scale, centred on zero:
    red where the input is brighter than the counterfactual (an opacity removed), blue where darker.
    """
    heat = attribution.heatmap_rgb8(maps.signed, maps.scale)
    files: dict[str, np.ndarray] = {
        "input.png": job.model_image,
        "counterfactual.png": generated.counterfactual,
        "attribution.png": heat,
        "signed.png": attribution.signed_heatmap_rgb8(maps.signed, maps.scale),
        "overlay.png": attribution.overlay(job.model_image, maps.signed, maps.scale, heat=heat),
        "fullsize/counterfactual.png": maps.full_counterfactual,
    }
    if generated.reference is not None:
        files["reconstruction.png"] = generated.reference
    if generated.condition is not None:
        files["condition.png"] = generated.condition
    if fullsize:
        full_heat = attribution.heatmap_rgb8(maps.full_signed, maps.scale)
        files["fullsize/attribution.png"] = full_heat
        files["fullsize/signed.png"] = attribution.signed_heatmap_rgb8(maps.full_signed, maps.scale)
        files["fullsize/overlay.png"] = full_overlay(job, maps, full_heat)
        if maps.full_reference is not None:
            files["fullsize/reconstruction.png"] = maps.full_reference
    return files


def full_overlay(job: ImageJob, maps: Maps, heat: np.ndarray | None = None) -> np.ndarray:
    """The overlay at the input's size: the map's heatmap over the (model-size) input resized."""
    full_input = maps.full_base if maps.full_reference is None else _full(job.model_image, job, clip=False)
    heat = attribution.heatmap_rgb8(maps.full_signed, maps.scale) if heat is None else heat
    return attribution.overlay(full_input, maps.full_signed, maps.scale, heat=heat)


def calibrated_maps(job: ImageJob, maps: Maps, calibration: Calibration) -> dict[str, np.ndarray]:
    """The calibrated map at the model's size and the input's own (zero outside the mask); sets ``job.score``."""
    calibrated, score = calibration.assess(maps.signed, job.model_mask)
    job.score = round(score, 6)
    full = np.clip(io.to_original(calibrated, job.padding, job.original_size), 0.0, None)
    return {"calibrated": calibrated, "calibrated_fullsize": _inside(full, job.mask)}


def uncertainty_maps(job: ImageJob, uncertainty: np.ndarray) -> dict[str, np.ndarray]:
    """The samples' per-pixel spread at the model's size and the input's own, zero outside the mask."""
    full_spread = np.clip(io.to_original(uncertainty, job.padding, job.original_size), 0.0, None)
    return {"uncertainty": _inside(uncertainty, job.model_mask), "uncertainty_fullsize": _inside(full_spread, job.mask)}


def tensor_file(job: ImageJob, generated: Generated, maps: Maps, spread: dict[str, np.ndarray]) -> bytes:
    """``attribution.safetensors``: the signed maps (and spread, and mask) with what they are the difference of."""
    from safetensors.numpy import save as save_tensors

    tensors = {"attribution": maps.signed, "attribution_fullsize": maps.full_signed.astype(np.float32, copy=False), **spread}
    if job.model_mask is not None:
        tensors["mask"] = job.model_mask.astype(np.uint8)
    reference, uncertainty = generated.reference, generated.uncertainty
    minuend = "input" if reference is None else "unconditional reconstruction"
    counterfactuals = "counterfactual" if uncertainty is None else f"mean of {job.samples} counterfactuals"
    if reference is not None and uncertainty is not None:
        minuend = f"mean of {job.samples} unconditional reconstructions"
    metadata = {"definition": f"{minuend} - {counterfactuals} (grayscale, [0,1])", "heatmap_scale": f"{maps.scale:.6g}",
                "signed_heatmap": SIGNED_HEATMAP}
    if "calibrated" in spread:
        metadata["calibrated"] = calibration_module.SCORE_METHOD.split("; ", 1)[1]
    if uncertainty is not None:
        metadata.update(
            samples=str(job.samples),
            uncertainty="per-pixel standard deviation (ddof 1) of the samples' grayscale maps",
        )
    return canonical_safetensors(save_tensors(tensors, metadata=metadata))


SIGNED_HEATMAP = (f"signed.png: {attribution.SIGNED_COLORMAP}, -heatmap_scale (blue: darker than the counterfactual) "
                  "to +heatmap_scale (red: brighter)")


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` with its header's metadata in sorted key order, so the same maps give the same bytes.

    safetensors writes ``__metadata__`` from a hash map, in an order that changes between processes, so
    a resumed run's files would differ from an uninterrupted run's in their header alone. Written by hand
    because safetensors has no option for it; the header keeps its length, so the data does not move.
    """
    import json

    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    if "__metadata__" not in header:
        return data
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:  # another escaping than the library's: keep its bytes rather than move the data
        return data
    return b"".join((data[:8], text, b" " * (length - len(text)), memoryview(data)[8 + length:]))  # one copy


def _inside(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``values`` (float32), zero outside ``mask`` where given, as the maps are."""
    return (values if mask is None else np.where(mask, values, 0.0)).astype(np.float32)


def cannot_write(file: Path, out: Path, error: OSError) -> str:
    """The sentence for an output that could not be written: which file, why, and what to do."""
    what = machine_error(error, file) or f"{file} cannot be written ({error.strerror or error})"
    return f"{what[0].upper()}{what[1:]}; then rerun to resume (the completed images in {out} are kept)."


class OutputWriter:
    """Writes each image's outputs on background threads while the next batch samples.

    PNG encoding releases the GIL, so writing overlaps sampling on a GPU. At most ``max_pending``
    images wait, which keeps memory flat. Errors (and interrupts) raised while writing reach the main
    thread when that image is finished, in input order. With ``workers=0`` it writes inline.
    """

    def __init__(
        self, out: Path, recipe_fingerprint: str, on_done: Callable[[ImageJob], None],
        workers: int = 2, max_pending: int = 8, calibration: Calibration | None = None,
        fullsize: str = FULLSIZE_DEFAULT,
    ) -> None:
        self.out = out
        self.calibration = calibration
        self.fullsize = fullsize
        self.fingerprint = recipe_fingerprint
        self.on_done = on_done
        self.max_pending = max_pending
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="dva-writer") if workers > 0 else None
        self.pending: deque[tuple[ImageJob, Future]] = deque()

    def submit(self, job: ImageJob, generated: Generated) -> None:
        """Write ``job``'s outputs (now, or on a thread); finishes the oldest images while too many wait."""
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
        maps = attribution_maps(job, generated)
        written = write_outputs(folder, job, generated, self.calibration, self.fullsize, maps)
        outputs.remove_stale_outputs(folder, set(written), [str(name) for name in previous.get("files", [])])
        job.seconds += time.perf_counter() - started
        record = {**job.summary(), "status": "done", "fingerprint": self.fingerprint, "files": list(written),
                  "checksums": written, "heatmap_scale": float(f"{maps.scale:.6g}")}
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
        """Finish every image submitted (raising the first error of writing)."""
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
