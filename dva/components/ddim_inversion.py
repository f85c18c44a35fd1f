"""DDIM inversion prior: a deterministic start instead of SDEdit's random noise.

SDEdit noises the input's latent to ``t0 = strength * T`` with a *random* draw, so its counterfactual (and
the map) mixes disease evidence with sampling noise. Following "What is healthy?" (Sanchez et al. 2022),
this prior instead runs DDIM backwards: the input's latent is encoded (the VAE posterior's mode, not a
sample) and inverted step by step to ``t0`` with diffusers' ``DDIMInverseScheduler``, conditioned on the
*unconditional* embedding at guidance 1; then ``DDIMScheduler`` denoises from there with the healthy
prompt and classifier-free guidance. Nothing is random, so the same input always gives the same
counterfactual, whatever the seed or the batch.

Why unconditional inversion: it finds the noise from which the model's unconditional DDIM path leads back
to the input (with guidance 1 and the same embedding, sampling reconstructs the input's latent); the
healthy prompt and guidance then change only what the prompt asks to change. The unconditional embedding
is the one classifier-free guidance uses, the negative prompt's (empty unless ``--negative-prompt`` is
set). ``inversion = "prompt"`` inverts with the healthy prompt instead.

With a ``region`` option (a lung zone or a mask image: :mod:`dva.components.regions`), blended latent
diffusion: after every denoising step the latents outside the region are reset to the inversion's own
latents at that step (the input's latents at that noise level, deterministic), so the last step leaves the
input's latents outside the region and only the region changes.

With ``request.tiling`` (``--tile``) the full-size inputs are encoded, inverted, denoised and decoded whole, every
UNet call made in blended tiles (:mod:`dva.components.tiling`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from dva.components.regions import Region, blend, latent_mask, request_lungs
from dva.components.tiling import TiledUNet, tile_grid, vae_tiles
from dva.core.contracts import GenerateRequest, ModelParts

INVERSION_EMBEDDINGS = ("unconditional", "prompt")


class DDIMInversionPrior:
    """Invert the input's latent to ``strength * T`` with DDIM, then denoise with the prompt and guidance."""

    name = "ddim-inversion"
    deterministic = True  # the seed does not matter: dva run refuses --samples above 1 for it
    supports_tiling = True

    def __init__(self, strength: float = 0.6, inversion: str = "unconditional", region: str = "") -> None:
        self.strength = strength
        self.inversion = inversion
        self.region = Region(region)
        self.parts: ModelParts | None = None
        self.scheduler: Any = None
        self.inverse_scheduler: Any = None
        self.tiled: TiledUNet | None = None  # the current request's tiled UNet call (--tile), else None
        # The last inversion, reused when the same inputs come back (--reference reconstruction asks for a
        # second, unconditional denoising of the very inputs just inverted): (inputs, embedding, steps, start,
        # the latents before each inversion step).
        self._last: tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, list[torch.Tensor]] | None = None

    @property
    def needs_mask(self) -> str | None:
        """Why every image needs a lung mask for this prior (a lung-zone region), else None."""
        return self.region.needs_mask

    def load(self, parts: ModelParts) -> None:
        """DDIM and its inverse built from the model's scheduler config (whatever ``--scheduler`` says:
        DDIM is the sampler whose steps the inversion undoes)."""
        from diffusers import DDIMInverseScheduler, DDIMScheduler

        import inspect

        known = set(inspect.signature(DDIMScheduler.__init__).parameters)
        known &= set(inspect.signature(DDIMInverseScheduler.__init__).parameters)
        # Only DDIM's own keys (PNDM's skip_prk_steps would make diffusers warn that it ignores them).
        config = {key: value for key, value in parts.scheduler.config.items() if key in known}
        # Latents are not in [-1, 1]: never clip the predicted sample (DDIM's default does, PNDM configs lack the key).
        overrides: dict[str, Any] = {"clip_sample": False}
        if config.get("timestep_spacing", "leading") not in ("leading", "trailing"):
            overrides["timestep_spacing"] = "leading"  # the inverse scheduler knows no other spacing
        self.parts = parts
        self.scheduler = DDIMScheduler.from_config(config, **overrides)
        self.inverse_scheduler = DDIMInverseScheduler.from_config(config, **overrides)

    def tile_grid(self) -> tuple[int, int]:
        """(pixels per latent cell, pixels a tile side must be a multiple of) of the loaded model (``--tile``)."""
        return tile_grid(self.parts.unet, self.parts.vae)

    def condition(self, images: np.ndarray) -> np.ndarray | None:
        """No extra conditioning image."""
        return None

    def steps_run(self, steps: int) -> int:
        """DDIM steps each way: ``int(steps * strength)``, as img2img counts them."""
        return min(int(steps * self.strength), steps)

    def unet_calls(self, steps: int) -> int:
        """UNet evaluations per image (before classifier-free guidance doubling): inversion plus denoising."""
        return 2 * self.steps_run(steps)

    def unguided_calls(self, steps: int) -> int:
        """The inversion's calls: never doubled by guidance, and shared with ``--reference reconstruction``."""
        return self.steps_run(steps)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, 4, h, w)`` (float32) of inputs ``(B, 3, H, W)`` in [0, 1]: the posterior's mode, scaled."""
        vae, parts = self.parts.vae, self.parts
        posterior = vae.encode((2 * images - 1).to(parts.device, parts.dtype)).latent_dist
        return posterior.mode().float() * vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1] (float32, CPU) of latents."""
        vae, parts = self.parts.vae, self.parts
        decoded = vae.decode((latents / vae.config.scaling_factor).to(parts.device, parts.dtype)).sample
        return (decoded.float() / 2 + 0.5).clamp(0, 1).cpu()

    def _noise(self, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, negative: torch.Tensor | None,
               guidance_scale: float) -> torch.Tensor:
        """The UNet's noise prediction, with classifier-free guidance when ``negative`` is given."""
        parts = self.parts
        if self.tiled is not None:
            return self.tiled(latents, t, embeds, negative, guidance_scale)
        if negative is None:
            return parts.unet(latents.to(parts.dtype), t, encoder_hidden_states=embeds).sample.float()
        both = parts.unet(torch.cat([latents] * 2).to(parts.dtype), t, encoder_hidden_states=torch.cat([negative, embeds])).sample
        uncond, text = both.float().chunk(2)
        return uncond + guidance_scale * (text - uncond)

    @torch.no_grad()
    def invert(self, latents: torch.Tensor, embeds: torch.Tensor, steps: int,
               trajectory: list[torch.Tensor] | None = None) -> torch.Tensor:
        """DDIM-invert clean latents to the start time ``t0`` (guidance 1, one embedding ``(1, L, D)``);
        ``trajectory``, if given, receives the latents before each step (the clean ones first)."""
        scheduler, device = self.inverse_scheduler, self.parts.device
        scheduler.set_timesteps(steps, device=device)
        latents = latents.to(device)
        embeds = embeds.to(device).expand(latents.shape[0], -1, -1)
        for t in scheduler.timesteps[: self.steps_run(steps)]:
            if trajectory is not None:
                trajectory.append(latents)
            latents = scheduler.step(self._noise(latents, t, embeds, None, 1.0), t, latents).prev_sample
        return latents

    @torch.no_grad()
    def denoise(self, latents: torch.Tensor, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor,
                steps: int, guidance_scale: float, keep: tuple[list[torch.Tensor], torch.Tensor] | None = None
                ) -> torch.Tensor:
        """DDIM (eta 0) from ``t0`` back to clean latents, with classifier-free guidance above 1; ``keep``
        (an inversion's trajectory and a latent mask) resets the latents outside the mask to the trajectory's
        after every step."""
        scheduler, device = self.scheduler, self.parts.device
        scheduler.set_timesteps(steps, device=device)
        batch = latents.shape[0]
        embeds = prompt_embeds.to(device).expand(batch, -1, -1)
        negative = negative_embeds.to(device).expand(batch, -1, -1) if guidance_scale > 1 else None
        for index, t in enumerate(scheduler.timesteps[steps - self.steps_run(steps):]):
            latents = scheduler.step(self._noise(latents, t, embeds, negative, guidance_scale), t, latents).prev_sample
            if keep is not None:
                trajectory, mask = keep
                latents = blend(latents, trajectory[len(trajectory) - 1 - index], mask)
        return latents

    @torch.no_grad()
    def generate(self, request: GenerateRequest) -> torch.Tensor:
        """Counterfactuals ``(B, 3, H, W)`` in [0, 1]; the request's generators are unused (nothing is drawn)."""
        r = request
        tiling = getattr(r, "tiling", None)
        if tiling != getattr(self.tiled, "tiling", None):
            self._last = None  # an inversion made in other tiles is not this request's
        self.tiled = None if tiling is None else TiledUNet(self.parts.unet, tiling)
        inversion_embeds = r.negative_embeds if self.inversion == "unconditional" else r.prompt_embeds
        with vae_tiles(self.parts.vae) if tiling is not None else contextlib.nullcontext():
            start = self.start(r.images, inversion_embeds, r.steps)
            keep = None
            if self.region:
                pixels = self.region.pixels(request_lungs(r), r.images.shape[0], tuple(r.images.shape[-2:]))
                keep = (self._last[4], latent_mask(pixels, tuple(start.shape[-2:])).to(start.device))
            return self.decode(self.denoise(start, r.prompt_embeds, r.negative_embeds, r.steps, r.guidance_scale, keep))

    def start(self, images: torch.Tensor, inversion_embeds: torch.Tensor, steps: int) -> torch.Tensor:
        """The inverted latents of ``images``; the previous call's when it inverted the same inputs the same way."""
        last = self._last
        if (last is not None and last[2] == steps and last[0].shape == images.shape and torch.equal(last[0], images)
                and last[1].shape == inversion_embeds.shape and torch.equal(last[1], inversion_embeds)):
            return last[3]
        trajectory: list[torch.Tensor] = []
        start = self.invert(self.encode(images), inversion_embeds, steps, trajectory)
        self._last = (images.clone(), inversion_embeds.clone(), steps, start, trajectory)
        return start
