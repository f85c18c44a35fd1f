"""Built-in modality: frontal chest radiographs."""

from __future__ import annotations

from dva.core.hookspecs import hookimpl
from dva.core.io import SUPPORTED_EXTENSIONS
from dva.core.specs import ModalitySpec

CHEST_XRAY = ModalitySpec(
    name="chest-xray",
    implementation="dva.core.io:read_scan",
    description="Frontal chest X-rays (PNG/JPEG/TIFF of any bit depth, DICOM)",
    healthy_prompt="normal chest x ray",
    extensions=SUPPORTED_EXTENSIONS,
)


@hookimpl
def register_modalities(register):
    register(CHEST_XRAY)
