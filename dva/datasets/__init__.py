"""Labelled datasets for fine-tuning and evaluation: samples with a class, lung mask, lesion mask and prompt.

Layouts (COVID-19 Radiography folders, class folders, CSV) are dataset plugins; ``dva phantoms``
writes synthetic chest X-rays in the COVID-19 Radiography layout with ground-truth lesion masks.
"""

from __future__ import annotations

from dva.core.contracts import LabelledDataset, Sample

__all__ = ["LabelledDataset", "Sample"]
