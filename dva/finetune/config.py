"""The settings of one fine-tuning run (:class:`FinetuneConfig`), generated from the settings schema.

Its fields are :data:`COMMAND_SETTINGS` (the run's paths and switches, set on the command line only), then every
setting a registry entry's ``finetune`` table may hold (``dva.core.settings.FINETUNE_SETTINGS``), then
``strategy`` and ``options``: the strategy's own options, declared by its ``FinetunerSpec``. Defaults, types and
bounds come from those declarations alone, so the config, the registry, ``dva finetune``'s flags and the docs
cannot disagree.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, field, make_dataclass
from typing import Any

from dva.core.settings import FINETUNE_SETTINGS, Setting, by_name
from dva.core.specs import Option
from dva.finetune.schedule import Phase, format_schedule

DEVICES = ("auto", "cpu")


def _command(name: str, option: Option, flag: str, **kwargs: Any) -> Setting:
    """A setting of ``dva finetune`` that only the command line sets (no registry key)."""
    return Setting(name, option, flag, in_entry=False, in_recipe=False, **kwargs)


COMMAND_SETTINGS: tuple[Setting, ...] = (
    _command("base_model", Option(str, None, "Base Stable Diffusion folder or hub id (or a dva model folder)."),
             "--model", doc="the base model: a Stable Diffusion folder or hub id, or a dva model folder "
             "(its registry key is the entry's `model`)"),
    _command("data", Option(str, None, "Labelled dataset (COVID-19 Radiography layout, class folders or CSV)."),
             "--data", path="any", required=True,
             doc="the labelled dataset (see [datasets.md](datasets.md))"),
    _command("out", Option(str, None, "The dva model folder to write."), "--out", path="folder", required=True,
             doc="the dva model folder to write; neither the base model nor the dataset, nor inside one"),
    _command("encoder", Option(str, None, "Text encoder (default: the base model's own)."), "--encoder",
             unset="the base model's own", doc="the text encoder (its registry key is the entry's `encoder`)"),
    _command("encoder_path", Option(str, None, "Load the encoder from this folder instead of its default source."),
             "--encoder-path", unset="the encoder's own", doc="load the encoder from this folder"),
    _command("class_data", Option(str, None, "Folder of your own prior-preservation images (instead of the "
             "dataset's healthy class)."), "--class-data", path="any", unset="the dataset's healthy class"),
    _command("validation_images", Option(str, None, "Held-out abnormal images for validation (file or folder)."),
             "--validation-images", path="any"),
    _command("resume", Option(str, None, "'latest' or a checkpoint folder: continue an interrupted run with the "
             "same settings."), "--resume"),
    _command("resume_with_new_settings", Option(bool, False, "Allow --resume to go on with settings that differ "
             "from the checkpoint's (dva.json records both)."), "--resume-with-new-settings", flag_default=True),
    _command("device", Option(str, "auto", "cpu forces the CPU; GPUs and processes come from `accelerate launch`.",
             choices=DEVICES), "--device", flag_default=True),
)

REQUIRED = ("base_model", "data", "out", "schedule")  # the config's fields without a default
NOT_FIELDS = ("strategy", "schedule")  # table settings that are not plain fields (the strategy comes last)
SETTINGS: dict[str, Setting] = by_name((*COMMAND_SETTINGS, *FINETUNE_SETTINGS))
CLI_ONLY_FLAGS = {"class_prompts": "--class-prompt"}  # table settings whose flag is the command's own


def flag_for(key: str) -> str:
    """The command-line flag that sets a config field, for messages: ``learning_rate`` -> ``--learning-rate``;
    a strategy's own option is ``--finetune-option KEY``."""
    setting = SETTINGS.get(key)
    if setting is not None and setting.flag:
        return setting.flags[0]
    return CLI_ONLY_FLAGS.get(key, f"--finetune-option {key}")


def _annotation(setting: Setting) -> str:
    kind = setting.option.type.__name__
    return kind if setting.option.default is not None else f"{kind} | None"


def _fields() -> list[tuple[str, Any, Any]]:
    """``(name, annotation, default)`` of each field; a mutable default becomes a factory."""
    fields: list[tuple[str, Any, Any]] = [("base_model", "str"), ("data", "str"), ("out", "str"),
                                           ("schedule", "list[Phase]")]
    strategy = SETTINGS["strategy"].option.default
    for setting in (*COMMAND_SETTINGS, *FINETUNE_SETTINGS):
        if setting.name in REQUIRED or setting.name in NOT_FIELDS:
            continue
        default = setting.option.default
        if isinstance(default, (dict, list)):
            default = field(default_factory=lambda value=default: copy.deepcopy(value))
        fields.append((setting.name, _annotation(setting), default))
    return [*fields, ("strategy", "str", strategy), ("options", "dict[str, Any]", field(default_factory=dict))]


def _prompt_for(self: Any, label: str) -> str:
    """The training prompt of a class: its ``class_prompts`` entry, else ``prompt_template`` on its name."""
    return self.class_prompts.get(label) or self.prompt_template.format(label=label)


def _prior_prompt(self: Any) -> str:
    """The prompt of the prior-preservation images: ``class_prompt``, else the healthy class's prompt."""
    return self.class_prompt or self.prompt_for(self.healthy_class)


def _settings(self: Any) -> dict[str, Any]:
    """Every setting as JSON values (the schedule as text), the strategy's options among them: what dva.json
    and checkpoints record."""
    values = asdict(self)
    options = values.pop("options")
    values["schedule"] = format_schedule(self.schedule)
    return {**values, **options}


def _config_class() -> type:
    config = make_dataclass("FinetuneConfig", _fields(), namespace={
        "prompt_for": _prompt_for, "prior_prompt": _prior_prompt, "settings": _settings,
    })
    config.__module__ = __name__
    config.__doc__ = ("Everything a fine-tuning run depends on (recorded in dva.json and each checkpoint); fields: "
                      "dva.finetune.config.COMMAND_SETTINGS, dva.core.settings.FINETUNE_SETTINGS, strategy, options.")
    return config


FinetuneConfig = _config_class()

__all__ = ["COMMAND_SETTINGS", "FinetuneConfig", "Phase", "flag_for"]
