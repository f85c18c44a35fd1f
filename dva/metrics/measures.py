"""The built-in metric specs' implementations: thin adapters from the MetricSpec contract to the measures.

Each class is built with its spec's checked options (plus the run-time ``device`` and ``cache_dir``
the evaluation passes to every measure that takes them) and answers its scope's call:
``distance(paths_a, paths_b)`` for sets, ``score(input, counterfactual, mask)`` for pairs,
``score(attribution, lesion, region)`` for maps (see :class:`dva.core.specs.MetricSpec`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dva.core.errors import MetricUnavailable


class FidMeasure:
    """FID with pytorch-fid's Inception; features are kept per file, so a set shared by several
    comparisons (the real healthy set of the thesis' tables) is read once."""

    def __init__(self, weights: str | None = None, batch_size: int = 50, num_workers: int = 0,
                 device: str | None = None, cache_dir: str | Path | None = None) -> None:
        from dva.metrics.fid import InceptionFeatures

        self.features = InceptionFeatures(weights=weights, device=device, batch_size=batch_size,
                                          num_workers=num_workers, cache_dir=cache_dir)
        self._known: dict[Path, np.ndarray] = {}

    def set_features(self, paths: Sequence[str | Path], progress: Any = None) -> np.ndarray:
        """Inception pool3 features of a set, (N, 2048)."""
        wanted = [Path(p) for p in paths]
        missing = list(dict.fromkeys(p for p in wanted if p not in self._known))
        if missing:
            for path, row in zip(missing, self.features(missing, progress=progress)):
                self._known[path] = row
        return np.stack([self._known[p] for p in wanted]) if wanted else np.zeros((0, 2048))

    def distance(self, paths_a: Sequence[str | Path], paths_b: Sequence[str | Path], progress: Any = None) -> float:
        from dva.metrics.fid import frechet_distance

        return frechet_distance(self.set_features(paths_a, progress), self.set_features(paths_b, progress))


class SsimMeasure:
    """SSIM (pytorch-msssim) between an input and its counterfactual, on grayscale intensity."""

    column = "ssim"

    def __init__(self, data_range: float = 1.0) -> None:
        self.data_range = data_range

    def score(self, image: Any, counterfactual: Any, mask: np.ndarray | None = None) -> dict[str, float]:
        return self._pick(self._similarity([(image, counterfactual, mask)])[0])

    def score_batch(self, pairs: Sequence[tuple[Any, Any, np.ndarray | None]]) -> list[dict[str, float]]:
        """Scores of many pairs at once (same-size pairs are batched)."""
        return [self._pick(scores) for scores in self._similarity(pairs)]

    # One computation gives both SSIM and MS-SSIM: the last batch's scores, shared by the two measures.
    _last: tuple[Any, float, list[Any]] | None = None

    def _similarity(self, pairs: Sequence[tuple[Any, Any, np.ndarray | None]]) -> list[Any]:
        from dva.metrics.similarity import similarity_batch, to_intensity

        last = SsimMeasure._last
        if last is not None and last[0] is pairs and last[1] == self.data_range:
            return last[2]
        scores = similarity_batch(
            [(to_intensity(a), to_intensity(b), mask) for a, b, mask in pairs], data_range=self.data_range
        )
        SsimMeasure._last = (pairs, self.data_range, scores)
        return scores

    def _pick(self, scores: Any) -> dict[str, float]:
        return {"ssim": scores.ssim}


class MsSsimMeasure(SsimMeasure):
    """MS-SSIM (pytorch-msssim); images under 161 px use fewer scales, recorded as ``ms_ssim_scales``."""

    def _pick(self, scores: Any) -> dict[str, float]:
        return {"ms_ssim": scores.ms_ssim, "ms_ssim_scales": scores.ms_ssim_scales}


class LocalisationMeasure:
    """An attribution map against a ground-truth lesion mask, inside a region (the lungs) where given."""

    def score(self, attribution: np.ndarray, lesion: np.ndarray, region: np.ndarray | None = None) -> dict[str, float]:
        from dva.metrics.localisation import localisation

        return dataclasses.asdict(localisation(attribution, lesion, region))


XRV_HINT = (
    "xrv-fid needs torchxrayvision (pip install torchxrayvision) and a DenseNet-121 state dict saved as "
    "safetensors or a weights-only torch file, passed as the metric's weights option"
)


class XrvFidMeasure(FidMeasure):
    """FID on torchxrayvision's DenseNet-121 (1024-d pooled features): an FID that knows chest X-rays.

    torchxrayvision ships its weights as pickled whole models, which dva does not unpickle; it loads
    a state dict only (safetensors or ``torch.load(weights_only=True)``).
    """

    def __init__(self, weights: str | None = None, batch_size: int = 32, device: str | None = None,
                 cache_dir: str | Path | None = None) -> None:
        if importlib.util.find_spec("torchxrayvision") is None:
            raise MetricUnavailable(f"{XRV_HINT}; torchxrayvision is not installed.")
        if weights is None or not Path(weights).is_file():
            raise MetricUnavailable(f"{XRV_HINT}; no weights file was found ({weights or 'none given'}).")
        from dva.metrics.xrv import XrvFeatures

        self.features = XrvFeatures(weights, device=device, batch_size=batch_size)
        self._known = {}
