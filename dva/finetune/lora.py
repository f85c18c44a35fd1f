"""LoRA: low-rank adapters on the UNet's attention (and optionally the text encoder), base weights frozen.

The output folder holds only the adapters (formats: :mod:`dva.core.adapters`)::

    unet_lora/adapter_model.safetensors + adapter_config.json
    text_encoder_lora/...                  (with lora_text_encoder)
    projection/                            (only if the base encoder had no trained projection)
    dva.json                               strategy "lora", base_model, encoder, lora {...}

``dva run --model LORA_FOLDER`` loads ``base_model`` and applies the adapters (:func:`dva.core.adapters.apply_lora`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dva.core.adapters import (
    PROJECTION,
    TEXT_ENCODER_LORA,
    TEXT_TARGETS,
    UNET_LORA,
    UNET_TARGETS,
    add_text_adapter,
    add_unet_adapter,
    is_lora_folder,
    lora_config,
    save_adapter,
    save_projection,
)
from dva.core.errors import ConfigError
from dva.finetune.data import step_seed
from dva.finetune.state import Parts, TrainingRun
from dva.finetune.strategy import Strategy


class LoRA(Strategy):
    """Adapters of rank ``lora_rank`` scaled by ``lora_alpha / lora_rank`` on the UNet's attention projections
    and, with ``lora_text_encoder``, the encoder's; a fresh projection (one the base never trained) learns too."""

    name = "lora"
    output_name = "the adapters"

    def __init__(self, lora_rank: int = 4, lora_alpha: float = 4.0, lora_text_encoder: bool = False) -> None:
        super().__init__(lora_rank=lora_rank, lora_alpha=lora_alpha, lora_text_encoder=lora_text_encoder)
        self.rank, self.alpha, self.text_encoder = lora_rank, lora_alpha, lora_text_encoder
        self.train_projection = False

    def check(self, config: Any) -> None:
        """Adapters need a positive rank and alpha, and the base model's own encoder (the folder holds none)."""
        from dva.core.model_folder import inspect_model

        if self.rank < 1 or self.alpha <= 0:
            raise ConfigError(f"LoRA rank {self.rank} / alpha {self.alpha}: rank must be >= 1, alpha > 0.")
        if is_lora_folder(Path(config.base_model).expanduser()):
            raise ConfigError(f"--model {config.base_model}: is itself a LoRA folder; pass its base model instead.")
        if not _base_encoder_is_used(config, inspect_model(config.base_model)):
            raise ConfigError(
                "LoRA keeps the base model's own text encoder (the adapter folder holds no encoder); drop --encoder/"
                "--encoder-path, or fine-tune with --strategy dreambooth first to make a model with that encoder."
            )

    def setup(self, parts: Parts, config: Any) -> tuple[str, ...]:
        unet, encoder = parts.unet, parts.encoder
        unet.requires_grad_(False)
        encoder.requires_grad_(False)
        torch.manual_seed(step_seed(config.seed, -1))  # the adapters' gaussian init
        add_unet_adapter(unet, lora_config(self.rank, self.alpha, UNET_TARGETS))
        if self.text_encoder:
            targets = TEXT_TARGETS.get(encoder.family)
            if targets is None:
                raise ConfigError(f"LoRA on the text encoder knows families {sorted(TEXT_TARGETS)}, not '{encoder.family}'.")
            add_text_adapter(encoder.model, lora_config(self.rank, self.alpha, targets))
        self.train_projection = encoder.projection is not None and not encoder.projection_trained
        if self.train_projection:  # a fresh projection is part of what is trained (and saved)
            encoder.projection.requires_grad_(True)
        unet.train()
        encoder.model.train(self.text_encoder)
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        encoder_trains = any(p.requires_grad for p in encoder.parameters())
        return ("unet", "encoder") if encoder_trains else ("unet",)  # DDP refuses a module with nothing to train

    def save(self, run: TrainingRun) -> None:
        encoder = run.raw_encoder
        save_adapter(run.unwrapped("unet"), run.out / UNET_LORA, self.rank, self.alpha, UNET_TARGETS)
        if self.text_encoder:
            save_adapter(encoder.model, run.out / TEXT_ENCODER_LORA, self.rank, self.alpha, TEXT_TARGETS[encoder.family])
        if self.train_projection:
            save_projection(encoder.projection, run.out / PROJECTION)

    def describe(self, run: TrainingRun) -> dict[str, Any]:
        source = run.parts.source
        return {
            "base_model": str(Path(source.location).resolve()) if source.is_local else source.location,
            "lora": {
                "rank": self.rank,
                "alpha": self.alpha,
                "unet": UNET_LORA,
                "text_encoder": TEXT_ENCODER_LORA if self.text_encoder else None,
                "projection": PROJECTION if self.train_projection else None,
            },
        }


def _base_encoder_is_used(config: Any, source: Any) -> bool:
    trained = source.dva.get("encoder") if source.is_dva_folder else "clip"
    return config.encoder_path is None and (config.encoder or trained) == trained and source.has_text_encoder
