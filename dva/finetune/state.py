"""What a fine-tuning run holds while it trains, as the trainer hands it to its strategy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dva.finetune.data import TextCache, TrainingData
from dva.finetune.schedule import total_steps


@dataclass
class Parts:
    """The loaded base model: where it came from (a ``ModelSource``), its UNet, VAE, scheduler config and
    dva's text encoder (tokenizer, transformer and projection)."""

    source: Any
    unet: Any
    vae: Any
    scheduler_config: dict
    encoder: Any


@dataclass
class TrainingRun:
    """One run, from the first step it trains to the model it writes.

    ``config`` is the run's settings; ``loss_config`` what the loss, validation and dva.json's prompts read (the
    strategy's, e.g. textual inversion's placeholder prompts). ``unet``/``encoder`` are the modules as accelerate
    prepared them (``trained`` names those it prepared); ``raw_encoder`` is the encoder unwrapped.
    """

    config: Any
    loss_config: Any
    accelerator: Any
    out: Path
    dataset: Any
    prior: Any
    parts: Parts
    resolution: int
    noise_scheduler: Any
    data: TrainingData
    prior_data: TrainingData | None
    trained: tuple[str, ...]
    unet: Any
    encoder: Any
    raw_encoder: Any
    parameters: list[torch.nn.Parameter]
    optimizer: Any
    lr_scheduler: Any
    vae_dtype: torch.dtype
    settings: dict[str, Any] = field(default_factory=dict)
    resume_plan: Any = None
    text_cache: TextCache | None = None

    @property
    def total(self) -> int:
        """The schedule's optimizer steps."""
        return total_steps(self.config.schedule)

    def unwrapped(self, name: str) -> Any:
        """A trained module (``"unet"``, ``"encoder"``) without accelerate's wrappers."""
        return self.accelerator.unwrap_model(getattr(self, name))
