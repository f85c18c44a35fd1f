"""Image priors: how the input steers generation. Sampling itself is diffusers' pipelines.

dva hands the pipelines its own prompt embeddings (so any encoder works) and one CPU generator per
image (so an image's counterfactual does not depend on the batch it is in).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dva.components.regions import Region, blend, latent_mask, request_lungs
from dva.components.tiling import TiledUNet, tile_grid, vae_tiles
from dva.core.contracts import GenerateRequest, ModelParts
from dva.core.errors import ConfigError

__all__ = ["ControlNetCannyPrior", "GenerateRequest", "ModelParts", "SDEditPrior"]  # ModelParts: its old home


def _pipeline_kwargs(parts: ModelParts) -> dict[str, Any]:
    return dict(
        vae=parts.vae,
        text_encoder=None,
        tokenizer=None,
        unet=parts.unet,
        scheduler=parts.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


class SDEditPrior:
    """SDEdit (img2img): noise the input latent to ``strength * T`` and denoise with the prompt.

    With a ``region`` (a lung zone or a mask image: :mod:`dva.components.regions`), blended latent diffusion:
    after every step the latents outside the region are reset to the input's latents (the VAE posterior's
    mode) noised to the next step's time, as diffusers' inpainting pipeline does, so only the region changes.

    With ``request.tiling`` (``--tile``) the full-size inputs are denoised in blended tiles
    (:mod:`dva.components.tiling`): the pipeline's own steps (preprocessing, timesteps, VAE posterior sample
    and noise from each image's generator, the scheduler's step, decoding) around a tiled UNet call.
    """

    name = "sdedit"
    supports_tiling = True

    def __init__(self, strength: float = 0.85, region: str = "") -> None:
        self.strength = strength
        self.region = Region(region)
        self.pipeline: Any = None

    @property
    def needs_mask(self) -> str | None:
        """Why every image needs a lung mask for this prior (a lung-zone region), else None."""
        return self.region.needs_mask

    def load(self, parts: ModelParts) -> None:
        from diffusers import StableDiffusionImg2ImgPipeline

        self.pipeline = StableDiffusionImg2ImgPipeline(**_pipeline_kwargs(parts))
        self.pipeline.set_progress_bar_config(disable=True)

    def condition(self, images: np.ndarray) -> np.ndarray | None:
        """The extra conditioning image per input (None for SDEdit)."""
        return None

    def tile_grid(self) -> tuple[int, int]:
        """(pixels per latent cell, pixels a tile side must be a multiple of) of the loaded model (``--tile``)."""
        return tile_grid(self.pipeline.unet, self.pipeline.vae)

    def unet_calls(self, steps: int) -> int:
        """Denoising UNet evaluations per image (before classifier-free guidance doubling)."""
        scheduler = self.pipeline.scheduler
        scheduler.set_timesteps(steps)
        timesteps, _ = self.pipeline.get_timesteps(steps, self.strength, "cpu")
        return len(timesteps)

    def _call_kwargs(self, conditions: torch.Tensor | None) -> dict[str, Any]:
        return {}

    @torch.no_grad()
    def _blending(self, request: GenerateRequest) -> dict[str, Any]:
        """The pipeline's ``callback_on_step_end`` that keeps everything outside the region the input's."""
        pipeline, images = self.pipeline, request.images
        vae, device = pipeline.vae, pipeline._execution_device
        pixels = self.region.pixels(request_lungs(request), images.shape[0], tuple(images.shape[-2:]))
        clean = vae.encode((2 * images - 1).to(device, vae.dtype)).latent_dist.mode() * vae.config.scaling_factor
        mask = latent_mask(pixels, tuple(clean.shape[-2:])).to(device)
        # One noise per image from a copy of its generator: an image's result does not depend on its batch.
        noise = torch.stack([torch.randn(clean.shape[1:], generator=torch.Generator("cpu").manual_seed(g.initial_seed()))
                             for g in request.generators]).to(device, clean.dtype)
        pipeline.scheduler.set_timesteps(request.steps, device=device)
        timesteps, _ = pipeline.get_timesteps(request.steps, self.strength, device)

        def keep_outside(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if i + 1 < len(timesteps):
                background = pipe.scheduler.add_noise(clean, noise, timesteps[i + 1 : i + 2])
            else:
                background = clean
            return {"latents": blend(tensors["latents"], background, mask)}

        return {"callback_on_step_end": keep_outside, "callback_on_step_end_tensor_inputs": ["latents"]}

    @torch.no_grad()
    def generate(self, request: GenerateRequest) -> torch.Tensor:
        """Counterfactuals ``(B, 3, H, W)`` in [0, 1] for the request's inputs ``(B, 3, H, W)`` in [0, 1]."""
        if request.tiling is not None:
            return self._generate_tiled(request)
        batch = request.images.shape[0]
        blending = self._blending(request) if self.region else {}
        result = self.pipeline(
            image=request.images,
            prompt_embeds=request.prompt_embeds.expand(batch, -1, -1),
            negative_prompt_embeds=request.negative_embeds.expand(batch, -1, -1),
            strength=self.strength,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            generator=request.generators,
            output_type="pt",
            **self._call_kwargs(request.condition),
            **blending,
        )
        return result.images.float().cpu()

    def _tiled_unet(self, request: GenerateRequest) -> tuple[TiledUNet, torch.Tensor | None]:
        """The tiled noise prediction for ``request`` and the full-size images it is conditioned on (none here)."""
        return TiledUNet(self.pipeline.unet, request.tiling), None

    @torch.no_grad()
    def _generate_tiled(self, request: GenerateRequest) -> torch.Tensor:
        """``generate`` at the inputs' own size: the img2img pipeline's steps with a :class:`TiledUNet`."""
        pipe, r = self.pipeline, request
        device, batch = pipe._execution_device, r.images.shape[0]
        embeds = r.prompt_embeds.to(device).expand(batch, -1, -1)
        negative = r.negative_embeds.to(device).expand(batch, -1, -1) if r.guidance_scale > 1 else None
        unet, control = self._tiled_unet(r)
        with vae_tiles(pipe.vae):
            keep = self._blending(r)["callback_on_step_end"] if self.region else None
            pipe.scheduler.set_timesteps(r.steps, device=device)
            timesteps, _ = pipe.get_timesteps(r.steps, self.strength, device)
            latents = pipe.prepare_latents(pipe.image_processor.preprocess(r.images), timesteps[:1].repeat(batch),
                                           batch, 1, embeds.dtype, device, r.generators)
            step_kwargs = pipe.prepare_extra_step_kwargs(r.generators, 0.0)
            for index, t in enumerate(timesteps):
                noise = unet(pipe.scheduler.scale_model_input(latents, t), t, embeds, negative, r.guidance_scale, control)
                latents = pipe.scheduler.step(noise.to(latents.dtype), t, latents, **step_kwargs, return_dict=False)[0]
                if keep is not None:
                    latents = keep(pipe, index, t, {"latents": latents})["latents"]
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False,
                                      generator=r.generators)[0]
        return pipe.image_processor.postprocess(decoded, output_type="pt").float().cpu()


