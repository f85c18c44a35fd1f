"""Built-in fine-tuning strategies, each with the options it declares (set with ``--finetune-option KEY=VALUE``,
a flag of their own, or a registry entry's ``finetune`` table)."""

from __future__ import annotations

from dva.core.hookspecs import hookimpl
from dva.core.specs import FinetunerSpec, Option

BUILTIN_FINETUNERS = (
    FinetunerSpec(
        name="dreambooth",
        implementation="dva.finetune.dreambooth:DreamBooth",
        description="DreamBooth: UNet and text encoder (and projection) trained jointly, class by class, "
        "with class-specific prior preservation",
    ),
    FinetunerSpec(
        name="lora",
        implementation="dva.finetune.lora:LoRA",
        description="LoRA adapters on the UNet's attention (optionally the text encoder); base frozen, small output",
        options={
            "lora_rank": Option(int, 4, "adapter rank", 1, 1024),
            "lora_alpha": Option(float, 4.0, "adapter scale numerator (the adapters are scaled by alpha / rank); "
                                 "above 0", 0.0),
            "lora_text_encoder": Option(bool, False, "adapters on the text encoder's attention too"),
        },
    ),
    FinetunerSpec(
        name="textual-inversion",
        implementation="dva.finetune.textual_inversion:TextualInversion",
        description="Textual inversion: one new token per class learned in the text encoder's embeddings; "
        "UNet, VAE and the rest of the encoder stay frozen",
        options={
            "placeholder_template": Option(str, "<{label}>", "the new token of a class ({label} is its name)"),
            "initializer_token": Option(str, "chest", "the existing single token new embeddings start from"),
        },
    ),
)


@hookimpl
def register_finetuners(register):
    for spec in BUILTIN_FINETUNERS:
        register(spec)
