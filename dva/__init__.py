"""dva: diffusion visual attribution for medical images.

The public API for plugin authors, one import: the ``hookimpl`` marker, the spec classes a plugin
registers and the typed ``register`` callbacks its hooks receive, the contracts its implementations
follow and the data they exchange (:mod:`dva.core.contracts`), the errors that reach users as one
clear sentence, and a few file helpers. Importing this module imports neither torch nor numpy: the helpers,
``FinetuneConfig`` and ``FinetuneStrategy`` (the base class of a fine-tuning strategy) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dva.core.contracts import (
    MIN_SIDE,
    DatasetOpener,
    Finetuner,
    GenerateRequest,
    ImageResult,
    LabelledDataset,
    Metric,
    ModalityReader,
    ModalityWriter,
    ModelParts,
    PairMetric,
    Prior,
    Sample,
    Scan,
    ScanImage,
    ScanInput,
    SetMetric,
    StepCallback,
    TextEncoder,
)
from dva.core.errors import ConfigError, DvaError, InputError, MetricUnavailable, PluginError
from dva.core.tiles import Tiling
from dva.core.hookspecs import (
    RegisterDataset,
    RegisterEncoder,
    RegisterFinetuner,
    RegisterMetric,
    RegisterModality,
    RegisterPrior,
    RegisterScheduler,
    hookimpl,
)
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

if TYPE_CHECKING:
    from dva.components.tiling import TiledUNet
    from dva.core.io import atomic_write_bytes, file_sha256, has_extension, strip_extension
    from dva.finetune.config import FinetuneConfig
    from dva.finetune.strategy import Strategy as FinetuneStrategy

# Public names whose modules import numpy or torch: "module:attribute", imported on first access.
_LAZY = {
    "FinetuneConfig": "dva.finetune.config:FinetuneConfig",
    "FinetuneStrategy": "dva.finetune.strategy:Strategy",
    "TiledUNet": "dva.components.tiling:TiledUNet",
    "atomic_write_bytes": "dva.core.io:atomic_write_bytes",
    "file_sha256": "dva.core.io:file_sha256",
    "has_extension": "dva.core.io:has_extension",
    "strip_extension": "dva.core.io:strip_extension",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dva' has no attribute {name!r}")
    module, attribute = _LAZY[name].split(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


__all__ = [
    "MIN_SIDE",
    "ComponentSpec",
    "ConfigError",
    "DatasetOpener",
    "DatasetSpec",
    "DvaError",
    "EncoderSpec",
    "FinetuneConfig",
    "FinetuneStrategy",
    "Finetuner",
    "FinetunerSpec",
    "GenerateRequest",
    "ImageResult",
    "InputError",
    "LabelledDataset",
    "Metric",
    "MetricSpec",
    "MetricUnavailable",
    "ModalityReader",
    "ModalitySpec",
    "ModalityWriter",
    "ModelParts",
    "Option",
    "PairMetric",
    "PluginError",
    "Prior",
    "PriorSpec",
    "RegisterDataset",
    "RegisterEncoder",
    "RegisterFinetuner",
    "RegisterMetric",
    "RegisterModality",
    "RegisterPrior",
    "RegisterScheduler",
    "Sample",
    "Scan",
    "ScanImage",
    "ScanInput",
    "SchedulerSpec",
    "SetMetric",
    "StepCallback",
    "TextEncoder",
    "TiledUNet",
    "Tiling",
    "atomic_write_bytes",
    "file_sha256",
    "has_extension",
    "hookimpl",
    "strip_extension",
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
