"""SSIM and MS-SSIM between a scan and its healthy counterfactual, optionally inside a lung mask.

Both images are compared as grayscale intensity (:func:`to_intensity`: 8- and 16-bit images and RGB
become [0, 1], so ``data_range`` is 1.0 unless float images on another scale are passed) with
pytorch-msssim's settings: an 11-px Gaussian window of sigma 1.5, K = (0.01, 0.03), and MS-SSIM's scale
weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) from Wang et al. (2003), kept as published (they sum
to 1.0001).

* **Without a mask** the values are ``pytorch_msssim.ssim`` and ``ms_ssim``'s (the tests hold them
  equal to 1e-6), computed from its own building blocks (``_fspecial_gauss_1d``, ``gaussian_filter``)
  with its formula, because its public functions cannot do what dva needs here: return SSIM per image
  of images stacked as channels (on CPUs several times faster than along the batch axis), share the
  first scale between SSIM and MS-SSIM, use fewer than five scales on small images, or average inside
  a mask.
* **With a mask** (the lungs): the per-pixel SSIM and contrast-structure (cs) maps come from a valid
  convolution, (H - 10) x (W - 10), whose pixel (i, j) is the window centred on image pixel
  (i + 5, j + 5), so the mask is cropped by 5 px on each side and the map averaged where the mask is
  set. **Masked MS-SSIM**: the first scale is weighted the same way. At each coarser scale the mask is
  downsampled with the images' own 2x2 average pool (padding not counted, so a full mask stays full)
  and a map pixel is weighted by the share of its Gaussian window that lies in the mask (the mask
  filtered with the same window): a coarse window spans up to 176 px of the original, and the centre
  rule would leave few or no pixels (at 192 px the coarsest map is 2x2 pixels in the mediastinum,
  outside the lungs). The weighted means of the cs maps (SSIM map at the coarsest scale) go through
  MS-SSIM's product as in pytorch-msssim. With an all-ones mask both equal the unmasked values.
* **Small images**: MS-SSIM's k-th scale needs the shorter side above 10 * 2**(k - 1) px, so that the
  window fits the coarsest image (pytorch-msssim asserts this for five scales: above 160 px). Smaller
  images use as many scales as fit, with the first k weights renormalised to sum to 1, and record how
  many in ``ms_ssim_scales``. Under 21 px (not even two scales) is an :class:`InputError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_msssim.ssim import _fspecial_gauss_1d, gaussian_filter

from dva.core.errors import InputError
from dva.metrics.localisation import binary_mask

WINDOW = 11
SIGMA = 1.5
K = (0.01, 0.03)
WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MIN_SIDE = (WINDOW - 1) * 2 + 1  # two MS-SSIM scales
_CROP = WINDOW // 2  # what the valid convolution trims from each side
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, what PIL's "L" conversion (and so dva's reader) uses


@dataclass(frozen=True)
class SimilarityScores:
    """SSIM and MS-SSIM of one image pair, with the scales MS-SSIM used and the data range assumed."""

    ssim: float
    ms_ssim: float
    ms_ssim_scales: int
    data_range: float


@dataclass(frozen=True)
class _Pair:
    """A checked pair: two (H, W) float32 intensity images and an optional bool mask."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray | None


def to_intensity(image: np.ndarray | Image.Image) -> np.ndarray:
    """(H, W) float32 grayscale intensity: 8/16-bit scaled by 255/65535, RGB reduced to luminance.

    PIL images go through dva's own reader conversion (:mod:`dva.core.io`), so a file compares as dva
    saw it. Arrays may be (H, W), (H, W, 1), RGB or RGBA (composited on black, as dva's reader does);
    bool arrays become 0/1 and float arrays are taken as intensities already.
    """
    if isinstance(image, Image.Image):
        from dva.core.io import _to_gray

        return _to_gray(image)[0]
    array = np.asarray(image)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise InputError(f"An image must be (height, width) or (height, width, 1, 3 or 4 channels) but has shape "
                         f"{array.shape}; pass a grayscale or RGB image.")
    values = _unit_scale(array)
    if values.ndim == 3:
        if values.shape[2] == 4:
            values = values[..., :3] * values[..., 3:]
        values = values[..., 0] if values.shape[2] == 1 else values @ np.asarray(_LUMA, dtype=np.float32)
    if not np.isfinite(values).all():
        raise InputError("The image holds NaN or infinite values; pass finite intensities.")
    return np.ascontiguousarray(values, dtype=np.float32)


def _unit_scale(array: np.ndarray) -> np.ndarray:
    """Float32 values: unsigned 8/16-bit over their maximum, bool as 0/1, floats unchanged."""
    if array.dtype == bool or np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    if array.dtype in (np.uint8, np.uint16):
        return array.astype(np.float32) / np.iinfo(array.dtype).max
    raise InputError(f"Images must be 8- or 16-bit unsigned, bool or float, not {array.dtype}; convert the image first.")


