"""dva-mri: a ``brain-mri`` modality and a dataset layout of NIfTI volumes, as a third-party dva plugin.

Only specs live here, so ``dva plugins`` lists them without importing nibabel or torch: the reader
and writer are in :mod:`dva_mri.volume`, the dataset layout in :mod:`dva_mri.dataset`.
"""

from __future__ import annotations

from dva import DatasetSpec, ModalitySpec, Option, hookimpl

SLICES = Option(str, "auto", "axial slices: auto (every slice with enough brain), 42, 40:60, 40:60:2 or 40,45,50")

BRAIN_MRI = ModalitySpec(
    name="brain-mri",
    implementation="dva_mri.volume:read_volume",
    writer="dva_mri.volume:write_volume",
    description="Brain MRI volumes (NIfTI): axial slices, percentile-normalised, brain-masked; maps saved back as NIfTI",
    healthy_prompt="normal brain mri",
    extensions=(".nii.gz", ".nii"),
    options={
        "slices": SLICES,
        "low_percentile": Option(float, 1.0, "percentile of the non-background voxels shown as black", 0.0, 100.0),
        "high_percentile": Option(float, 99.0, "percentile of the non-background voxels shown as white", 0.0, 100.0),
        "threshold": Option(float, 0.1, "without --mask, normalised intensity above which a voxel is brain", 0.0, 1.0),
        "min_brain": Option(float, 0.25, "slices=auto: least brain area of a slice, as a share of the largest", 0.0, 1.0),
    },
)

BRAIN_MRI_VOLUMES = DatasetSpec(
    name="brain-mri-volumes",
    implementation="dva_mri.dataset:open_volume_folders",
    detect="dva_mri.dataset:looks_like_volume_folders",
    description="One folder per class of NIfTI volumes (<class>/*.nii.gz, optional <class>/masks/), "
    "axial slices cached as 16-bit PNGs",
    options={
        "slices": SLICES,
        "cache": Option(str, None, "folder for the slice PNGs (default: <dataset>/.dva-slices)"),
    },
)


@hookimpl
def register_modalities(register):
    register(BRAIN_MRI)


@hookimpl
def register_datasets(register):
    register(BRAIN_MRI_VOLUMES)
