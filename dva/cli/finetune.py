"""``dva finetune``: train a base model on a labelled dataset, class by class, into a dva model folder."""

from __future__ import annotations

from typing import Any

import click

from dva.core.errors import ConfigError


CLI_TO_CONFIG = {"sample_prompts": "use_sample_prompts", "prior_prompt": "class_prompt"}


def _entry_settings(entry: str | None, registries: tuple[str, ...], catalogue: Any) -> dict[str, Any]:
    """Model, encoder and the ``finetune`` table of a registry entry, as FinetuneConfig fields."""
    if entry is None:
        return {}
    from dva.core.registry import load_entries, resolve

    recipe = resolve(load_entries(registries), catalogue, entry)
    if not recipe.finetune:
        raise ConfigError(f"Registry entry '{entry}' has no finetune table; use an entry such as finetune-thesis.")
    settings = {"base_model": recipe.model, "encoder": recipe.encoder, "encoder_path": recipe.encoder_options.get("path")}
    return {**{k: v for k, v in settings.items() if v is not None}, **recipe.finetune}


def _check(settings: dict[str, Any]) -> None:
    """Every setting against its typed option, named by its flag."""
    from dva.finetune.settings import FINETUNE_OPTIONS

    flags = {config: cli for cli, config in CLI_TO_CONFIG.items()}
    for key, value in settings.items():
        if key in FINETUNE_OPTIONS and value is not None and key != "class_prompts":
            FINETUNE_OPTIONS[key].check(value, "--" + flags.get(key, key).replace("_", "-"))


def _class_prompts(pairs: tuple[str, ...]) -> dict[str, str]:
    prompts = {}
    for pair in pairs:
        label, sep, prompt = pair.partition("=")
        if not sep or not label.strip() or not prompt.strip():
            raise ConfigError(f"--class-prompt {pair!r}: expected CLASS=PROMPT, e.g. --class-prompt \"Normal=Normal chest scan\".")
        prompts[label.strip()] = prompt.strip()
    return prompts


@click.command()
@click.option("--entry", help="Registry entry with a `finetune` table (e.g. finetune-thesis); flags override it.")
@click.option("--registry", "registries", multiple=True, type=click.Path(dir_okay=False), help="Extra registry file.")
@click.option("--model", "base_model", help="Base Stable Diffusion folder or hub id (or a dva model folder).")
@click.option("--data", required=True, type=click.Path(), help="Labelled dataset (COVID-19 Radiography layout, class folders or CSV).")
@click.option("--layout", default="auto", show_default=True, help="Dataset layout; see `dva plugins`.")
@click.option("--schedule", help='Classes in order with their steps, e.g. "Normal:1200,Lung Opacity:500".')
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The dva model folder to write.")
@click.option("--strategy", default="dreambooth", show_default=True, help="Fine-tuning strategy.")
@click.option("--encoder", help="Text encoder (default: the base model's own).")
@click.option("--encoder-path", help="Load the encoder from this folder instead of its default source.")
@click.option("--prompt-template", default="{label}", show_default=True, help="Prompt of a class, {label} is its name.")
@click.option("--class-prompt", "class_prompt_pairs", multiple=True, metavar="CLASS=PROMPT", help="A class's own prompt.")
@click.option("--sample-prompts/--no-sample-prompts", default=False, help="Use per-image prompts of the dataset (phantoms).")
@click.option("--healthy-class", default="Normal", show_default=True, help="Class whose prompt `dva run` uses by default.")
@click.option("--prompt-dropout", type=float, default=0.0, show_default=True, help="Chance of an empty prompt (keeps guidance meaningful).")
@click.option("--snr-gamma", type=float, default=0.0, show_default=True,
              help="Min-SNR-gamma loss weighting (Hang et al. 2023; 5 is usual, 0 turns it off).")
@click.option("--lesion-weight", type=float, default=0.0, show_default=True,
              help="Extra loss weight inside the dataset's lesion masks: a lesion pixel counts 1 + W times.")
