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


@dataclass
class Maps:
    """One image's signed attribution map at the model's size and at the input's own size, on one heatmap
    scale, with the full-size images they were taken from."""

    signed: np.ndarray
    full_signed: np.ndarray
    scale: float
    full_input: np.ndarray
    full_counterfactual: np.ndarray
    full_reference: np.ndarray | None


def write_outputs(folder: Path, job: ImageJob, generated: Generated,
                  calibration: Calibration | None = None) -> dict[str, dict[str, Any]]:
    """Write every output of one image; returns each file's name (relative to ``folder``) with its checksum.

    With ``generated.uncertainty`` (``--samples`` above 1) the per-pixel standard deviation of the samples'
    maps is written as ``uncertainty.png`` (heatmap on the map's own scale, so the two compare by eye) and
    into the safetensors. With ``generated.reference`` (``--reference reconstruction``) the map is
    ``reconstruction - counterfactual`` and ``reconstruction.png`` is written beside the counterfactual.
    With a ``calibration`` (:mod:`dva.core.calibration`) the calibrated map is written as ``calibrated.png`` and
    into the safetensors, and ``job.score`` is set.
    """
    maps = attribution_maps(job, generated)
    files = image_files(job, generated, maps)
    spread = {} if generated.uncertainty is None else uncertainty_maps(job, generated.uncertainty)
    if spread:
        files["uncertainty.png"] = attribution.heatmap(spread["uncertainty"], maps.scale)
        files["fullsize/uncertainty.png"] = attribution.heatmap(spread["uncertainty_fullsize"], maps.scale)
    if calibration is not None:
        spread.update(calibrated_maps(job, maps, calibration))
        files["calibrated.png"] = attribution.heatmap(spread["calibrated"], calibration_module.HEATMAP_SCALE)
        files["fullsize/calibrated.png"] = attribution.heatmap(spread["calibrated_fullsize"],
                                                               calibration_module.HEATMAP_SCALE)
    written: dict[str, dict[str, Any]] = {}
    for name, array in files.items():
        data = io.png_bytes(array)
        io.atomic_write_bytes(folder / name, data)
        written[name] = manifest.checksum(data)
    data = tensor_file(job, generated, maps, spread)
    io.atomic_write_bytes(folder / "attribution.safetensors", data)
    written["attribution.safetensors"] = manifest.checksum(data)
    if job.kind == "dicom" and not job.name:  # the counterfactual and map in the input's study, for DICOM viewers
        written.update(dicom_outputs.write_dicom_outputs(folder, job.path, job.sha256, maps.full_counterfactual.mean(
            axis=-1), maps.full_signed, maps.scale, files.get("fullsize/overlay.png"), job.warnings))
    return written


def attribution_maps(job: ImageJob, generated: Generated) -> Maps:
    """The signed maps (the input, or the reconstruction, less the counterfactual; zero outside the mask)."""
    counterfactual, reference = generated.counterfactual, generated.reference
    base = job.model_image if reference is None else reference.mean(axis=-1)
    signed = attribution.attribution_map(base, counterfactual.mean(axis=-1), job.model_mask)
    full_input = io.to_original(job.model_image, job.padding, job.original_size)
    full_cf = np.clip(io.to_original(counterfactual, job.padding, job.original_size), 0.0, 1.0)
    full_reference = None if reference is None else np.clip(
        io.to_original(reference, job.padding, job.original_size), 0.0, 1.0)
    full_base = full_input if full_reference is None else full_reference.mean(axis=-1)
    full_signed = attribution.attribution_map(full_base, full_cf.mean(axis=-1), job.mask)
    return Maps(signed, full_signed, attribution.map_scale(signed, job.model_mask), full_input, full_cf, full_reference)


def image_files(job: ImageJob, generated: Generated, maps: Maps) -> dict[str, np.ndarray]:
    """The PNGs of one image by file name, in the order they are written (the uncertainty heatmaps aside)."""
    heat, full_heat = attribution.heatmap(maps.signed, maps.scale), attribution.heatmap(maps.full_signed, maps.scale)
    files: dict[str, np.ndarray] = {
        "input.png": job.model_image,
        "counterfactual.png": generated.counterfactual,
        "attribution.png": heat,
        "overlay.png": attribution.overlay(job.model_image, maps.signed, maps.scale, heat=heat),
        "fullsize/counterfactual.png": maps.full_counterfactual,
        "fullsize/attribution.png": full_heat,
        "fullsize/overlay.png": attribution.overlay(maps.full_input, maps.full_signed, maps.scale, heat=full_heat),
    }
    if generated.reference is not None:
        files["reconstruction.png"] = generated.reference
        files["fullsize/reconstruction.png"] = maps.full_reference
    if generated.condition is not None:
        files["condition.png"] = generated.condition
    return files


def calibrated_maps(job: ImageJob, maps: Maps, calibration: Calibration) -> dict[str, np.ndarray]:
    """The calibrated map at the model's size and the input's own (zero outside the mask); sets ``job.score``."""
    calibrated = calibration.calibrated(maps.signed, job.model_mask)
    job.score = round(calibration_module.score(calibrated, job.model_mask), 6)
    full = np.clip(io.to_original(calibrated, job.padding, job.original_size), 0.0, None)
    return {"calibrated": calibrated, "calibrated_fullsize": _inside(full, job.mask)}


def uncertainty_maps(job: ImageJob, uncertainty: np.ndarray) -> dict[str, np.ndarray]:
    """The samples' per-pixel spread at the model's size and the input's own, zero outside the mask."""
    full_spread = np.clip(io.to_original(uncertainty, job.padding, job.original_size), 0.0, None)
    return {"uncertainty": _inside(uncertainty, job.model_mask), "uncertainty_fullsize": _inside(full_spread, job.mask)}


def tensor_file(job: ImageJob, generated: Generated, maps: Maps, spread: dict[str, np.ndarray]) -> bytes:
    """``attribution.safetensors``: the signed maps (and spread, and mask) with what they are the difference of."""
    from safetensors.numpy import save as save_tensors

    tensors = {"attribution": maps.signed, "attribution_fullsize": maps.full_signed.astype(np.float32), **spread}
    if job.model_mask is not None:
        tensors["mask"] = job.model_mask.astype(np.uint8)
    reference, uncertainty = generated.reference, generated.uncertainty
    minuend = "input" if reference is None else "unconditional reconstruction"
    counterfactuals = "counterfactual" if uncertainty is None else f"mean of {job.samples} counterfactuals"
    if reference is not None and uncertainty is not None:
        minuend = f"mean of {job.samples} unconditional reconstructions"
    metadata = {"definition": f"{minuend} - {counterfactuals} (grayscale, [0,1])", "heatmap_scale": f"{maps.scale:.6g}"}
    if "calibrated" in spread:
        metadata["calibrated"] = calibration_module.SCORE_METHOD.split("; ", 1)[1]
    if uncertainty is not None:
        metadata.update(
            samples=str(job.samples),
            uncertainty="per-pixel standard deviation (ddof 1) of the samples' grayscale maps",
        )
    return canonical_safetensors(save_tensors(tensors, metadata=metadata))


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
    return data[:8] + text + b" " * (length - len(text)) + data[8 + length:]


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
    ) -> None:
        self.out = out
        self.calibration = calibration
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
        written = write_outputs(folder, job, generated, self.calibration)
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
