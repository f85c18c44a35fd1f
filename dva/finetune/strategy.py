"""The strategy contract: what a fine-tuning strategy decides, with DreamBooth-like defaults.

The trainer (:mod:`dva.finetune.trainer`) runs everything strategies share: the checks before any model loads,
accelerate, the data and its caches, the seeded denoising loss, the optimizer steps, non-finite stops,
checkpoints, resuming, validation and logs. A strategy says what trains and what is written:

- :meth:`Strategy.setup` (required) freezes and unfreezes (adds adapters, new tokens) and names the modules
  accelerate prepares; the optimizer trains every parameter of the UNet and the encoder that requires a gradient;
- :meth:`Strategy.save` writes its files (by default a whole dva model folder) and :meth:`Strategy.describe` its
  fields of ``dva.json``.

The other methods are optional hooks. A strategy is built with the options its ``FinetunerSpec`` declares
(checked, defaults filled in), as keyword arguments, e.g. ``LoRA(lora_rank=4, lora_alpha=4.0, ...)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from dva.finetune.loss import LossInputs, denoising_loss
from dva.finetune.output import save_model_folder
from dva.finetune.schedule import Phase, schedule_classes

if TYPE_CHECKING:
    import torch

    from dva.finetune.state import Parts, TrainingRun


class Strategy:
    """A fine-tuning strategy; subclass it and register a ``FinetunerSpec`` whose implementation is the class.

    ``prior_preservation``: whether the run trains on prior-preservation images. ``autocast``: whether the loss
    runs under accelerate's autocast with the frozen parts left in float32 (else frozen parts that accelerate does
    not prepare run in the mixed-precision dtype). ``output_name`` names what a non-finite weight keeps from being
    written.
    """

    name: ClassVar[str] = ""
    prior_preservation: ClassVar[bool] = True
    autocast: ClassVar[bool] = False
    output_name: ClassVar[str] = "the model"

    def __init__(self, **options: Any) -> None:
        self.options = options

    def check(self, config: Any) -> None:
        """Refuse settings the strategy cannot train with (a ConfigError), before anything is read or loaded."""

    def labels(self, config: Any) -> list[str]:
        """The dataset classes the run trains on (checked before any model loads)."""
        return schedule_classes(config.schedule)

    def loss_config(self, config: Any) -> Any:
        """The config the loss, validation and dva.json's prompts read."""
        return config

    def adapt(self, parts: Parts, config: Any) -> None:
        """Change the loaded models before anything uses them (textual inversion adds its tokens)."""

    def setup(self, parts: Parts, config: Any) -> tuple[str, ...]:
        """Set what trains (``requires_grad``, train/eval modes, gradient checkpointing); return the modules
        accelerate prepares, of ``("unet", "encoder")``."""
        raise NotImplementedError

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint records besides the settings; resuming refuses a checkpoint that recorded other values."""
        return {}

    def loss(self, run: TrainingRun, step: int, micro: int, phase: Phase) -> torch.Tensor:
        """The loss of one micro-batch of 0-based ``step``: the seeded denoising loss."""
        inputs = LossInputs(run.data, run.prior_data, run.unet, run.encoder, run.parts.vae, run.noise_scheduler,
                            run.accelerator.device, run.vae_dtype, run.text_cache)
        return denoising_loss(run.loss_config, step, micro, run.accelerator.process_index, phase, inputs)

    def before_clip(self, run: TrainingRun) -> None:
        """After the backward pass of an optimizer step, before its gradients are clipped and checked."""

    def after_step(self, run: TrainingRun) -> None:
        """After each optimizer step (and ``zero_grad``)."""

    def save(self, run: TrainingRun) -> None:
        """Write the trained weights into ``run.out`` (main process only; dva.json comes after): by default a whole
        dva model folder (UNet, VAE, scheduler, encoder)."""
        save_model_folder(run)

    def describe(self, run: TrainingRun) -> dict[str, Any]:
        """The strategy's own fields of dva.json, over the common ones (:func:`dva.finetune.output.model_info`)."""
        return {}
