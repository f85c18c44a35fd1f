"""``dva run`` top to bottom: plan, then read, sample and write batch by batch, then finalize."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dva.core.calibration import Calibration, for_run
from dva.core.errors import InputError
from dva.core.io import InputWalk
from dva.core.prefetch import prefetched
from dva.core.registry import Recipe
from dva.core.run.events import RunEvents
from dva.core.run.finalize import Ledger, finalize
from dva.core.run.header import describe_run
from dva.core.run.jobs import ImageJob, RunResult
from dva.core.run.plan import Plan, already_made, holding_output_folder, plan_run
from dva.core.run.read import InputReader
from dva.core.run.sample import Sampler
from dva.core.run.write import FULLSIZE_DEFAULT, OutputWriter


def run(
    recipe: Recipe,
    inputs: list[str] | InputWalk,
    out: Path,
    catalogue: Any,
    mask: str | None = None,
    *,
    events: RunEvents | None = None,
    writer_threads: int | None = None,
    reader_threads: int | None = None,
) -> RunResult:
    """Generate counterfactuals and maps for every input into ``out``; resumes what is complete.

    ``inputs`` are paths, or their walk (:func:`dva.core.io.walk_inputs`, excluding ``out``) when the caller has
    walked them already. Inputs are read with the recipe's modality: a file may hold several images
    (``OUT/<file>/<name>/``), and a modality with a writer writes outputs of its own into ``OUT/<file>/`` once
    they are done.
    ``events`` hears of the run's progress (:class:`RunEvents`). ``writer_threads``: threads writing
    outputs while the next batch samples, ``reader_threads``: threads reading the next inputs meanwhile
    (both default to 2 on an accelerator, 0 = inline on the CPU, where they would compete with torch for
    the same cores, measured slower).

    One run at a time writes into ``out`` (a lock file held by the first process); another is refused.
    """
    from dva.core.runtime import assemble

    events = events or RunEvents()
    plan = plan_run(recipe, inputs, out, catalogue, mask)  # every check that needs no model, before one loads
    with holding_output_folder(plan):
        runtime = assemble(recipe, catalogue)
        mask_needed = getattr(runtime.prior, "needs_mask", None)  # --mask was checked given (plan_run)
        events.loaded(runtime)
        sampler = Sampler(runtime, recipe)
        header = describe_run(recipe, runtime, plan.shard.count)
        calibration = calibrated_header(header, recipe, mask)
        ledger = Ledger(plan, header, events)
        events.started(plan.total)
        for job in plan.failed:
            ledger.failed(job)
        reader = InputReader(out, plan.modality, recipe.modality_options, runtime.resolution, mask, mask_needed,
                             sampler.tiling)
        default_threads = 0 if runtime.device.type == "cpu" else 2
        make_images(plan, reader, sampler, ledger, calibration,
                    default_threads if writer_threads is None else writer_threads,
                    default_threads if reader_threads is None else reader_threads)
        return finalize(ledger, plan.positions)


def calibrated_header(header: dict[str, Any], recipe: Recipe, mask: str | None) -> Calibration | None:
    """The model folder's calibration when the run uses it (:func:`dva.core.calibration.for_run`); the header
    says whether the run is calibrated and, when it is, how its scores are made (``score_method``)."""
    calibration, status = for_run(header, getattr(recipe, "calibration", "auto") or "auto", masks=mask is not None)
    header["calibration"] = status
    if calibration is not None:
        header["score_method"] = status["score_method"]
    return calibration


def make_images(plan: Plan, reader: InputReader, sampler: Sampler, ledger: Ledger, calibration: Calibration | None,
                writer_threads: int, reader_threads: int) -> None:
    """This process's inputs read ahead, sampled in batches and written in the background.

    An image already made with this recipe is skipped (resuming). On any error or interrupt the writes in
    flight finish and the manifest says what was done.
    """
    writer = OutputWriter(plan.out, ledger.fingerprint, ledger.finished, workers=writer_threads,
                          calibration=calibration, fullsize=getattr(sampler.recipe, "fullsize", FULLSIZE_DEFAULT))
    batch: list[ImageJob] = []
    completed = False
    ledger.save_manifest(force=True)
    try:
        depth = max(8, 2 * sampler.images_per_call)
        for (path, key), read in prefetched(plan.mine, reader, reader_threads, depth=depth):
            if isinstance(read, InputError):
                ledger.failed(ImageJob(path, key, "failed", str(read)))
                continue
            ledger.expect(read)
            for job in read.jobs:
                if already_made(plan.out, job, ledger.fingerprint):
                    ledger.skipped(job)
                    continue
                batch.append(job)
                if len(batch) >= sampler.images_per_call:
                    sample_and_write(batch, sampler, writer, ledger)
        sample_and_write(batch, sampler, writer, ledger)
        writer.drain()
        completed = True
    finally:
        writer.close()
        ledger.save_last_manifest(completed)


def sample_and_write(batch: list[ImageJob], sampler: Sampler, writer: OutputWriter, ledger: Ledger) -> None:
    """Sample ``batch`` and hand each image to the writer (an image the prior failed finishes as failed);
    empties ``batch``."""
    if not batch:
        return
    for job, generated in zip(batch, sampler.sample(batch)):
        if generated is None:
            ledger.finished(job)
        else:
            writer.submit(job, generated)
    batch.clear()
    ledger.save_manifest()
