"""Built-in image priors: SDEdit img2img, ControlNet on Canny edges of the input, and DDIM inversion."""

from __future__ import annotations

from dva.core.hookspecs import RegisterPrior, hookimpl
from dva.core.specs import Option, PriorSpec

STRENGTH = Option(float, 0.85, "fraction of the noise schedule the input is noised to (SDEdit t0/T)", 0.0, 1.0)
REGION = Option(str, "", "blended induction: only this region may change, a lung zone ('left upper', cut from --mask) "
                "or a mask image at the model's size; '' (default): the whole image")

BUILTIN_PRIORS = (
    PriorSpec(
        name="sdedit",
        implementation="dva.components.priors:SDEditPrior",
        description="SDEdit: noise the input's latent to strength*T, denoise with the prompt",
        options={"strength": STRENGTH, "region": REGION},
    ),
    PriorSpec(
        name="controlnet-canny",
        implementation="dva.components.priors:ControlNetCannyPrior",
        description="SDEdit plus a ControlNet on the input's Canny edges (keeps ribs, frame, heart outline)",
        options={
            "strength": STRENGTH,
            "controlnet": Option(str, "lllyasviel/sd-controlnet-canny", "ControlNet hub id or local folder"),
            "low_threshold": Option(int, 100, "Canny lower hysteresis threshold (0-255 scale)", 0, 1000),
            "high_threshold": Option(int, 200, "Canny upper hysteresis threshold (0-255 scale)", 0, 1000),
            "conditioning_scale": Option(float, 1.0, "weight of the ControlNet residuals", 0.0, 5.0),
            "region": REGION,
        },
    ),
    PriorSpec(
        name="ddim-inversion",
        implementation="dva.components.ddim_inversion:DDIMInversionPrior",
        description="Deterministic: DDIM-invert the input's latent to strength*T, denoise with the prompt (Sanchez et al. 2022)",
        options={
            "strength": Option(float, 0.6, "fraction of the schedule the input is inverted to (t0/T)", 0.0, 1.0),
            "inversion": Option(
                str, "unconditional",
                "embedding the inversion runs with, at guidance 1: the unconditional (negative prompt) one, or the prompt",
                choices=("unconditional", "prompt"),
            ),
            "region": REGION,
        },
    ),
)


@hookimpl
def register_priors(register: RegisterPrior) -> None:
    for spec in BUILTIN_PRIORS:
        register(spec)