def ms_ssim_scales(height: int, width: int) -> int:
    """How many MS-SSIM scales (at most 5) fit: the k-th needs the shorter side above 10 * 2**(k - 1) px."""
    side, scales = min(height, width), 0
    while scales < len(WEIGHTS) and side > (WINDOW - 1) * 2**scales:
        scales += 1
    return scales


def _scale_weights(scales: int) -> tuple[float, ...]:
    """The standard weights for five scales; for fewer, the first ``scales`` of them renormalised to sum to 1."""
    if scales == len(WEIGHTS):
        return WEIGHTS
    total = sum(WEIGHTS[:scales])
    return tuple(weight / total for weight in WEIGHTS[:scales])


def similarity(
    a: np.ndarray | Image.Image, b: np.ndarray | Image.Image, mask: np.ndarray | None = None, data_range: float = 1.0
) -> SimilarityScores:
    """SSIM and MS-SSIM of an input and its counterfactual (same size), inside ``mask`` when given."""
    return _score_chunk([_prepare(a, b, mask, data_range)], data_range, torch.device("cpu"))[0]


def similarity_batch(
    pairs: Iterable[tuple[np.ndarray | Image.Image, np.ndarray | Image.Image, np.ndarray | None]],
    batch_size: int = 16,
    device: torch.device | str | None = None,
    data_range: float = 1.0,
) -> list[SimilarityScores]:
    """:func:`similarity` of many ``(a, b, mask or None)`` pairs, in input order.

    Pairs of the same size (and all masked or all unmasked) run together in batches of ``batch_size``;
    the values equal one-by-one calls to float32 rounding (1e-6). A batch needs about 90 bytes per
    pixel of its pairs (16 pairs of 512 px: 0.4 GB; of 2048 px: 6 GB), so lower ``batch_size`` for
    full-size scans. ``device`` defaults to the CPU. All pairs are checked first; a bad one raises
    an :class:`InputError` that names its index.
    """
    prepared = []
    for index, (a, b, mask) in enumerate(pairs):
        try:
            prepared.append(_prepare(a, b, mask, data_range))
        except InputError as error:
            message = str(error)
            raise InputError(f"Pair {index}: {message[:1].lower()}{message[1:]}") from error
    groups: dict[tuple[tuple[int, ...], bool], list[int]] = {}
    for index, pair in enumerate(prepared):
        groups.setdefault((pair.x.shape, pair.mask is not None), []).append(index)
    results: list[SimilarityScores | None] = [None] * len(prepared)
    target = torch.device(device or "cpu")
    for indices in groups.values():
        for first in range(0, len(indices), batch_size):
            chunk = indices[first : first + batch_size]
            for index, scores in zip(chunk, _score_chunk([prepared[i] for i in chunk], data_range, target)):
                results[index] = scores
    return results  # type: ignore[return-value]  # every index was filled


def _size(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]}"


def _prepare(a: np.ndarray | Image.Image, b: np.ndarray | Image.Image, mask: np.ndarray | None, data_range: float) -> _Pair:
    """Intensities of both images and the bool mask, with every check that would otherwise fail deep in torch."""
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, not {data_range}.")
    x, y = to_intensity(a), to_intensity(b)
    if x.shape != y.shape:
        raise InputError(f"The images are {_size(x)} and {_size(y)} px, different sizes; "
                         "compare an input with its counterfactual at the same size.")
    if ms_ssim_scales(*x.shape) < 2:
        raise InputError(f"The images are {_size(x)} px, too small for SSIM/MS-SSIM: the shorter side must be at "
                         f"least {MIN_SIDE} px (two scales of the {WINDOW}-px window); compare them at a larger size.")
    low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    slack = 1e-6 * data_range  # float rounding of a clipped image
    if low < -slack or high > data_range + slack:
        raise InputError(f"The images hold values from {low:.4g} to {high:.4g}, outside [0, {data_range:g}]; "
                         "pass intensities in [0, 1] (see to_intensity) or the data_range they use.")
    return _Pair(x, y, None if mask is None else _checked_mask(mask, x.shape))


def _checked_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The bool mask, checked to leave SSIM map pixels to average (coarser scales always have some)."""
    inside = binary_mask(mask)
    if inside.shape != shape:
        raise InputError(f"The mask is {_size(inside)} px but the images are {shape[1]}x{shape[0]} px; "
                         "pass the mask of these images at their size.")
    if not inside.any():
        raise InputError("The mask is empty; pass a mask with the region to compare in it, or none.")
    if not inside[_CROP:-_CROP, _CROP:-_CROP].any():
        raise InputError(f"The mask lies within {_CROP} px of the image border, where SSIM has no full window; "
                         "pass a mask of the compared region, or none.")
    return inside


def _downsample(images: torch.Tensor, count_padding: bool = True) -> torch.Tensor:
    """pytorch-msssim's step between scales: a 2x2 average pool, odd sides padded by one pixel."""
    padding = [side % 2 for side in images.shape[2:]]
    return F.avg_pool2d(images, kernel_size=2, padding=padding, count_include_pad=count_padding)