class ControlNetCannyPrior(SDEditPrior):
    """SDEdit plus a ControlNet conditioned on the input's Canny edges."""

    name = "controlnet-canny"

    def __init__(
        self,
        strength: float = 0.85,
        controlnet: str = "lllyasviel/sd-controlnet-canny",
        low_threshold: int = 100,
        high_threshold: int = 200,
        conditioning_scale: float = 1.0,
        region: str = "",
    ) -> None:
        super().__init__(strength, region)
        if low_threshold > high_threshold:
            raise ConfigError(
                f"Canny low_threshold ({low_threshold}) is above high_threshold ({high_threshold}); swap them."
            )
        self.controlnet_source = controlnet
        self.low_threshold = low_threshold
        self.high_threshold = high_threshold
        self.conditioning_scale = conditioning_scale

    def load(self, parts: ModelParts) -> None:
        from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

        try:
            controlnet = ControlNetModel.from_pretrained(self.controlnet_source, torch_dtype=parts.dtype)
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"Cannot load the ControlNet '{self.controlnet_source}' ({str(error).splitlines()[0][:160]}); "
                "pass a local folder with --prior-option controlnet=PATH, or connect to the model hub."
            ) from error
        self.pipeline = StableDiffusionControlNetImg2ImgPipeline(
            controlnet=controlnet.to(parts.device), **_pipeline_kwargs(parts)
        )
        self.pipeline.set_progress_bar_config(disable=True)

    def condition(self, images: np.ndarray) -> np.ndarray:
        """Canny edge maps ``(B, H, W)`` in {0, 1} of gray inputs ``(B, H, W)`` in [0, 1] (OpenCV, as ControlNet's training)."""
        import cv2

        edges = [
            cv2.Canny((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), self.low_threshold, self.high_threshold)
            for image in images
        ]
        return (np.stack(edges) > 0).astype(np.float32)

    def _call_kwargs(self, conditions: torch.Tensor | None) -> dict[str, Any]:
        if conditions is None:
            raise ValueError("controlnet-canny needs its condition images")
        return {"control_image": conditions, "controlnet_conditioning_scale": self.conditioning_scale}

    def _tiled_unet(self, request: GenerateRequest) -> tuple[TiledUNet, torch.Tensor | None]:
        """The tiled prediction with the ControlNet steering each tile by its crop of the full-size edge map."""
        if request.condition is None:
            raise ValueError("controlnet-canny needs its condition images")
        pipe = self.pipeline
        unet = TiledUNet(pipe.unet, request.tiling, pipe.controlnet, self.conditioning_scale)
        return unet, request.condition.to(pipe._execution_device)
