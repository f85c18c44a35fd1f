"""MultiDiffusion tiling (Bar-Tal et al., "MultiDiffusion", ICML 2023): a full-resolution latent denoised in
overlapping model-sized tiles whose noise predictions are blended into one full-size prediction at every step.

Why by hand: diffusers' one MultiDiffusion pipeline (``StableDiffusionPanoramaPipeline``) makes text-to-image
panoramas from pure noise; it has no input image, no img2img strength, no inversion, no ControlNet and no
blending mask, and its views are fixed to its own sizes. dva's priors keep their diffusers parts (the UNet,
the scheduler's ``step``, the VAE with its own tiled encoding and decoding) and only the UNet call is replaced
by :class:`TiledUNet`: the scheduler steps the whole latent with a prediction in which every latent cell is the
window-weighted mean of the tiles that hold it, so neighbouring tiles agree at every step and no seam can form.

Classifier-free guidance is applied per tile (the blend is linear, so this equals guiding the blend). Tiles go
through the UNet ``Tiling.batch`` at a time, in a fixed order (image, row, column), so memory is bounded by the
tile batch and the result does not depend on it beyond float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from dva.core.tiles import Tiling

# Above this side (pixels) the VAE encodes and decodes in diffusers' own tiles (``enable_tiling``), whose seams
# it blends linearly; up to it a whole image goes through the VAE at once (SD v1's VAE is convolutional and
# takes 1024 px in a few GB), which keeps the one-tile case identical to a run without --tile.
VAE_TILE = 1024


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of windows of ``tile`` cells covering ``length`` cells, ``stride`` apart, the last flush
    with the end (one window when ``length <= tile``)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def window(size: int) -> torch.Tensor:
    """A tile's blending weights ``(size, size)``: a Hann-like taper, ``sin(pi (i + 1/2) / size)`` per axis.

    A tile's border cells see the least context, so they weigh least where another tile covers them better
    (as in Mixture of Diffusers, Jiménez 2023); no weight is zero, so a cell that one tile alone covers is that
    tile's prediction exactly.
    """
    ramp = torch.sin(torch.pi * (torch.arange(size, dtype=torch.float64) + 0.5) / size)
    return (ramp[:, None] * ramp[None, :]).float()


class TiledUNet:
    """A UNet's (optionally ControlNet-steered) guided noise prediction for full-size latents, tile by tile."""

    def __init__(self, unet: Any, tiling: Tiling, controlnet: Any = None, conditioning_scale: float = 1.0) -> None:
        self.unet, self.tiling = unet, tiling
        self.controlnet, self.conditioning_scale = controlnet, conditioning_scale

    def views(self, batch: int, height: int, width: int) -> list[tuple[int, int, int]]:
        """Every tile as ``(image, top, left)`` in latent cells, in a fixed order."""
        tile, stride = self.tiling.latent_tile, self.tiling.latent_stride
        if height < tile or width < tile:
            raise ValueError(f"a {height}x{width} latent is smaller than a {tile}-cell tile")
        return [(b, top, left) for b in range(batch) for top in tile_starts(height, tile, stride)
                for left in tile_starts(width, tile, stride)]

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, t: Any, embeds: torch.Tensor, negative: torch.Tensor | None,
                 guidance_scale: float, control: torch.Tensor | None = None) -> torch.Tensor:
        """The blended noise prediction ``(B, C, h, w)`` (float32) of model inputs ``latents``; ``embeds`` and
        ``negative`` are ``(B, L, D)`` or ``(1, L, D)`` (``negative`` None: no guidance); ``control``
        ``(B, 3, H, W)`` the ControlNet's full-size condition images."""
        tile, factor = self.tiling.latent_tile, self.tiling.latent_factor
        views = self.views(latents.shape[0], latents.shape[-2], latents.shape[-1])
        embeds = embeds.expand(latents.shape[0], -1, -1)  # the run's (1, L, D) prompt serves every image
        negative = None if negative is None else negative.expand(latents.shape[0], -1, -1)
        weights = window(tile).to(latents.device)
        total = torch.zeros(latents.shape, dtype=torch.float32, device=latents.device)
        coverage = torch.zeros(latents.shape[-2:], dtype=torch.float32, device=latents.device)
        for first in range(0, len(views), self.tiling.batch):
            chunk = views[first:first + self.tiling.batch]
            tiles = torch.stack([latents[b, :, y:y + tile, x:x + tile] for b, y, x in chunk])
            controls = None if control is None else torch.stack(
                [control[b, :, y * factor:(y + tile) * factor, x * factor:(x + tile) * factor] for b, y, x in chunk])
            predicted = self.predict(tiles, t, embeds[[b for b, _, _ in chunk]],
                                     None if negative is None else negative[[b for b, _, _ in chunk]],
                                     guidance_scale, controls)
            for (b, y, x), noise in zip(chunk, predicted):
                total[b, :, y:y + tile, x:x + tile] += noise * weights
        for _, y, x in views[: len(views) // latents.shape[0]]:
            coverage[y:y + tile, x:x + tile] += weights
        return total / coverage

    def predict(self, tiles: torch.Tensor, t: Any, embeds: torch.Tensor, negative: torch.Tensor | None,
                guidance_scale: float, controls: torch.Tensor | None) -> torch.Tensor:
        """One UNet call over a batch of tiles, as diffusers' pipelines make it (negative half first)."""
        dtype = self.unet.dtype
        if negative is not None:
            tiles, embeds = torch.cat([tiles] * 2), torch.cat([negative, embeds])
            controls = None if controls is None else torch.cat([controls] * 2)
        residuals: dict[str, Any] = {}
        if self.controlnet is not None and controls is not None:
            down, mid = self.controlnet(tiles.to(dtype), t, encoder_hidden_states=embeds.to(dtype),
                                        controlnet_cond=controls.to(dtype), conditioning_scale=self.conditioning_scale,
                                        guess_mode=False, return_dict=False)
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        noise = self.unet(tiles.to(dtype), t, encoder_hidden_states=embeds.to(dtype), return_dict=False,
                          **residuals)[0].float()
        if negative is None:
            return noise
        uncond, text = noise.chunk(2)
        return uncond + guidance_scale * (text - uncond)


def latent_factor(vae: Any) -> int:
    """Pixels per latent cell of a diffusers VAE (8 for SD v1's)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def tile_grid(unet: Any, vae: Any) -> tuple[int, int]:
    """(pixels per latent cell, pixels a tile side must be a multiple of: the UNet halves a tile at each but its
    last down block)."""
    factor = latent_factor(vae)
    return factor, factor * 2 ** (len(unet.config.block_out_channels) - 1)


@contextlib.contextmanager
def vae_tiles(vae: Any) -> Iterator[None]:
    """The VAE encoding and decoding images above :data:`VAE_TILE` px in its own overlapping tiles
    (``enable_tiling``); its settings are restored afterwards (the VAE is shared with untiled runs)."""
    saved = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    size = max(int(VAE_TILE), int(saved[1]) if isinstance(saved[1], int) else 0)
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = size, size // latent_factor(vae)
    try:
        yield
    finally:
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = saved
