"""Image priors: how the input steers generation. Sampling itself is diffusers' pipelines.

dva hands the pipelines its own prompt embeddings (so any encoder works) and one CPU generator per
image (so an image's counterfactual does not depend on the batch it is in).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

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
    """SDEdit (img2img): noise the input latent to ``strength * T`` and denoise with the prompt."""

    name = "sdedit"

    def __init__(self, strength: float = 0.85) -> None:
        self.strength = strength
        self.pipeline: Any = None

    def load(self, parts: ModelParts) -> None:
        from diffusers import StableDiffusionImg2ImgPipeline

        self.pipeline = StableDiffusionImg2ImgPipeline(**_pipeline_kwargs(parts))
        self.pipeline.set_progress_bar_config(disable=True)

    def condition(self, images: np.ndarray) -> np.ndarray | None:
        """The extra conditioning image per input (None for SDEdit)."""
        return None

    def unet_calls(self, steps: int) -> int:
        """Denoising UNet evaluations per image (before classifier-free guidance doubling)."""
        scheduler = self.pipeline.scheduler
        scheduler.set_timesteps(steps)
        timesteps, _ = self.pipeline.get_timesteps(steps, self.strength, "cpu")
        return len(timesteps)

    def _call_kwargs(self, conditions: torch.Tensor | None) -> dict[str, Any]:
        return {}

    @torch.no_grad()
    def generate(self, request: GenerateRequest) -> torch.Tensor:
        """Counterfactuals ``(B, 3, H, W)`` in [0, 1] for the request's inputs ``(B, 3, H, W)`` in [0, 1]."""
        batch = request.images.shape[0]
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
        )
        return result.images.float().cpu()


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
    ) -> None:
        super().__init__(strength)
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
