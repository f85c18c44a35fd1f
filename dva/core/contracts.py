"""The public contracts between dva and its components: what a plugin implements and the data it exchanges.

A plugin author imports these from ``dva`` and nothing deeper. Nothing here imports torch at import
time: tensor types appear only in annotations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class GenerateRequest:
    """One batch for a prior's ``generate``: inputs ``(B, 3, H, W)`` in [0, 1], the prompt's and the
    negative prompt's embeddings ``(1, tokens, width)``, one CPU generator per input (so an image's
    counterfactual does not depend on its batch), the sampler's steps and guidance scale, and the
    prior's own condition images ``(B, 3, H, W)`` (from its ``condition``; None when it has none)."""

    images: torch.Tensor
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor
    generators: list[Any]
    steps: int
    guidance_scale: float
    condition: torch.Tensor | None = None


@dataclass
class ModelParts:
    """The loaded Stable Diffusion parts a prior builds its pipeline from (``Prior.load``)."""

    unet: Any
    vae: Any
    scheduler: Any
    device: torch.device
    dtype: torch.dtype
