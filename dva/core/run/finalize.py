"""Stage 4, finalize: the run's account as images finish, each file's modality writer once its images are
all written, the manifest (from the start, so an interrupted run always leaves one) and the report.

Several processes merge their images into process 0's manifest and report at the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dva.core import manifest, report
from dva.core.errors import ConfigError, InputError
from dva.core.modality import load_result
from dva.core.run.events import RunEvents
from dva.core.run.jobs import ImageJob, InputGroup, RunResult
from dva.core.run.plan import Plan
from dva.core.run.read import ReadInput
from dva.core.run.write import cannot_write
from dva.core.shards import gather

MANIFEST_INTERVAL_S = 15.0  # the manifest grows with the run; per-image record.json files make resuming exact


class Ledger:
    """Every image of this process as it finishes: the result, the events, modality writers, the manifest."""

    def __init__(self, plan: Plan, header: dict[str, Any], events: RunEvents) -> None:
        self.out, self.shard, self.modality = plan.out, plan.shard, plan.modality
        self.header, self.fingerprint = header, header["fingerprint"]
        self.events = events
        self.result = RunResult(plan.out, [], header)
        self.last_manifest = time.monotonic()

    def failed(self, job: ImageJob) -> None:
        """An input that failed before any image of it was made (missing, unreadable)."""
        self.result.jobs.append(job)
        self.events.image_done(job)

    def expect(self, read: ReadInput) -> None:
        """The images of an input just read join the run (and one group, when its modality writes files)."""
        jobs = read.jobs
        self.result.jobs.extend(jobs)
        if len(jobs) > 1:
            self.events.more(len(jobs) - 1)
        group = InputGroup(read.source, read.key, jobs, len(jobs)) if self.modality.writer else None
        for job in jobs:
            job.group = group

    def skipped(self, job: ImageJob) -> None:
        """An image whose outputs a run with this recipe already made."""
        job.status = "skipped"
        score = (manifest.read_record(self.out / job.key) or {}).get("score")
        job.score = score if isinstance(score, (int, float)) else None
        job.release()
        self.finished(job)

    def finished(self, job: ImageJob) -> None:
        """An image is done, skipped or failed; the last image of a file with a writer sets its writer off."""
        self.events.image_done(job)
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
            if not (all_skipped and manifest.is_complete(self.out / group.key, group.source.sha256, self.fingerprint)):
                write_group(self.out, group, self.modality, self.fingerprint)
        except InputError as error:
            self.failed(ImageJob(group.source.path, group.key, "failed", str(error), sha256=group.source.sha256))
        finally:
            for member in group.jobs:
                member.group = None  # the file's pixels can go now

    def save_manifest(self, force: bool = False) -> None:
        """The manifest so far, at most every ``MANIFEST_INTERVAL_S`` unless forced (one process only:
        several processes merge theirs at the end)."""
        if self.shard.count == 1 and (force or time.monotonic() - self.last_manifest > MANIFEST_INTERVAL_S):
            try:
                manifest.write_manifest(self.out, self.header, [j.summary() for j in self.result.jobs])
            except OSError as error:
                raise ConfigError(cannot_write(self.out / manifest.MANIFEST, self.out, error)) from error
            self.last_manifest = time.monotonic()

    def save_last_manifest(self, completed: bool) -> None:
        """The manifest as the run ends. When the run did not complete, another error is on its way out (a
        full disk, an interrupt): it is the one to report, and the last manifest written stays in place."""
        try:
            self.save_manifest(force=True)
        except ConfigError:
            if completed:
                raise


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


def finalize(ledger: Ledger, positions: dict[str, int]) -> RunResult:
    """The report (and, for several processes, the merged manifest) once every image is finished.

    ``positions`` orders the images of several processes as the inputs were ordered; processes other
    than 0 return their own result only.
    """
    result, header, out, shard = ledger.result, ledger.header, ledger.out, ledger.shard
    summaries = [job.summary() for job in result.jobs]
    if shard.count > 1:
        numbered = [(positions.get(summary["output"].split("/", 1)[0], -1), index, shard.index, summary)
                    for index, summary in enumerate(summaries)]
        everything = gather(numbered, shard)
        if not shard.is_main:
            return result
        header["images_per_process"] = [sum(item[2] == rank for item in everything) for rank in range(shard.count)]
        summaries = result.merged = [item[3] for item in sorted(everything, key=lambda item: item[:2])]
    try:
        if shard.count > 1:
            manifest.write_manifest(out, header, summaries)
        result.report = report.write_report(out, header, summaries)
    except OSError as error:
        raise ConfigError(cannot_write(Path(error.filename or out), out, error)) from error
    return result
