"""``dva finetune``: train a base model on a labelled dataset, class by class, into a dva model folder.

Its flags come from the settings schema: a registry entry's ``finetune`` table settings
(``dva.core.settings.FINETUNE_SETTINGS``), the command's own (``dva.finetune.config.COMMAND_SETTINGS``) and, as
flags of their own, the options of the built-in strategies (``dva.plugins.finetuners``); any strategy's options,
a plugin's too, are ``--finetune-option KEY=VALUE``. The entry (``--entry``) is merged with the flags given on the
command line by the registry's one merge path.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click

from dva.cli.options import click_options
from dva.core.errors import ConfigError
from dva.core.settings import FINETUNE_SETTINGS, RUN_SETTINGS, Setting, by_name, select
from dva.core.specs import Option
from dva.finetune.config import COMMAND_SETTINGS
from dva.plugins.finetuners import BUILTIN_FINETUNERS

TABLE = by_name(s for s in FINETUNE_SETTINGS if s.flag)  # finetune-table settings with a flag of their own
TABLE_KEYS = frozenset(s.name for s in FINETUNE_SETTINGS)  # the rest of a finetune table: the strategy's options
RECIPE_KEYS = {"base_model": "model", "encoder": "encoder", "encoder_path": "encoder_path"}  # flag -> recipe key


def _strategy_flags() -> tuple[Setting, ...]:
    """A flag for each option of each built-in strategy (``--lora-rank``), usable with that strategy only; a
    ``finetune`` table may hold the option too (checked against the strategy's spec, as a flag's value is)."""
    return tuple(
        Setting(key, replace(option, help=f"{spec.name}: {option.help}."), "--" + key.replace("_", "-"),
                in_recipe=False, doc=f"`{spec.name}`: {option.help}")
        for spec in BUILTIN_FINETUNERS for key, option in spec.options.items()
    )


STRATEGY_FLAGS = _strategy_flags()
STRATEGY_OF_FLAG = {key: spec.name for spec in BUILTIN_FINETUNERS for key in spec.options}
OWN_FLAGS: tuple[Setting, ...] = (
    Setting("entry", Option(str, None, "Registry entry with a `finetune` table (e.g. finetune-thesis); flags override "
            "it."), "--entry", in_entry=False, in_recipe=False, unset="none",
            doc="a registry entry with a `finetune` table (e.g. `finetune-thesis`); flags override it"),
    Setting("class_prompt_pairs", Option(str, None, "A class's own prompt."), "--class-prompt", multiple=True,
            metavar="CLASS=PROMPT", in_entry=False, in_recipe=False,
            doc="a class's own prompt, repeatable (the `finetune` table's `class_prompts`)"),
    Setting("finetune_options", Option(dict, None, "An option of the strategy (e.g. lora_rank=8), repeatable."),
            "--finetune-option", metavar="KEY=VALUE", example="lora_rank=8", in_entry=False, in_recipe=False,
            doc="an option of the strategy, repeatable (see [Strategies' options](#strategies-options))"),
)
FLAGS = (  # --help's order
    "entry", "registries", "base_model", "data", "layout", "schedule", "out", "strategy", "finetune_options",
    "encoder", "encoder_path", "prompt_template", "class_prompt_pairs", "use_sample_prompts", "healthy_class",
    "prompt_dropout", "snr_gamma", "lesion_weight", "train_text_encoder", "prior_weight", "class_prompt", "class_data",
    "generate_class_images", "class_images", *(s.name for s in STRATEGY_FLAGS), "learning_rate", "batch_size",
    "gradient_accumulation", "mixed_precision", "gradient_checkpointing", "use_8bit_adam", "cache_latents",
    "validation_every", "validation_images", "validation_count", "checkpoint_every", "keep_checkpoints", "resume",
    "resume_with_new_settings", "seed", "device",
)
FINETUNE_FLAGS: tuple[Setting, ...] = select(
    (by_name(RUN_SETTINGS)["registries"], *OWN_FLAGS, *COMMAND_SETTINGS, *TABLE.values(), *STRATEGY_FLAGS), FLAGS
)
# Table settings no flag sets (a registry entry's finetune table only); --class-prompt sets class_prompts.
TABLE_ONLY: tuple[Setting, ...] = tuple(s for s in FINETUNE_SETTINGS if not s.flag and s.name != "class_prompts")


def _class_prompts(pairs: tuple[str, ...]) -> dict[str, str]:
    prompts = {}
    for pair in pairs:
        label, sep, prompt = pair.partition("=")
        if not sep or not label.strip() or not prompt.strip():
            raise ConfigError(f"--class-prompt {pair!r}: expected CLASS=PROMPT, e.g. --class-prompt \"Normal=Normal chest scan\".")
        prompts[label.strip()] = prompt.strip()
    return prompts


def _recipe(values: dict[str, Any], given: set[str], catalogue: Any) -> Any:
    """The entry (if any) merged with the flags given: model, encoder and the ``finetune`` table, checked."""
    from dva.core.registry import Draft, load_entries

    entry = values["entry"]
    draft = Draft.of(load_entries(values["registries"]), entry)
    if entry is not None and not draft.finetune:
        raise ConfigError(f"Registry entry '{entry}' has no finetune table; use an entry such as finetune-thesis.")
    overrides: dict[str, Any] = {RECIPE_KEYS[name]: values[name] for name in RECIPE_KEYS if name in given}
    overrides["finetune"] = {name: values[name] for name in TABLE if name in given}
    return draft.apply(overrides).build(catalogue)


def _strategy_options(strategy: str, table: dict[str, Any], values: dict[str, Any], given: set[str],
                      catalogue: Any) -> dict[str, Any]:
    """The strategy's options: the entry's, then ``--finetune-option`` pairs, then their own flags; checked against
    the strategy's spec, each named by where it was set."""
    flags = {name: values[name] for name in STRATEGY_OF_FLAG if name in given}
    wrong = next((name for name in flags if STRATEGY_OF_FLAG[name] != strategy), None)
    if wrong:
        raise ConfigError(f"--{wrong.replace('_', '-')}: an option of strategy '{STRATEGY_OF_FLAG[wrong]}', not of "
                          f"'{strategy}'; pass --strategy {STRATEGY_OF_FLAG[wrong]}, or drop it.")
    options = {**table, **values["finetune_options"], **flags}
    where = {**{key: f"--finetune-option {key}" for key in values["finetune_options"]},
             **{key: f"--{key.replace('_', '-')}" for key in flags}}
    return catalogue.get("finetuner", strategy).check_options(options, f"--strategy {strategy}", where)