@click.option("--train-text-encoder/--freeze-text-encoder", default=True, show_default=True)
@click.option("--prior-weight", type=float, default=1.0, show_default=True, help="Prior-preservation loss weight (0: off).")
@click.option("--prior-prompt", default="chest x ray", show_default=True, help="Prompt of the prior-preservation class images.")
@click.option("--class-data", type=click.Path(), help="Folder of class images (else generated once by the base model).")
@click.option("--class-images", type=int, default=100, show_default=True, help="How many class images to generate.")
@click.option("--placeholder-template", default="<{label}>", show_default=True,
              help="textual-inversion: the new token of a class ({label} is its name).")
@click.option("--initializer-token", default="chest", show_default=True,
              help="textual-inversion: the existing single token new embeddings start from.")
@click.option("--lora-rank", type=int, default=4, show_default=True, help="lora: adapter rank.")
@click.option("--lora-alpha", type=float, default=4.0, show_default=True, help="lora: adapter scale numerator.")
@click.option("--lora-text-encoder", is_flag=True, help="lora: adapters on the text encoder too.")
@click.option("--learning-rate", type=float, default=5e-5, show_default=True)
@click.option("--batch-size", type=int, default=2, show_default=True)
@click.option("--gradient-accumulation", type=int, default=1, show_default=True)
@click.option("--mixed-precision", type=click.Choice(["no", "bf16", "fp16"]), default="no", show_default=True)
@click.option("--gradient-checkpointing", is_flag=True)
@click.option("--use-8bit-adam", is_flag=True, help="bitsandbytes' 8-bit AdamW.")
@click.option("--cache-latents", is_flag=True, help="Encode the dataset with the VAE once instead of every step.")
@click.option("--validation-every", type=int, default=0, show_default=True,
              help="Every N steps, counterfactuals of held-out images with the current weights (0: never).")
@click.option("--validation-images", type=click.Path(), help="Held-out abnormal images for validation (file or folder).")
@click.option("--validation-count", type=int, default=4, show_default=True, help="How many validation images.")
@click.option("--checkpoint-every", type=int, default=500, show_default=True)
@click.option("--keep-checkpoints", type=int, default=2, show_default=True)
@click.option("--resume", help="'latest' or a checkpoint folder: continue an interrupted run.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu"]), default="auto", show_default=True,
              help="cpu forces the CPU; GPUs and processes come from `accelerate launch`.")
@click.pass_context
def finetune(ctx: click.Context, entry: str | None, registries: tuple[str, ...], class_prompt_pairs: tuple[str, ...],
             **options: Any) -> int:
    """Fine-tune a base model on labelled scans (DreamBooth, textual inversion or LoRA; multi-class schedules)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from dva.core.plugins import get_catalogue
    from dva.finetune.dreambooth import FinetuneConfig
    from dva.finetune.schedule import parse_schedule

    catalogue = get_catalogue()
    settings = _entry_settings(entry, registries, catalogue)
    for name, value in options.items():
        key = CLI_TO_CONFIG.get(name, name)
        given = ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
        if given or key not in settings:
            settings[key] = value
    settings["class_prompts"] = {**settings.get("class_prompts", {}), **_class_prompts(class_prompt_pairs)}
    for key in ("base_model", "schedule"):
        if not settings.get(key):
            flag = "--model" if key == "base_model" else "--schedule"
            raise ConfigError(f"{flag} is missing; pass it, or an --entry whose recipe sets it.")
    _check(settings)
    strategy = settings.pop("strategy")
    trainer = catalogue.get("finetuner", strategy).resolve()
    config = FinetuneConfig(**{**settings, "schedule": parse_schedule(settings["schedule"])})
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
        out = trainer(config, catalogue, on_step=on_step)
    finally:
        if task:
            progress.stop()
    console.print(f"model: {out}  ·  log: {out / 'train_log.csv'}  ·  use it: dva run --model {out} SCANS")
    return 0
