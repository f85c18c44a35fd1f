"""Built-in modality: frontal chest radiographs."""

from __future__ import annotations

from dva.core.hookspecs import RegisterModality, hookimpl
from dva.core.io import SUPPORTED_EXTENSIONS
from dva.core.specs import ModalitySpec, Option

CHEST_XRAY = ModalitySpec(
    name="chest-xray",
    implementation="dva.core.io:read_scan",
    description="Frontal chest X-rays (PNG/JPEG/TIFF of any bit depth, DICOM)",
    healthy_prompt="normal chest x ray",
    extensions=SUPPORTED_EXTENSIONS,
    options={"bit_depth": Option(int, None, "bits holding data in 16-bit images (default: detected, and said)", 1, 16)},
)


@hookimpl
def register_modalities(register: RegisterModality) -> None:
    register(CHEST_XRAY)
