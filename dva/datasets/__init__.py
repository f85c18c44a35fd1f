"""Labelled datasets for fine-tuning and evaluation: samples with a class, lung mask, lesion mask and prompt.

Layouts (COVID-19 Radiography folders, class folders, CSV) are dataset plugins; ``dva phantoms``
writes synthetic chest X-rays in the COVID-19 Radiography layout with ground-truth lesion masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One labelled image, with optional lung mask, ground-truth lesion mask and its own prompt."""

    path: Path
    label: str
    mask: Path | None = None
    lesion: Path | None = None
    prompt: str | None = None


@dataclass
class LabelledDataset:
    """The samples of one dataset location, in a stable order."""

    root: Path
    layout: str
    samples: list[Sample] = field(default_factory=list)

    def classes(self) -> list[str]:
        """Class labels in order of first appearance."""
        return list(dict.fromkeys(sample.label for sample in self.samples))

    def by_class(self, label: str) -> list[Sample]:
        return [sample for sample in self.samples if sample.label == label]
