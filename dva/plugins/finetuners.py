"""Built-in fine-tuning strategies."""

from __future__ import annotations

from dva.core.hookspecs import hookimpl
from dva.core.specs import FinetunerSpec

BUILTIN_FINETUNERS = (
    FinetunerSpec(
        name="dreambooth",
        implementation="dva.finetune.dreambooth:train",
        description="DreamBooth: UNet and text encoder (and projection) trained jointly, class by class, "
        "with class-specific prior preservation",
    ),
)


@hookimpl
def register_finetuners(register):
    for spec in BUILTIN_FINETUNERS:
        register(spec)