def _crop(weight: torch.Tensor) -> torch.Tensor:
    """The part of a full-size weight map that lines up with a valid-convolution SSIM map."""
    return weight[..., _CROP:-_CROP, _CROP:-_CROP]


def _weight_pyramid(mask: torch.Tensor, scales: int) -> list[torch.Tensor]:
    """Weights of the SSIM/cs map pixels at each scale, each the shape of that scale's maps.

    Full resolution: the mask cropped to the map, so a map pixel counts when its window's centre is in
    the mask. Coarser scales: the mask pooled like the images (padding not counted, so ones stay ones),
    then the share of each Gaussian window that lies in it. (A centre rule there would keep too little:
    at 192 px the coarsest map is the 2x2 centre pixels, the mediastinum, outside any lung mask.)
    """
    levels = [_crop(mask)]
    for _ in range(1, scales):
        mask = _downsample(mask, count_padding=False)
        levels.append(gaussian_filter(mask, _window(mask)))
    return levels


def _window(images: torch.Tensor) -> torch.Tensor:
    """pytorch-msssim's 1-D Gaussian window, one per channel, as its ``ssim`` builds it."""
    return _fspecial_gauss_1d(WINDOW, SIGMA).repeat(images.shape[1], 1, 1, 1).to(images.device, dtype=images.dtype)


def _maps(x: torch.Tensor, y: torch.Tensor, data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel SSIM and cs maps, (1, N, H - 10, W - 10): pytorch-msssim's ``_ssim`` before it averages."""
    window = _window(x)
    c1, c2 = (K[0] * data_range) ** 2, (K[1] * data_range) ** 2
    mu1, mu2 = gaussian_filter(x, window), gaussian_filter(y, window)
    mu1_sq, mu2_sq, mu1_mu2 = mu1.pow(2), mu2.pow(2), mu1 * mu2
    sigma1_sq = gaussian_filter(x * x, window) - mu1_sq
    sigma2_sq = gaussian_filter(y * y, window) - mu2_sq
    sigma12 = gaussian_filter(x * y, window) - mu1_mu2
    cs_map = (2 * sigma12 + c2) / (sigma1_sq + sigma2_sq + c2)
    ssim_map = ((2 * mu1_mu2 + c1) / (mu1_sq + mu2_sq + c1)) * cs_map
    return ssim_map, cs_map


def _mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of each image's (channel's) map, weighted by ``weight`` where given: (1, N)."""
    if weight is None:
        return values.flatten(2).mean(-1)
    return (values * weight).flatten(2).sum(-1) / weight.flatten(2).sum(-1)


def _multiscale(
    x: torch.Tensor, y: torch.Tensor, weights: list[torch.Tensor] | None, data_range: float, scales: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(SSIM, MS-SSIM), each (1, N), of images laid out as channels, maps averaged with each scale's weights.

    The steps of ``pytorch_msssim.ms_ssim``: cs at every scale but the last, SSIM at the last, both
    clipped at 0, raised to the scale weights and multiplied; SSIM is the first scale's, unclipped
    as ``pytorch_msssim.ssim`` returns it.
    """
    factors = []
    for scale in range(scales):
        ssim_map, cs_map = _maps(x, y, data_range)
        weight = None if weights is None else weights[scale]
        if scale == 0:
            first_ssim = _mean(ssim_map, weight)
        if scale < scales - 1:
            factors.append(torch.relu(_mean(cs_map, weight)))
            x, y = _downsample(x), _downsample(y)
        else:
            factors.append(torch.relu(_mean(ssim_map, weight)))
    exponents = x.new_tensor(_scale_weights(scales)).view(-1, 1, 1)
    return first_ssim, torch.prod(torch.stack(factors) ** exponents, dim=0)


@torch.inference_mode()
def _score_chunk(pairs: list[_Pair], data_range: float, device: torch.device) -> list[SimilarityScores]:
    """Scores of same-size pairs, all masked or all unmasked, in one pass.

    The images are stacked as the channels of one image, (1, N, H, W): pytorch-msssim filters each
    channel on its own (a grouped convolution), which on CPUs runs several times faster than the same
    images along the batch axis of a one-channel convolution.
    """
    x = torch.from_numpy(np.stack([pair.x for pair in pairs]))[None].to(device)
    y = torch.from_numpy(np.stack([pair.y for pair in pairs]))[None].to(device)
    scales = ms_ssim_scales(*x.shape[-2:])
    weights = None
    if pairs[0].mask is not None:
        masks = torch.from_numpy(np.stack([pair.mask for pair in pairs]))[None].to(device, torch.float32)
        weights = _weight_pyramid(masks, scales)
    ssim_values, ms_values = _multiscale(x, y, weights, data_range, scales)
    return [
        SimilarityScores(ssim=s, ms_ssim=m, ms_ssim_scales=scales, data_range=float(data_range))
        for s, m in zip(ssim_values[0].tolist(), ms_values[0].tolist())
    ]
