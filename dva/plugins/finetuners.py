"""Built-in fine-tuning strategies."""

from __future__ import annotations

from dva.core.hookspecs import RegisterFinetuner, hookimpl
from dva.core.specs import FinetunerSpec

BUILTIN_FINETUNERS = (
    FinetunerSpec(
        name="dreambooth",
        implementation="dva.finetune.dreambooth:train",
        description="DreamBooth: UNet and text encoder (and projection) trained jointly, class by class, "
        "with class-specific prior preservation",
    ),
    FinetunerSpec(
        name="lora",
        implementation="dva.finetune.lora:train",
        description="LoRA adapters on the UNet's attention (optionally the text encoder); base frozen, small output",
    ),
    FinetunerSpec(
        name="textual-inversion",
        implementation="dva.finetune.textual_inversion:train",
        description="Textual inversion: one new token per class learned in the text encoder's embeddings; "
        "UNet, VAE and the rest of the encoder stay frozen",
    ),
)


@hookimpl
def register_finetuners(register: RegisterFinetuner) -> None:
    for spec in BUILTIN_FINETUNERS:
        register(spec)