def make_config(values: dict[str, Any], given: set[str], catalogue: Any) -> Any:
    """The run's :class:`~dva.finetune.config.FinetuneConfig` from the command's values (``given``: those set on
    the command line, which override the entry's)."""
    from dva.finetune.config import FinetuneConfig
    from dva.finetune.schedule import parse_schedule

    recipe = _recipe(values, given, catalogue)
    table = dict(recipe.finetune or {})
    strategy = table.pop("strategy", TABLE["strategy"].option.default)
    settings = {key: table.pop(key) for key in list(table) if key in TABLE_KEYS}
    settings["class_prompts"] = {**settings.get("class_prompts", {}), **_class_prompts(values["class_prompt_pairs"])}
    for flag, value in (("--model", recipe.model), ("--schedule", settings.get("schedule"))):
        if not value:
            raise ConfigError(f"{flag} is missing; pass it, or an --entry whose recipe sets it.")
    command = {s.name: values[s.name] for s in COMMAND_SETTINGS if s.name not in RECIPE_KEYS}
    return FinetuneConfig(
        **command, **{**settings, "schedule": parse_schedule(settings["schedule"])}, base_model=recipe.model,
        encoder=recipe.encoder, encoder_path=recipe.encoder_options.get("path"), strategy=strategy,
        options=_strategy_options(strategy, table, values, given, catalogue),
    )


@click.command()
@click_options(FINETUNE_FLAGS)
@click.pass_context
def finetune(ctx: click.Context, **values: Any) -> int:
    """Fine-tune a base model on labelled scans (DreamBooth, textual inversion or LoRA; multi-class schedules)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from dva.core.plugins import get_catalogue
    from dva.finetune.trainer import train

    catalogue = get_catalogue()
    given = {name for name in values if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    config = make_config(values, given, catalogue)
    console = Console(stderr=True, soft_wrap=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
    )
    task: dict[str, Any] = {}

    def on_step(step: int, total: int, label: str, loss: float) -> None:
        if not task:
            progress.start()
            task["id"] = progress.add_task(label, total=total, completed=step - 1, loss="-")
        progress.update(task["id"], completed=step, description=label, loss=f"{loss:.4f}")

    try:
        out = train(config, catalogue, on_step=on_step)
    finally:
        if task:
            progress.stop()
    console.print(f"model: {out}  ·  log: {out / 'train_log.csv'}  ·  use it: dva run --model {out} SCANS")
    return 0
