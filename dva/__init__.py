"""dva: diffusion visual attribution for medical images.

The public API for plugin authors: the ``hookimpl`` marker, the spec classes a plugin registers,
and the errors that reach users as one clear sentence. Importing this module does not import torch.
"""

from dva.core.errors import ConfigError, DvaError, InputError, MetricUnavailable, PluginError
from dva.core.hookspecs import hookimpl
from dva.core.specs import (
    ComponentSpec,
    DatasetSpec,
    EncoderSpec,
    FinetunerSpec,
    MetricSpec,
    ModalitySpec,
    Option,
    PriorSpec,
    SchedulerSpec,
)

__all__ = [
    "ComponentSpec",
    "ConfigError",
    "DatasetSpec",
    "DvaError",
    "EncoderSpec",
    "FinetunerSpec",
    "InputError",
    "MetricSpec",
    "MetricUnavailable",
    "ModalitySpec",
    "Option",
    "PluginError",
    "PriorSpec",
    "SchedulerSpec",
    "hookimpl",
]
