"""Built-in schedulers: diffusers' classes, swapped in with ``from_config``."""

from __future__ import annotations

from dva.core.hookspecs import RegisterScheduler, hookimpl
from dva.core.specs import SchedulerSpec

BUILTIN_SCHEDULERS = (
    SchedulerSpec(
        name="pndm",
        implementation="diffusers:PNDMScheduler",
        description="PNDM (PLMS), SD v1's default; the thesis' best setting",
        config_overrides={"skip_prk_steps": True},
    ),
    SchedulerSpec(name="ddim", implementation="diffusers:DDIMScheduler", description="DDIM, deterministic (eta 0)"),
    SchedulerSpec(
        name="dpm-solver++",
        implementation="diffusers:DPMSolverMultistepScheduler",
        description="DPM-Solver++ (2M); about 20 steps reach PNDM's quality at 50+",
        config_overrides={"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    SchedulerSpec(
        name="euler", implementation="diffusers:EulerDiscreteScheduler", description="Euler (k-diffusion)"
    ),
    SchedulerSpec(name="unipc", implementation="diffusers:UniPCMultistepScheduler", description="UniPC multistep"),
)


@hookimpl
def register_schedulers(register: RegisterScheduler) -> None:
    for spec in BUILTIN_SCHEDULERS:
        register(spec)
