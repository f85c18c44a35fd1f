"""Component specs: what plugins register.

A spec is a small frozen description of a component: its name, the import path of its
implementation (imported only when the component is used, so ``dva --help`` and ``dva plugins``
never import torch), its default pretrained source and the options it accepts. This mirrors
diffusers' ``ComponentSpec`` split between ``load`` (pretrained weights) and ``create`` (random
weights from a config, for tests and benchmarks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dva.core.errors import ConfigError
from dva.core.imports import import_object


@dataclass(frozen=True)
class Option:
    """A typed option of a component, with bounds checked before anything is loaded."""

    type: type
    default: Any = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None

    def check(self, value: Any, where: str) -> Any:
        """Return ``value`` converted to this option's type, or raise a ConfigError naming ``where``."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is not bool and isinstance(value, bool)):
            raise ConfigError(
                f"{where} must be of type {self.type.__name__}, not {type(value).__name__} ({value!r})."
            )
        # NaN passes every range check (comparisons with it are false), so it is refused before them.
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where} is {value}, but must be a finite number.")
        if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{where} is {value}, but must be between {self.minimum} and {self.maximum}.")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where} is {value!r}, but must be one of: {', '.join(self.choices)}.")
        return value


@dataclass(frozen=True)
class ComponentSpec:
    """Common part of every spec: a name, a lazily imported implementation and its options."""

    kind: ClassVar[str] = "component"

    name: str
    implementation: str
    description: str = ""
    options: dict[str, Option] = field(default_factory=dict)

    def resolve(self) -> Any:
        """The implementation object (class or function), imported now."""
        return import_object(self.implementation)

    def check_options(
        self, values: dict[str, Any], where: str, option_where: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Validate ``values`` against this spec's options and fill in defaults.

        ``option_where`` names where an option was set (a CLI flag) for the error message.
        """
        option_where = option_where or {}
        unknown = sorted(set(values) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ConfigError(f"{where}: {self.kind} '{self.name}' has no option '{unknown[0]}' (options: {known}).")
        checked = {key: option.default for key, option in self.options.items()}
        for key, value in values.items():
            checked[key] = self.options[key].check(value, option_where.get(key, f"{where}, option '{key}'"))
        return checked


@dataclass(frozen=True)
class EncoderSpec(ComponentSpec):
    """A text encoder family member: a hub id (or folder) plus its family's loader.

    ``family`` names the tokenizer/model pair ("bert", "clip"); ``hidden_size`` is the width of
    its hidden states, compared with the UNet's cross-attention width to decide on a projection.
    """

    kind: ClassVar[str] = "encoder"

    family: str = "bert"
    default_source: str | None = None
    hidden_size: int | None = None
    max_length: int = 77
    tiny_config: dict[str, Any] = field(default_factory=dict)

    def load(self, source: str | None = None, **kwargs: Any) -> Any:
        """Load pretrained weights from ``source`` (hub id or folder), default ``default_source``."""
        return self.resolve().from_pretrained(self, source or self.default_source, **kwargs)

    def create(self, **kwargs: Any) -> Any:
        """Build with random weights from ``tiny_config`` (updated by ``kwargs``)."""
        return self.resolve().from_config(self, {**self.tiny_config, **kwargs})


@dataclass(frozen=True)
class PriorSpec(ComponentSpec):
    """An image prior: how the input image steers the generation (SDEdit, ControlNet, ...)."""

    kind: ClassVar[str] = "prior"

    def create(self, **options: Any) -> Any:
        """The prior object for these (already checked) options."""
        return self.resolve()(**options)


@dataclass(frozen=True)
class SchedulerSpec(ComponentSpec):
    """A diffusers scheduler class, swapped in with ``from_config`` and optional config overrides."""

    kind: ClassVar[str] = "scheduler"

    config_overrides: dict[str, Any] = field(default_factory=dict)

    def from_config(self, config: Any, **overrides: Any) -> Any:
        """A scheduler of this kind built from another scheduler's config."""
        return self.resolve().from_config(config, **{**self.config_overrides, **overrides})


@dataclass(frozen=True)
class FinetunerSpec(ComponentSpec):
    """A fine-tuning strategy (DreamBooth, textual inversion, LoRA, ...)."""

    kind: ClassVar[str] = "finetuner"


@dataclass(frozen=True)
class MetricSpec(ComponentSpec):
    """An evaluation measure (FID, SSIM, localisation, ...).

    ``scope`` says what it compares, and so which call its implementation (a class built with the
    checked options) answers: ``"sets"``, two image sets, ``distance(paths_a, paths_b)``;
    ``"pairs"``, each input and its counterfactual, ``score(input, counterfactual, mask)``;
    ``"maps"``, an attribution map and a ground-truth lesion, ``score(attribution, lesion, region)``.
    ``score`` returns named values (``columns``). An implementation whose weights are absent raises
    :class:`dva.core.errors.MetricUnavailable` when built; evaluation skips it with that note.
    """

    kind: ClassVar[str] = "metric"

    scope: str = "pairs"
    columns: tuple[str, ...] = ()

    def create(self, **options: Any) -> Any:
        """The measure for these (already checked) options."""
        return self.resolve()(**options)


@dataclass(frozen=True)
class ModalitySpec(ComponentSpec):
    """An imaging modality: how its files are read, what a healthy prompt says, how outputs map back.

    ``implementation`` is the reader, ``read(path, mask=None, **options)``: one file into a
    :class:`dva.core.modality.ScanInput` (one or more named 2-D images in [0, 1] with optional masks),
    or a plain :class:`dva.core.io.Scan` for a file that is one image. ``options`` are the reader's,
    set with ``--modality-option``. ``writer`` (optional import path) is called once all images of a
    file are done, ``write(folder, source, results) -> list[str]``, to write outputs of the modality's
    own (a volume in the input's space). ``extensions`` are the files it reads, e.g. ``(".nii.gz",)``:
    folders are searched for them, and they choose this modality when ``--modality`` is not given.
    """

    kind: ClassVar[str] = "modality"

    healthy_prompt: str = ""
    extensions: tuple[str, ...] = ()
    writer: str | None = None

    def check_options(
        self, values: dict[str, Any], where: str, option_where: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """As for any component, except that a text option given a number takes its text
        (``--modality-option slices=42`` reads 42 as a number)."""
        values = {
            key: str(value)
            if key in self.options and self.options[key].type is str and type(value) in (int, float) else value
            for key, value in values.items()
        }
        return super().check_options(values, where, option_where)

    def read(self, path: Any, mask: Any = None, **options: Any) -> Any:
        """The :class:`dva.core.modality.ScanInput` of one file (options checked against this spec's)."""
        from dva.core.modality import read_input

        checked = self.check_options(options, f"modality '{self.name}'")
        return read_input(self, path, mask, checked)

    def write(self, folder: Any, source: Any, results: list[Any]) -> list[str]:
        """Run the writer (if any) on one file's results; returns the files written, relative to ``folder``."""
        if self.writer is None:
            return []
        from dva.core.modality import call_writer

        return call_writer(self, folder, source, results)


@dataclass(frozen=True)
class DatasetSpec(ComponentSpec):
    """A labelled dataset layout (COVID-19 Radiography folders, class folders, CSV, ...).

    ``implementation`` opens a location as a :class:`dva.datasets.LabelledDataset`; ``detect`` (an
    optional import path) says whether a folder looks like this layout, for ``--layout auto``.
    """

    kind: ClassVar[str] = "dataset"

    detect: str | None = None


SPEC_KINDS: dict[str, type[ComponentSpec]] = {
    "encoder": EncoderSpec,
    "prior": PriorSpec,
    "scheduler": SchedulerSpec,
    "finetuner": FinetunerSpec,
    "metric": MetricSpec,
    "modality": ModalitySpec,
    "dataset": DatasetSpec,
}
