"""Hook specifications. Each ``register_*`` hook receives a ``register`` callback typed with the one spec
class it accepts; full text in docs/plugins.md. dva calls every hook through pluggy, so ``specname`` and
opt-in arguments (an implementation taking fewer arguments than its hook) work as pluggy documents."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

from dva.core.specs import DatasetSpec, EncoderSpec, FinetunerSpec, MetricSpec, ModalitySpec, PriorSpec, SchedulerSpec

if TYPE_CHECKING:
    import click

hookspec = pluggy.HookspecMarker("dva")
hookimpl = pluggy.HookimplMarker("dva")

RegisterEncoder = Callable[[EncoderSpec], None]
RegisterPrior = Callable[[PriorSpec], None]
RegisterScheduler = Callable[[SchedulerSpec], None]
RegisterFinetuner = Callable[[FinetunerSpec], None]
RegisterMetric = Callable[[MetricSpec], None]
RegisterModality = Callable[[ModalitySpec], None]
RegisterDataset = Callable[[DatasetSpec], None]


@hookspec
def register_encoders(register: RegisterEncoder) -> None:
    """Register text encoders: call ``register(EncoderSpec(...))`` once per encoder."""


@hookspec
def register_priors(register: RegisterPrior) -> None:
    """Register image priors: call ``register(PriorSpec(...))`` once per prior."""


@hookspec
def register_schedulers(register: RegisterScheduler) -> None:
    """Register noise schedulers: call ``register(SchedulerSpec(...))`` once per scheduler."""


@hookspec
def register_finetuners(register: RegisterFinetuner) -> None:
    """Register fine-tuning strategies: call ``register(FinetunerSpec(...))``."""


@hookspec
def register_metrics(register: RegisterMetric) -> None:
    """Register evaluation metrics: call ``register(MetricSpec(...))``."""


@hookspec
def register_modalities(register: RegisterModality) -> None:
    """Register imaging modalities: call ``register(ModalitySpec(...))``."""


@hookspec
def register_datasets(register: RegisterDataset) -> None:
    """Register labelled dataset layouts: call ``register(DatasetSpec(...))``."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands to the ``dva`` command group ``cli``."""
