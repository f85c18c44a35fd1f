"""Hook specifications. Each hook receives a ``register`` callback; full text in docs/plugins.md."""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("dva")
hookimpl = pluggy.HookimplMarker("dva")

Register = Callable[[Any], None]


@hookspec
def register_encoders(register: Register) -> None:
    """Register text encoders: call ``register(EncoderSpec(...))`` once per encoder."""


@hookspec
def register_priors(register: Register) -> None:
    """Register image priors: call ``register(PriorSpec(...))`` once per prior."""


@hookspec
def register_schedulers(register: Register) -> None:
    """Register noise schedulers: call ``register(SchedulerSpec(...))`` once per scheduler."""


@hookspec
def register_finetuners(register: Register) -> None:
    """Register fine-tuning strategies: call ``register(FinetunerSpec(...))``."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register evaluation metrics: call ``register(MetricSpec(...))``."""


@hookspec
def register_modalities(register: Register) -> None:
    """Register imaging modalities: call ``register(ModalitySpec(...))``."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register labelled dataset layouts: call ``register(DatasetSpec(...))``."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the ``dva`` command group ``cli``."""
