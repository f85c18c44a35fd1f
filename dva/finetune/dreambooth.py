"""DreamBooth with any registered encoder: the UNet and the text encoder (and the projection to the UNet's width)
trained together, class by class, with class-specific prior preservation (see :mod:`dva.finetune.prior`)."""

from __future__ import annotations

from typing import Any

from dva.finetune.output import save_model_folder
from dva.finetune.state import Parts, TrainingRun
from dva.finetune.strategy import Strategy


class DreamBooth(Strategy):
    """The UNet learns, and the encoder too unless ``train_text_encoder`` is off (a projection always learns);
    the output is a whole dva model folder."""

    name = "dreambooth"

    def setup(self, parts: Parts, config: Any) -> tuple[str, ...]:
        unet, encoder = parts.unet, parts.encoder
        unet.requires_grad_(True).train()
        encoder.model.requires_grad_(config.train_text_encoder)
        encoder.model.train(config.train_text_encoder)
        if getattr(encoder.model, "pooler", None) is not None:  # BERT's pooler never reaches the UNet (and DDP needs
            encoder.model.pooler.requires_grad_(False)  # every trained parameter to take part in the loss)
        if encoder.projection is not None:
            encoder.projection.requires_grad_(True)
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            if config.train_text_encoder:
                encoder.model.gradient_checkpointing_enable()
        return ("unet", "encoder")

    def save(self, run: TrainingRun) -> None:
        save_model_folder(run, encoder_reference(run.config, run.parts.source))

    def describe(self, run: TrainingRun) -> dict[str, Any]:
        reference = encoder_reference(run.config, run.parts.source)
        return {"encoder_source": reference} if reference else {}


def encoder_reference(config: Any, source: Any) -> str | None:
    """The base's ``encoder_source`` when the trained model may name it instead of copying the encoder.

    That holds when the base is a dva folder without ``text_encoder/`` that names its encoder's source, the
    encoder stays frozen and no other encoder or path was asked for; the copy would be byte-identical.
    """
    reference = source.dva.get("encoder_source") if source.is_dva_folder and not source.has_text_encoder else None
    same_encoder = config.encoder in (None, source.dva.get("encoder")) and config.encoder_path is None
    return reference if reference and same_encoder and not config.train_text_encoder else None
