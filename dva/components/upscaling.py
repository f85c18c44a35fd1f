"""Super-resolution engines for ``dva upscale``: a gray image in [0, 1] in, a ``scale`` times larger one out.

:class:`X4Upscaler` is diffusers' ``StableDiffusionUpscalePipeline`` loaded from a user's x4-upscaler folder.
:class:`SDEditUpscaler` is dva's own model: the bicubic upsample, noised to a low ``strength`` and denoised by
the sdedit prior in blended tiles (``--tile``, :mod:`dva.components.tiling`), so the model adds the fine
detail it knows at the image's full size. Its prompt is empty and unguided unless the user gives one: a
healthy prompt would steer the detail towards healthy, which is not super-resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dva.core import io
from dva.core.contracts import GenerateRequest
from dva.core.errors import ConfigError
from dva.core.tiles import Tiling, working_side

X4 = 4  # the x4 upscaler's only factor


def bicubic(pixels: np.ndarray, scale: int) -> np.ndarray:
    """``pixels`` ``(H, W)`` upsampled ``scale`` times by bicubic interpolation (OpenCV), clipped to [0, 1]."""
    height, width = pixels.shape
    return np.clip(io.resize(pixels, (height * scale, width * scale)), 0.0, 1.0)


class SDEditUpscaler:
    """SDEdit at low strength on the bicubic upsample, tiled: the sdedit prior of a loaded runtime."""

    def __init__(self, runtime: Any, tiling: Tiling, scale: int, prompted: bool) -> None:
        self.runtime, self.tiling, self.scale = runtime, tiling, scale
        positive, negative = runtime.prompt_embeddings()
        # Unprompted: the empty (negative) embedding on both sides and no guidance, i.e. the model's own prior.
        self.positive = positive if prompted else negative
        self.negative = negative
        self.guidance_scale = runtime.recipe.guidance_scale if prompted else 1.0

    def upscale(self, pixels: np.ndarray, seed: int) -> tuple[np.ndarray, str | None]:
        """The super-resolved image ``(sH, sW)`` in [0, 1] and a note for the user (a small image), if any."""
        upsampled = bicubic(pixels, self.scale)
        side, note = working_side(upsampled.shape, self.tiling, self.runtime.resolution)
        square, padding = io.to_model_input(upsampled, side, pad_only=note is None)
        images = torch.from_numpy(square)[None, None].repeat(1, 3, 1, 1)
        recipe = self.runtime.recipe
        request = GenerateRequest(images, self.positive, self.negative, [torch.Generator("cpu").manual_seed(seed)],
                                  recipe.steps, self.guidance_scale, tiling=self.tiling)
        made = self.runtime.prior.generate(request)[0].mean(0).numpy()
        return np.clip(io.to_original(made, padding, upsampled.shape), 0.0, 1.0), note


class X4Upscaler:
    """diffusers' ``StableDiffusionUpscalePipeline`` (its own CLIP text encoder, noise-level conditioning)."""

    def __init__(self, folder: str | Path, device: torch.device, dtype: torch.dtype, steps: int, guidance_scale: float,
                 noise_level: int, prompt: str) -> None:
        from diffusers import StableDiffusionUpscalePipeline

        from dva.core.runtime import quiet_libraries

        quiet_libraries()
        try:
            self.pipeline = StableDiffusionUpscalePipeline.from_pretrained(str(folder), torch_dtype=dtype)
        except (OSError, ValueError, TypeError) as error:
            first = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise ConfigError(f"--upscaler {folder}: cannot load it as diffusers' x4 upscaler ({first}); pass the folder "
                              "of stabilityai/stable-diffusion-x4-upscaler (model_index.json, unet/, vae/, ...).") from error
        self.pipeline.to(device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.steps, self.guidance_scale, self.noise_level, self.prompt = steps, guidance_scale, noise_level, prompt
        self.scale = 4

    @torch.no_grad()
    def upscale(self, pixels: np.ndarray, seed: int) -> tuple[np.ndarray, str | None]:
        """The x4 image ``(4H, 4W)`` in [0, 1] (gray: the mean of the pipeline's RGB)."""
        from dva.components.tiling import vae_tiles

        image = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None].repeat(1, 3, 1, 1)
        with vae_tiles(self.pipeline.vae):
            result = self.pipeline(prompt=self.prompt, image=image, num_inference_steps=self.steps,
                                   guidance_scale=self.guidance_scale, noise_level=self.noise_level,
                                   generator=torch.Generator("cpu").manual_seed(seed), output_type="pt")
        made = result.images[0].float().mean(0).cpu().numpy()
        height, width = pixels.shape
        if made.shape != (X4 * height, X4 * width):  # the pipeline rounds odd sizes to its VAE's grid
            made = io.resize(made, (X4 * height, X4 * width))
        return np.clip(made, 0.0, 1.0), None
