"""A small AutoencoderKL trained on phantoms: the latent space of dva's tiny default model.

Stable Diffusion's VAE is 84 M parameters and unavailable offline; phantoms are simple enough for a
VAE of under a million parameters with 4x downsampling. It has no attention in its mid block, so it is
fully convolutional, and it trains on the whole (small) images. Loss: L1 + MSE reconstruction plus a
small KL term, as in latent diffusion's first stage without the adversarial part. After training the
``scaling_factor`` is set to 1 / std of the training latents, so the UNet sees unit-variance latents
(SD v1's 0.18215 was found the same way).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dva.core import io
from dva.core.errors import ConfigError


@dataclass(frozen=True)
class VaeRecipe:
    """Architecture and training settings of the tiny VAE (all recorded in its folder's config)."""

    resolution: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 1e-3
    kl_weight: float = 1e-6
    seed: int = 0


def build_vae(recipe: VaeRecipe) -> Any:
    """A randomly initialised AutoencoderKL of the recipe's shape (seeded)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(recipe.seed)
    blocks = len(recipe.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
        block_out_channels=list(recipe.block_out_channels),
        layers_per_block=1,
        latent_channels=recipe.latent_channels,
        norm_num_groups=32,
        sample_size=recipe.resolution,
        mid_block_add_attention=False,
    )


def load_images(files: list[Path], resolution: int) -> torch.Tensor:
    """Grayscale files as a (N, 3, R, R) tensor in [-1, 1], resized as ``dva run`` resizes its inputs."""
    if not files:
        raise ConfigError("No images to train the VAE on; generate phantoms first (dva phantoms).")
    arrays = [np.clip(io.to_model_input(io.read_scan(path).pixels, resolution)[0], 0, 1) for path in files]
    gray = torch.from_numpy(np.stack(arrays)).float()
    return gray.mul(2).sub(1)[:, None].repeat(1, 3, 1, 1)


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak 2)."""
    mse = F.mse_loss(reconstruction.clamp(-1, 1), target).item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


@torch.no_grad()
def reconstruction_psnr(vae: Any, images: torch.Tensor, chunk: int = 32) -> float:
    """PSNR of the VAE's reconstructions from its posterior means."""
    outputs = [vae.decode(vae.encode(images[i:i + chunk]).latent_dist.mean).sample for i in range(0, len(images), chunk)]
    return psnr(torch.cat(outputs), images)


def train_vae(images: torch.Tensor, recipe: VaeRecipe, log: Any = print) -> Any:
    """Train the VAE on ``images`` (N, 3, R, R) in [-1, 1]; returns it with its scaling factor set."""
    vae = build_vae(recipe)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate, total_steps=recipe.steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(recipe.seed)
    vae.train()
    started = time.perf_counter()
    for step in range(recipe.steps):
        index = torch.randint(0, len(images), (recipe.batch_size,), generator=generator)
        batch = images[index]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        output = vae.decode(latents).sample
        loss = F.l1_loss(output, batch) + F.mse_loss(output, batch) + recipe.kl_weight * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0 or step + 1 == recipe.steps:
            log(f"vae step {step + 1}/{recipe.steps} loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)")
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(images[i:i + 64]).latent_dist.mean for i in range(0, len(images), 64)])
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    return vae
