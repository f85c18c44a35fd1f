"""What ``dva run`` shows while it works: the model it loaded, a progress bar, and each image's notes."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dva.core.run import ImageJob, RunEvents


class RunProgress(RunEvents):
    """A run's events on the terminal (``console``, stderr): the header line, a bar over the images, notes."""

    def __init__(self, recipe: Any, console: Any) -> None:
        self.recipe = recipe
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
        )
        self.task: Any = None
        self.total = 0

    def loaded(self, runtime: Any) -> None:
        """The model's note, a warning for an encoder it was not trained with, and one line of what runs."""
        recipe, console = self.recipe, self.console
        note = runtime.source.dva.get("note")
        if note:
            console.print(f"[bold yellow]Note:[/] {note}", highlight=False)
        choice = runtime.encoder_choice
        if choice is not None and not choice.paired:
            console.print(f"[bold red]WARNING:[/] [red]{escape(choice.warning)}[/]", highlight=False)
        console.print(
            f"{recipe.modality} · model {runtime.source.location} · encoder {runtime.encoder.name} · prior {recipe.prior} "
            f"(strength {recipe.prior_options.get('strength')}) · {runtime.unet_calls()} denoising steps of "
            f"{recipe.steps}{f' · {recipe.samples} samples per image' if recipe.samples > 1 else ''} · "
            f"{runtime.device} {str(runtime.dtype).removeprefix('torch.')}",
            highlight=False,
        )

    def started(self, total: int) -> None:
        self.progress.start()
        self.task, self.total = self.progress.add_task("images", total=total), total

    def more(self, count: int) -> None:
        self.total += count
        self.progress.update(self.task, total=self.total)

    def image_done(self, job: ImageJob) -> None:
        """A failed image's reason and every image's notes, above the bar."""
        if job.status == "failed":
            self.progress.console.print(f"[red]skipped[/] {escape(str(job.error))}", highlight=False, soft_wrap=True)
        for warning in job.warnings:
            self.progress.console.print(f"[yellow]note[/] {escape(job.key)}: {escape(warning)}", highlight=False,
                                        soft_wrap=True)
        self.progress.advance(self.task)

    def stop(self) -> None:
        """Take the bar off the terminal (when it was started)."""
        if self.task is not None:
            self.progress.stop()
