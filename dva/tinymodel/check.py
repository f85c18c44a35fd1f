"""Does the tiny model do its job? Healthy counterfactuals of Lung Opacity phantoms, scored on their lesions.

A good counterfactual removes the opacity and keeps the rest: the mean change ``|input - counterfactual|``
inside the ground-truth lesion mask should clearly exceed the change elsewhere. This is computed with
diffusers' img2img pipeline (SDEdit, DDIM) on embeddings from dva's own encoder path, the same route
``dva run`` takes, so it measures the model, not the run machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class LesionScore:
    """Mean absolute change (gray levels in [0, 1]) inside the lesion, in the rest of the lungs, elsewhere."""

    lesion: float
    lungs: float
    outside: float

    @property
    def ratio(self) -> float:
        """Change inside the lesion over change in the rest of the image (lungs and outside together)."""
        return self.lesion / max(self.rest, 1e-8)

    @property
    def rest(self) -> float:
        return (self.lungs + self.outside) / 2


class TinyPipeline:
    """A model folder loaded once for SDEdit on the CPU in float32."""

    def __init__(self, folder: str | Path, scheduler: str = "ddim") -> None:
        from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

        from dva.core.model_folder import inspect_model
        from dva.core.plugins import load_catalogue
        from dva.core.registry import Recipe
        from dva.core.runtime import load_diffusion_parts, load_encoder, model_resolution

        source = inspect_model(str(folder))
        device = torch.device("cpu")
        unet, vae, config = load_diffusion_parts(source, device, torch.float32)
        self.encoder = load_encoder(Recipe(), load_catalogue(entry_points=False), source,
                                    int(unet.config.cross_attention_dim)).eval()
        self.healthy = (source.dva.get("prompts") or {}).get("healthy") or "normal chest x ray"
        self.resolution = model_resolution(unet, vae)
        self.pipeline = StableDiffusionImg2ImgPipeline(
            vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=DDIMScheduler.from_config(config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        self.pipeline.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def counterfactuals(self, images: np.ndarray, prompt: str | None = None, strength: float = 0.6, steps: int = 20,
                        guidance: float = 4.0, seed: int = 0) -> np.ndarray:
        """SDEdit of gray images (N, R, R) in [0, 1] towards ``prompt`` (default: the healthy one); (N, R, R)."""
        embeds = self.encoder.encode([prompt or self.healthy, ""])
        count = len(images)
        rgb = np.repeat(images[..., None], 3, axis=-1).astype(np.float32)
        generators = [torch.Generator().manual_seed(seed + index) for index in range(count)]
        output = self.pipeline(
            image=rgb, prompt_embeds=embeds[:1].repeat(count, 1, 1), negative_prompt_embeds=embeds[1:].repeat(count, 1, 1),
            strength=strength, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
            output_type="np",
        ).images
        return output.mean(axis=-1)


def load_phantom(label: str, index: int, seed: int, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phantom ``index`` of ``label`` at ``resolution``: image in [0, 1], lung mask, lesion mask (booleans)."""
    from dva.core import io
    from dva.datasets.phantoms import render_phantom

    image, lungs, lesion, _, _ = render_phantom(label, index, size=2 * resolution, seed=seed)
    small = np.clip(io.resize(image.astype(np.float32) / 255, (resolution, resolution)), 0, 1)
    masks = [io.resize(mask.astype(np.float32), (resolution, resolution)) > 0.5 for mask in (lungs, lesion)]
    return small, masks[0], masks[1]


def lesion_score(image: np.ndarray, counterfactual: np.ndarray, lungs: np.ndarray, lesion: np.ndarray) -> LesionScore:
    change = np.abs(image - counterfactual)
    return LesionScore(float(change[lesion].mean()), float(change[lungs & ~lesion].mean()),
                       float(change[~lungs & ~lesion].mean()))


def score_model(pipeline: TinyPipeline, indices: list[int], seed: int, **options: Any) -> list[LesionScore]:
    """Lesion scores of the healthy counterfactuals of Lung Opacity phantoms ``indices`` (phantom seed ``seed``)."""
    phantoms = [load_phantom("Lung Opacity", index, seed, pipeline.resolution) for index in indices]
    images = np.stack([phantom[0] for phantom in phantoms])
    counterfactuals = pipeline.counterfactuals(images, **options)
    return [lesion_score(image, cf, lungs, lesion)
            for image, cf, (_, lungs, lesion) in zip(images, counterfactuals, phantoms)]
