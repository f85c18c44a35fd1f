"""Regions for located induction: a lung zone's name or a mask image, as the latent mask a prior blends with.

Blended latent diffusion (Avrahami et al., "Blended Latent Diffusion", 2023): at every denoising step the
latents outside the region are replaced by the input's latents at that step's noise level, so only the
region can change; the decoder then gives the input's VAE reconstruction outside it (up to the decoder's
reach across the region's border). A prior's ``region`` option is ``""`` (the whole image, today's
behaviour), a zone of :data:`dva.datasets.phantoms.ZONES` (``"left upper"``, also spelt ``left-upper``), cut
from each image's lung mask (``--mask``) as ``dva phantoms`` cuts them, or a mask image file at the model's
resolution (white: the region).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dva.core.errors import ConfigError


def _zones() -> tuple[str, ...]:
    from dva.datasets.phantoms import ZONES

    return ZONES


def zone_name(value: str) -> str | None:
    """The zone ``value`` names (case, hyphens and underscores aside), or None."""
    spelt = " ".join(value.strip().lower().replace("-", " ").replace("_", " ").split())
    return spelt if spelt in _zones() else None


class Region:
    """A prior's ``region`` option, checked when the prior is built (a mask file is read then)."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.zone = zone_name(value) if value else None
        self.mask: np.ndarray | None = None
        if not value or self.zone is not None:
            return
        path = Path(value)
        if not path.is_file():
            close = difflib.get_close_matches(" ".join(value.lower().replace("-", " ").replace("_", " ").split()),
                                              _zones(), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"zones: {', '.join(_zones())}."
            raise ConfigError(f"region '{value}' is neither a lung zone nor a mask image file; {hint}")
        from PIL import Image

        try:
            with Image.open(path) as image:
                self.mask = np.asarray(image.convert("L")) > 127
        except OSError as error:
            raise ConfigError(f"region mask {path} cannot be read as an image ({error}).") from error
        if not self.mask.any():
            raise ConfigError(f"region mask {path} is empty (no white pixel), so nothing could change; draw the region "
                              "in white.")

    def __bool__(self) -> bool:
        return bool(self.value)

    @property
    def needs_mask(self) -> str | None:
        """Why each image needs its lung mask (the region is a lung zone cut from it), else None."""
        return f"--region '{self.zone}' is a lung zone cut from each image's lung mask" if self.zone else None

    def pixels(self, lungs: torch.Tensor | None, batch: int, size: tuple[int, int]) -> torch.Tensor:
        """The region ``(B, 1, H, W)`` in {0, 1} for a batch of ``size`` images with lung masks ``lungs`` ``(B, H, W)``."""
        if self.mask is not None:
            if self.mask.shape != tuple(size):
                raise ConfigError(f"region mask {self.value} is {self.mask.shape[1]}x{self.mask.shape[0]} px but the "
                                  f"model works at {size[1]}x{size[0]} px; make the mask at the model's size.")
            return torch.from_numpy(self.mask).float()[None, None].expand(batch, 1, -1, -1).clone()
        if lungs is None:
            raise ConfigError(f"region '{self.zone}' is a lung zone, which needs each image's lung mask: pass --mask.")
        from dva.datasets.phantoms import lung_zones

        index = _zones().index(self.zone)
        masks = [lung_zones(np.asarray(lung) > 0.5) == index for lung in lungs.cpu().numpy()]
        if not all(m.any() for m in masks):
            raise ConfigError(f"region '{self.zone}': a lung mask has no {self.zone} zone; use the image's own lung mask.")
        return torch.from_numpy(np.stack(masks)).float()[:, None]


def latent_mask(pixels: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """The region on the latent grid ``(B, 1, h, w)``: every latent cell that holds a region pixel."""
    return (F.adaptive_max_pool2d(pixels, latent_size) > 0).float()


def blend(latents: torch.Tensor, background: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``latents`` inside ``mask``, ``background`` outside it."""
    mask = mask.to(latents.device, latents.dtype)
    return latents * mask + background.to(latents.device, latents.dtype) * (1 - mask)


def request_lungs(request: Any) -> torch.Tensor | None:
    """The request's lung masks, if it carries them (an older request type has no field)."""
    return getattr(request, "lungs", None)
