"""``dva run``: inputs -> model images -> prior -> counterfactuals -> maps -> files, batch by batch.

:func:`run` (in :mod:`.pipeline`) reads top to bottom as the run's stages, one module each:

1. **plan** (:mod:`.plan`): the inputs, their output folders, this process's shard, every check that
   needs no model; **read** (:mod:`.read`) then fits each input to the model, on reader threads;
2. **sample** (:mod:`.sample`): batches of images through the prior;
3. **write** (:mod:`.write`): each image's outputs and record, on writer threads;
4. **finalize** (:mod:`.finalize`): the modality writers, the manifest, the report.

UI-agnostic: progress goes to one :class:`RunEvents` object; an image's error is recorded and the run goes on.
"""

from dva.core.run.events import RunEvents
from dva.core.run.jobs import Generated, ImageJob, RunResult
from dva.core.run.pipeline import run

__all__ = ["Generated", "ImageJob", "RunEvents", "RunResult", "run"]
