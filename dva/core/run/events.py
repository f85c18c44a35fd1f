"""What a run tells whoever watches it: one object instead of a callback per event."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dva.core.run.jobs import ImageJob


class RunEvents:
    """The events of one :func:`dva.core.run.run`, each a method that does nothing here.

    Subclass it and override what you need (a progress bar, a benchmark's clock, a comparison's
    table). Every method is called on the thread that called ``run``, in the order below.
    """

    def loaded(self, runtime: Any) -> None:
        """The model is loaded (its components, device, encoder choice); no image is made yet."""

    def started(self, total: int) -> None:
        """This process's inputs are counted (a file holding several images counts once until it is read)."""

    def more(self, count: int) -> None:
        """A file just read holds ``count`` images more than the one it was counted as."""

    def image_done(self, job: ImageJob) -> None:
        """An image, or an input that could not be read, is finished: ``job.status`` is done, skipped or failed,
        and ``job.warnings`` says what the user should know about it."""
