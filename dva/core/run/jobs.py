"""The data a run passes between its stages: one job per image, what the prior made for it, the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dva.core import io
from dva.core.contracts import ScanInput


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
    kind: str = ""  # what the input file is, as its reader says ("dicom", "png", ...)
    bit_depth: int | None = None  # the input's (see dva.core.contracts.Scan); above 8 a 16-bit counterfactual is written
    samples: int = 1  # counterfactuals averaged into this image's outputs (--samples)
    warnings: list[str] = field(default_factory=list)  # what the user should know about this image's result
    score: float | None = None  # the image-level abnormality score (a calibrated model's run only)
    group: InputGroup | None = field(default=None, repr=False)

    def release(self) -> None:
        """Drop the pixel arrays once the image is written, so memory stays flat over a long run."""
        self.model_image = self.model_mask = self.mask = None

    def summary(self) -> dict[str, Any]:
        """This image's entry in the manifest (and the start of its record.json)."""
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
        if self.score is not None:
            found["score"] = self.score
        if self.bit_depth is not None and self.bit_depth > 8:
            found["bit_depth"] = self.bit_depth  # the scale of fullsize/counterfactual-16bit.png's values
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
    """What a run did: every job of this process, the manifest's header, where the report is."""

    out: Path
    jobs: list[ImageJob]
    header: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None
    merged: list[dict[str, Any]] | None = None  # every process's image summaries (process 0 of several)

    def count(self, status: str) -> int:
        """Images with ``status`` (done, skipped, failed), over every process where they were merged."""
        if self.merged is not None:
            return sum(summary["status"] == status for summary in self.merged)
        return sum(job.status == status for job in self.jobs)

    @property
    def exit_code(self) -> int:
        return 1 if self.count("failed") else 0
