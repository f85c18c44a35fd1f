"""Chest-X-ray features for an FID: torchxrayvision's DenseNet-121, pooled to 1024 values per image.

Inception was trained on photographs; a DenseNet trained on chest X-rays sees the differences a
radiologist would, so its FID complements pytorch-fid's. Used only when torchxrayvision and a state
dict of its weights are present locally.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dva.core.errors import ConfigError
from dva.core.pickles import refused_pickle

XRV_SIZE = 224
XRV_RANGE = 1024.0  # torchxrayvision expects intensities in [-1024, 1024]


def load_state_dict(path: str | Path) -> dict:
    """A state dict from safetensors, or from a torch file without unpickling arbitrary objects."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's text advises unsafe loading: say what dva refused instead
        refusal = refused_pickle(error, "xrv-fid")
        if refusal is None:
            raise
        raise refusal from error


class XrvFeatures:
    """1024-d features of grayscale images, batched on ``device``."""

    def __init__(self, weights: str | Path, device: str | None = None, batch_size: int = 32) -> None:
        import torch
        import torchxrayvision as xrv

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = xrv.models.DenseNet(weights=None)
        missing, _ = self.model.load_state_dict(load_state_dict(weights), strict=False)
        if missing:
            raise ConfigError(
                f"{weights}: not a torchxrayvision DenseNet-121 state dict ({len(missing)} weights missing, "
                f"e.g. {missing[0]}); save model.state_dict() of xrv.models.DenseNet as safetensors."
            )
        self.model.eval().to(self.device)
        self.batch_size = batch_size

    def _image(self, path: Path) -> np.ndarray:
        from dva.core.io import read_scan, resize

        pixels = resize(read_scan(path).pixels, (XRV_SIZE, XRV_SIZE))
        return (pixels * 2.0 - 1.0) * XRV_RANGE

    def __call__(self, paths: Sequence[str | Path], progress: Callable[[int], None] | None = None) -> np.ndarray:
        import torch

        rows = []
        for start in range(0, len(paths), self.batch_size):
            chunk = [Path(p) for p in paths[start : start + self.batch_size]]
            batch = torch.from_numpy(np.stack([self._image(p) for p in chunk])[:, None]).to(self.device)
            with torch.no_grad():
                rows.append(self.model.features2(batch).double().cpu().numpy())
            if progress is not None:
                progress(len(chunk))
        return np.concatenate(rows) if rows else np.zeros((0, 1024))
