"""The VAE check (thesis appendix A.2): how well a model's autoencoder reproduces the images of a modality.

Before fine-tuning Stable Diffusion on a new modality, a researcher must know whether its VAE can
reproduce that modality at all: whatever the VAE cannot reproduce shows up in every counterfactual and as
background in every map. :func:`check_images` encodes each image with the model's VAE (diffusers'
``AutoencoderKL``, nothing else of the model is loaded) and decodes it again, after the same preprocessing
``dva run`` applies (grayscale in [0, 1], padded to a square with black, resized to the model's side,
repeated to three channels in [-1, 1]). The latent is the posterior's **mean** (``latent_dist.mode()``, as
dva's DDIM inversion encodes), so the check has no randomness. The reconstruction is clamped to [0, 1] and
reduced to gray by the mean of its channels, as ``dva run`` reads its counterfactuals.

Each image is scored on its own area at the model's size (the black padding left out): PSNR (peak 1),
SSIM and MS-SSIM from :mod:`dva.metrics.similarity`. MS-SSIM is reported only when its five scales fit
(shorter side above 160 px); otherwise it is ``None`` with a note, never a number of fewer scales.

The verdict (:func:`verdict`) compares mean PSNR and mean SSIM with :data:`THRESHOLDS`, dva's choice,
anchored on what Stable Diffusion's own VAE reaches on natural images (docs/usage.md gives the sources).
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dva.core.errors import ConfigError, InputError

POSTERIOR = "mean"  # the latent each image is decoded from (the posterior's mean; no sampling)
FULL_MS_SSIM_SCALES = 5  # MS-SSIM as published (Wang et al. 2003); fewer scales are not the same measure
VERDICTS = ("PASS", "WARN", "FAIL")  # best first


@dataclass(frozen=True)
class Thresholds:
    """PASS needs both PSNR and SSIM at or above the pass lines; below either fail line is FAIL; else WARN."""

    pass_psnr: float = 30.0
    pass_ssim: float = 0.85
    fail_psnr: float = 25.0
    fail_ssim: float = 0.70


# dva's choice (docs/usage.md, "Checking the autoencoder"): FAIL below what SD v1's VAE reaches on natural
# photographs (COCO 256 px: 23.4 dB / SSIM 0.69; LAION-Aesthetics: 26.0 dB / 0.81), PASS at an RMS error of
# about 3% of full scale (30 dB, 8 grey levels of 8) with SSIM 0.85.
THRESHOLDS = Thresholds()


def verdict(psnr: float, ssim: float, thresholds: Thresholds = THRESHOLDS) -> str:
    """PASS, WARN or FAIL for a PSNR (dB) and an SSIM (single images or a class's means)."""
    if psnr < thresholds.fail_psnr or ssim < thresholds.fail_ssim:
        return "FAIL"
    if psnr >= thresholds.pass_psnr and ssim >= thresholds.pass_ssim:
        return "PASS"
    return "WARN"


def worst_verdict(verdicts: Iterable[str]) -> str:
    """The worst of some verdicts (FAIL before WARN before PASS)."""
    return max(verdicts, key=VERDICTS.index, default="FAIL")


# -- the autoencoder ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VaeSource:
    """Where a model's VAE lies: a local folder or hub id, its ``subfolder`` (None: the folder is the VAE),
    the image side the model makes (None: the VAE config's ``sample_size`` decides once loaded) and, for a hub id,
    the revision to load."""

    location: str
    subfolder: str | None
    is_local: bool
    model_resolution: int | None
    revision: str | None = None


def _json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{file}: not a readable JSON config ({error}); restore it from the model's source.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: not a JSON object; restore it from the model's source.")
    return data


def _downsampling(vae_config: dict[str, Any]) -> int:
    """How many pixels one latent pixel covers on a side: 2 per encoder block after the first."""
    return 2 ** (len(vae_config.get("block_out_channels") or [0]) - 1)


def locate_vae(model: str | None, revision: str | None = None) -> VaeSource:
    """The VAE of ``model``: a Stable Diffusion or dva model folder (its ``vae/``), a LoRA folder (its base
    model's), a diffusers ``AutoencoderKL`` folder itself, or a hub id (at ``revision``); None is dva's bundled
    tiny model."""
    from dva.core.adapters import is_lora_folder
    from dva.core.model_folder import HUB_ID, inspect_model, resolve_lora_source

    if not model:
        model = inspect_model(None).location
    path = Path(model).expanduser()
    if not path.exists():
        if HUB_ID.match(model) and not model.startswith((".", "/", "~")):
            return VaeSource(model, "vae", False, None, revision)
        raise ConfigError(f"--model {model}: no such folder, and not a hub id (organisation/name); check the path.")
    if revision:
        raise ConfigError(f"--revision {revision}: the model '{model}' is a local folder, which has no hub revisions; "
                          "drop --revision, or pass the model's hub id.")
    if not path.is_dir():
        raise ConfigError(f"--model {model}: is a file; pass the model folder (with vae/) or a VAE folder.")
    if is_lora_folder(path):  # LoRA adapters never touch the VAE: it is the base model's
        return locate_vae(resolve_lora_source(path).location)
    if (path / "vae" / "config.json").is_file():
        folder, subfolder = path / "vae", "vae"
    elif (path / "config.json").is_file() and "AutoencoderKL" in str(_json(path / "config.json").get("_class_name")):
        folder, subfolder = path, None
    else:
        raise ConfigError(f"--model {model}: the folder has no VAE (no vae/config.json, and it is not an "
                          "AutoencoderKL folder itself); pass a Stable Diffusion folder, a dva model folder or a VAE folder.")
    config = _json(folder / "config.json")
    kind = str(config.get("_class_name", "AutoencoderKL"))
    if kind != "AutoencoderKL":
        raise ConfigError(f"--model {model}: its VAE is a {kind}, not an AutoencoderKL (Stable Diffusion's kind); "
                          "dva checks AutoencoderKL VAEs only.")
    unet = path / "unet" / "config.json"
    resolution = None
    if subfolder and unet.is_file():
        sample_size = _json(unet).get("sample_size")
        sample_size = sample_size[0] if isinstance(sample_size, list) and sample_size else sample_size
        if isinstance(sample_size, int) and not isinstance(sample_size, bool):
            resolution = sample_size * _downsampling(config)
    return VaeSource(str(path), subfolder, True, resolution)


def load_vae(source: VaeSource, device: Any, dtype: Any) -> Any:
    """The ``AutoencoderKL`` of ``source`` on ``device`` in ``dtype`` (float32 where its config asks to be upcast
    from float16, as diffusers' pipelines do), in eval mode; a load failure is one sentence."""
    import torch
    from diffusers import AutoencoderKL

    extra = {"subfolder": source.subfolder} if source.subfolder else {}
    if source.revision:
        extra["revision"] = source.revision
    if dtype == torch.float16 and _upcast(source):
        dtype = torch.float32
    try:
        vae = AutoencoderKL.from_pretrained(source.location, torch_dtype=dtype, **extra)
    except (OSError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        where = "folder" if source.is_local else "hub id"
        raise ConfigError(f"Cannot load the VAE of the model {where} '{source.location}' ({first}); pass a complete "
                          "local model folder with --model, or connect to the model hub.") from error
    return vae.to(device).eval().requires_grad_(False)


def _upcast(source: VaeSource) -> bool:
    """Whether the VAE's config asks to run in float32 rather than float16 (``force_upcast``, SD v1's VAE
    overflows in float16); a hub VAE's config is not read before loading, so it is upcast too."""
    if not source.is_local:
        return True
    folder = Path(source.location) / (source.subfolder or "")
    return bool(_json(folder / "config.json").get("force_upcast", True))


def vae_resolution(source: VaeSource, vae: Any, requested: int | None) -> int:
    """The side images are encoded at: ``requested`` (a multiple of the VAE's downsampling), else the model's."""
    factor = _downsampling(dict(vae.config))
    if requested is None:
        size = vae.config.sample_size
        return source.model_resolution or int(size[0] if isinstance(size, (list, tuple)) else size)
    if requested % factor:
        raise ConfigError(f"--resolution {requested}: the VAE downsamples by {factor}, so the side must be a multiple "
                          f"of {factor} (e.g. {max(factor, requested // factor * factor)}).")
    return requested


def reconstruct(vae: Any, images: np.ndarray) -> np.ndarray:
    """The VAE's reconstructions ``(B, H, W)`` of gray images ``(B, H, W)`` in [0, 1], from the posterior's mean.

    Clamped to [0, 1] and reduced to gray by the channels' mean; a non-finite output stays non-finite (NaN),
    so the caller can fail that image.
    """
    import torch

    device, dtype = vae.device, vae.dtype
    with torch.inference_mode():
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None].repeat(1, 3, 1, 1)
        latents = vae.encode((batch * 2 - 1).to(device, dtype)).latent_dist.mode()
        decoded = vae.decode(latents).sample.float().cpu()
    finite = torch.isfinite(decoded).flatten(1).all(dim=1)
    gray = ((decoded + 1) / 2).clamp(0, 1).mean(dim=1)
    gray[~finite] = float("nan")
    return gray.numpy()


# -- scoring ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    """One image's PSNR (dB), SSIM and MS-SSIM (None where its five scales do not fit)."""

    psnr: float
    ssim: float
    ms_ssim: float | None
    ms_ssim_scales: int


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of intensities in [0, 1] (peak 1): 10 log10(1 / MSE). Written here: one line, and the
    libraries dva uses (pytorch-msssim, torchvision) do not provide it."""
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def score(reference: np.ndarray, test: np.ndarray) -> Scores:
    """PSNR, SSIM and MS-SSIM of an image and its reconstruction, both (H, W) in [0, 1].

    A non-finite result is an :class:`InputError` (the image failed); so is an image too small for SSIM.
    """
    from dva.metrics.similarity import similarity

    value = psnr(reference, test)
    if not math.isfinite(value):
        raise InputError("the reconstruction is identical to the input or not finite, so its PSNR is not a number")
    found = similarity(reference, test)
    if not (math.isfinite(found.ssim) and math.isfinite(found.ms_ssim)):
        raise InputError("SSIM or MS-SSIM of the reconstruction is not finite")
    full = found.ms_ssim_scales >= FULL_MS_SSIM_SCALES
    return Scores(value, found.ssim, found.ms_ssim if full else None, found.ms_ssim_scales)


def image_area(shape: tuple[int, int], resolution: int) -> tuple[slice, slice]:
    """Where an image of ``shape`` (H, W) lies in its padded square resized to ``resolution``: the padding left out."""
    height, width = shape
    side = max(height, width)
    rows = round(height * resolution / side)
    columns = round(width * resolution / side)
    top, left = (resolution - rows) // 2, (resolution - columns) // 2
    return slice(top, top + rows), slice(left, left + columns)


def class_names(paths: Sequence[Path]) -> dict[Path, str]:
    """Each image's class: its folder's name, with as many parent folders as tell same-named folders apart
    (``COVID/images`` and ``Normal/images`` in the COVID-19 Radiography layout)."""
    folders = sorted({path.parent for path in paths})
    names: dict[Path, str] = {}
    for folder in folders:
        depth = 1
        while depth < len(folder.parts):
            tail = folder.parts[-depth:]
            if all(other == folder or other.parts[-depth:] != tail for other in folders):
                break
            depth += 1
        names[folder] = "/".join(folder.parts[-depth:]) or str(folder)
    return {path: names[path.parent] for path in paths}


# -- the check ------------------------------------------------------------------------------------------


@dataclass
class ImageCheck:
    """One image's outcome: its class, status (``done`` or ``failed`` with ``error``), scores and verdict."""

    path: Path
    label: str
    status: str = "done"
    error: str | None = None
    size: tuple[int, int] | None = None  # the image's own (H, W)
    area: tuple[int, int] | None = None  # the scored area at the model's side (H, W)
    scores: Scores | None = None
    verdict: str | None = None
    sha256: str | None = None


@dataclass
class Pair:
    """An image and its reconstruction at the model's size, on the image's own area: for the contact sheet."""

    check: ImageCheck
    image: np.ndarray
    reconstruction: np.ndarray


@dataclass
class WorstPairs:
    """The ``keep`` worst-reconstructed images (lowest PSNR), kept without holding every image in memory."""

    keep: int
    heap: list[tuple[float, int, Pair]] = field(default_factory=list)
    offered: int = 0

    def offer(self, pair: Pair) -> None:
        """Keep ``pair`` if it is among the ``keep`` lowest PSNRs so far (the first offered wins a tie)."""
        assert pair.check.scores is not None
        self.offered += 1
        item = (-pair.check.scores.psnr, -self.offered, pair)
        if len(self.heap) < self.keep:
            heapq.heappush(self.heap, item)
        elif item[0] > self.heap[0][0]:
            heapq.heapreplace(self.heap, item)

    def worst_first(self) -> list[Pair]:
        """The kept pairs, lowest PSNR first."""
        return [pair for _, _, pair in sorted(self.heap, reverse=True, key=lambda item: item[:2])]


@dataclass
class ClassSummary:
    """Mean and standard deviation (over the class's scored images) of each measure, and the class verdict."""

    label: str
    images: int
    failed: int
    means: dict[str, float | None]
    stds: dict[str, float | None]
    verdict: str | None


@dataclass
class CheckResult:
    """Everything the check found, ready for tables, files and the terminal."""

    images: list[ImageCheck]
    classes: list[ClassSummary]
    overall: ClassSummary
    worst: list[Pair]
    resolution: int
    thresholds: Thresholds
    notes: list[str]


def check_images(
    files: Sequence[Path], vae: Any, resolution: int, batch_size: int = 1, worst: int = 8,
    thresholds: Thresholds = THRESHOLDS, advance: Callable[[int], None] | None = None,
) -> CheckResult:
    """Encode, decode and score every file; a file that cannot be read, or whose reconstruction is not
    finite, is marked failed with one sentence and the rest go on. The scores do not depend on ``batch_size``
    beyond float rounding."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    labels = class_names(list(files))
    checks = [ImageCheck(path, labels[path]) for path in files]
    kept = WorstPairs(worst)
    for first in range(0, len(checks), batch_size):
        batch = checks[first : first + batch_size]
        fitted = [(check, _fit(check, resolution)) for check in batch]
        ready = [(check, image) for check, image in fitted if image is not None]
        if ready:
            outputs = reconstruct(vae, np.stack([image for _, image in ready]))
            for (check, image), output in zip(ready, outputs):
                pair = _score(check, image, output)
                if pair is not None:
                    kept.offer(pair)
        if advance is not None:
            advance(len(batch))
    return summarise(checks, kept.worst_first(), resolution, thresholds)


def _fit(check: ImageCheck, resolution: int) -> np.ndarray | None:
    """The image as the model sees it (padded, resized, in [0, 1]); None (and the check failed) when unreadable."""
    from dva.core import io

    try:
        scan = io.read_scan(check.path)
        io.check_fits_in_memory(check.path, *scan.pixels.shape)
    except InputError as error:
        check.status, check.error = "failed", str(error)
        return None
    check.size, check.sha256 = (int(scan.pixels.shape[0]), int(scan.pixels.shape[1])), scan.sha256
    image, _ = io.to_model_input(scan.pixels, resolution)
    return np.clip(image, 0.0, 1.0)


def _score(check: ImageCheck, image: np.ndarray, output: np.ndarray) -> Pair | None:
    """Score one reconstruction on the image's own area; a failure is recorded on the check."""
    assert check.size is not None
    rows, columns = image_area(check.size, image.shape[0])
    own, rebuilt = image[rows, columns], output[rows, columns]
    check.area = (int(own.shape[0]), int(own.shape[1]))
    try:
        if not np.isfinite(rebuilt).all():
            raise InputError("the VAE's reconstruction holds NaN or infinite values")
        check.scores = score(own, rebuilt)
    except InputError as error:
        check.status, check.error = "failed", f"{check.path}: {str(error).rstrip('.')}; nothing is scored for it."
        return None
    check.verdict = verdict(check.scores.psnr, check.scores.ssim)
    return Pair(check, own, rebuilt)


MEASURES = ("psnr", "ssim", "ms_ssim")


def _summary(label: str, checks: list[ImageCheck], thresholds: Thresholds) -> ClassSummary:
    scored = [check.scores for check in checks if check.scores is not None]
    means: dict[str, float | None] = {}
    stds: dict[str, float | None] = {}
    for name in MEASURES:
        values = [getattr(scores, name) for scores in scored if getattr(scores, name) is not None]
        means[name] = float(np.mean(values)) if values else None
        stds[name] = float(np.std(values)) if values else None
    found = None
    if means["psnr"] is not None and means["ssim"] is not None:
        found = verdict(means["psnr"], means["ssim"], thresholds)
    return ClassSummary(label, len(checks), sum(check.status == "failed" for check in checks), means, stds, found)


def summarise(checks: list[ImageCheck], worst: list[Pair], resolution: int, thresholds: Thresholds) -> CheckResult:
    """Per-class and overall summaries; the overall verdict is the worst class's (a modality passes only when
    every class does)."""
    by_label: dict[str, list[ImageCheck]] = {}
    for check in checks:
        by_label.setdefault(check.label, []).append(check)
    classes = [_summary(label, members, thresholds) for label, members in sorted(by_label.items())]
    overall = _summary("all", checks, thresholds)
    judged = [summary.verdict for summary in classes if summary.verdict is not None]
    overall.verdict = worst_verdict(judged) if judged else None
    notes = []
    short = [check for check in checks if check.scores is not None and check.scores.ms_ssim is None]
    if short:
        side = max(min(check.area or (0, 0)) for check in short)
        notes.append(f"MS-SSIM is not available for {len(short)} of {len(checks)} images: its five scales need the "
                     f"scored area's shorter side above 160 px, and at {resolution} px it is at most {side} px; "
                     "pass a larger --resolution to have it.")
    return CheckResult(checks, classes, overall, worst, resolution, thresholds, notes)
