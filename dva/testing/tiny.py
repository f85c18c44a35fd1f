"""Tiny Stable Diffusion models built from configs and saved in the real formats (no network).

Sizes follow diffusers' own ``get_dummy_components`` (UNet ``block_out_channels=(32, 64)``,
``cross_attention_dim=32``), so tests load them through exactly the code paths real weights take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TINY_NOTE = (
    "This is a tiny model with RANDOM weights built from configs: it exercises the whole pipeline, but its "
    "counterfactuals and maps mean nothing medically. Pass --model with real Stable Diffusion weights."
)


def tiny_unet(cross_attention_dim: int = 32, sample_size: int = 32, seed: int = 0) -> Any:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=32,
    )


def tiny_vae(seed: int = 0) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    )


def tiny_controlnet(cross_attention_dim: int = 32, seed: int = 0) -> Any:
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    return ControlNetModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=cross_attention_dim,
        conditioning_embedding_out_channels=(16, 32),
        norm_num_groups=32,
    )


def sd_scheduler() -> Any:
    """SD v1's PNDM configuration (scaled-linear betas, ``steps_offset`` 1)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )


def make_tiny_sd(folder: str | Path, sample_size: int = 32, seed: int = 0) -> Path:
    """A diffusers-format Stable Diffusion folder (model_index.json, CLIP text encoder) with tiny parts."""
    from diffusers import StableDiffusionPipeline

    from dva.plugins.encoders import BUILTIN_ENCODERS

    clip = next(spec for spec in BUILTIN_ENCODERS if spec.name == "clip").create(seed=seed)
    pipeline = StableDiffusionPipeline(
        vae=tiny_vae(seed),
        text_encoder=clip.model,
        tokenizer=clip.tokenizer,
        unet=tiny_unet(32, sample_size, seed),
        scheduler=sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def make_tiny_dva_model(
    folder: str | Path,
    encoder: str = "radbert",
    cross_attention_dim: int = 32,
    sample_size: int = 32,
    seed: int = 0,
    note: str | None = TINY_NOTE,
) -> Path:
    """A dva model folder: tiny UNet/VAE/scheduler, the encoder of ``encoder``'s family, and dva.json.

    With ``cross_attention_dim`` different from the encoder's width, a projection is saved with it.
    """
    from dva.core.model_folder import write_dva_json
    from dva.plugins.encoders import BUILTIN_ENCODERS

    folder = Path(folder)
    spec = next(s for s in BUILTIN_ENCODERS if s.name == encoder)
    text_encoder = spec.create(seed=seed)
    if text_encoder.hidden_size != cross_attention_dim:
        torch.manual_seed(seed)
        text_encoder.projection = torch.nn.Linear(text_encoder.hidden_size, cross_attention_dim)
    tiny_unet(cross_attention_dim, sample_size, seed).save_pretrained(folder / "unet", safe_serialization=True)
    tiny_vae(seed).save_pretrained(folder / "vae", safe_serialization=True)
    sd_scheduler().save_pretrained(folder / "scheduler")
    text_encoder.save_pretrained(folder)
    fields: dict[str, Any] = {
        "encoder": encoder,
        "encoder_family": spec.family,
        "modality": "chest-xray",
        "prompts": {"healthy": "normal chest x ray"},
        "base_model": "tiny random (dva.testing.tiny)",
    }
    if note:
        fields["note"] = note
    write_dva_json(folder, **fields)
    return folder
