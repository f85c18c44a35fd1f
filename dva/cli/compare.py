"""``dva compare``: run every combination of encoders, priors, schedulers, strengths and guidance scales on the
same inputs, evaluate each, and write a table, a contact sheet and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dva.cli.options import click_options, key_values, merged_flags
from dva.core.errors import ConfigError
from dva.core.settings import RUN_SETTINGS, Setting, command_flag, select
from dva.core.specs import Option


def _names(text: str | None, flag: str) -> list[str]:
    values = [v.strip() for v in (text or "").split(",") if v.strip()]
    if text is not None and not values:
        raise ConfigError(f"{flag} is empty; give comma-separated names, e.g. {flag} radbert,clip.")
    _once(values, flag)
    return values


def _once(values: list[Any], flag: str) -> None:
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise ConfigError(f"{flag} names {twice} twice; give each value once.")


def _encoder_axis(text: str | None) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """``--encoders radbert=/models/RadBERT,biobert=/models/BioBERT,clip``: the names, and each one's own path."""
    names, paths = [], {}
    for item in _names(text, "--encoders"):
        name, sep, path = (part.strip() for part in item.partition("="))
        if sep and not (name and path):
            raise ConfigError(f"--encoders {item}: expected NAME or NAME=PATH, e.g. --encoders radbert=/models/RadBERT,clip.")
        names.append(name)
        if path:
            paths[name] = {"path": path}
    _once(names, "--encoders")
    return names, paths


def _named_options(pairs: tuple[str, ...], flag: str, example: str) -> dict[str, dict[str, Any]]:
    """``NAME.KEY=VALUE`` pairs (values read as TOML scalars, else text) into {name: {key: value}}."""
    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, dot, rest = pair.partition(".")
        if not dot or not name or "=" not in rest:
            raise ConfigError(f"{flag} {pair}: expected NAME.KEY=VALUE, e.g. {flag} {example}.")
        options.setdefault(name.strip(), {}).update(key_values((rest,), flag, example))
    return options


def component_options(encoders: str | None, encoder_option: tuple[str, ...], prior_option: tuple[str, ...],
                      strengths: list[float]) -> tuple[list[str], dict[str, dict[str, dict[str, Any]]]]:
    """The encoder names to compare, and each encoder's and prior's own options from the flags."""
    names, paths = _encoder_axis(encoders)
    encoder_options = _named_options(encoder_option, "--encoder-option", "radbert.max_length=128")
    for name, given in paths.items():
        other = encoder_options.get(name, {}).get("path")
        if other is not None and other != given["path"]:
            raise ConfigError(f"The encoder '{name}' has two paths ({given['path']} in --encoders, {other} in "
                              "--encoder-option); give one.")
        encoder_options.setdefault(name, {}).update(given)
    prior_options = _named_options(prior_option, "--prior-option", "controlnet-canny.low_threshold=50")
    if strengths and any("strength" in options for options in prior_options.values()):
        raise ConfigError("--prior-option NAME.strength: with --strength, strengths are an axis of the comparison; "
                          "give them with --strength only.")
    return names, {"encoder": encoder_options, "prior": prior_options}


def _numbers(text: str | None, flag: str) -> list[float]:
    try:
        return [float(v) for v in _names(text, flag)]
    except ValueError:
        raise ConfigError(f"{flag} {text}: expected comma-separated numbers, e.g. {flag} 0.55,0.85.") from None


def _axis(name: str, flag: str, help: str, **kwargs: Any) -> Setting:
    return command_flag(name, Option(str, None, help), flag, **kwargs)


# dva compare's own flags: the axes of the grid, each component's own options, and the evaluation.
COMPARE_SETTINGS = (
    _axis("encoders", "--encoders", "Comma-separated text encoders, each NAME or NAME=PATH (its own weights), e.g. "
          "radbert=/models/RadBERT,biobert=/models/BioBERT (default: the entry's or model's own)."),
    _axis("encoder_option", "--encoder-option", "An option of one encoder (path, max_length), repeatable, e.g. "
          "radbert.max_length=128.", multiple=True, metavar="NAME.KEY=VALUE"),
    _axis("priors", "--priors", "Comma-separated image priors, e.g. sdedit,controlnet-canny."),
    _axis("prior_option", "--prior-option", "An option of one prior, repeatable, e.g. "
          "controlnet-canny.controlnet=/models/sd-controlnet-canny.", multiple=True, metavar="NAME.KEY=VALUE"),
    _axis("schedulers", "--schedulers", "Comma-separated schedulers, e.g. pndm,ddim,dpm-solver++."),
    _axis("strengths", "--strength", "Comma-separated SDEdit strengths, e.g. 0.55,0.85."),
    _axis("guidance_scales", "--guidance-scale", "Comma-separated guidance scales, e.g. 4,7.5."),
    _axis("real", "--real", "The labelled dataset the inputs come from: adds FID and localisation.", path="any"),
    _axis("metrics", "--metrics", "Comma-separated metrics (default: what the data allow)."),
    _axis("fid_weights", "--fid-weights", "pytorch-fid Inception weights (state dict).", path="file"),
    _axis("healthy_class", "--healthy-class", "The dataset's healthy class (default: Normal, Healthy or No Finding)."),
    _axis("rank_by", "--rank-by", "Order the table by this measure, best first, and mark the best row: ssim, "
          "ms_ssim, fid, auroc, auprc, dice_otsu, best_dice, null_ratio, image_auroc (fid and null_ratio: lower is "
          "better; all but ssim and ms_ssim need --real).", metavar="MEASURE"),
    command_flag("out", Option(str, "dva-compare", "Output folder."), "--out", path="folder", flag_default=True),
)
# dva compare's flags in --help's order: its own, and those of `dva run` that every combination shares (with
# dva compare's own --help where it says more).
COMPARE_FLAGS = select((*RUN_SETTINGS, *COMPARE_SETTINGS), (
    "encoders", "encoder_option", "priors", "prior_option", "schedulers", "strengths", "guidance_scales", "entry",
    "registries", "model", "steps", "seed", "batch_size", "device", "dtype", "region", "calibration", "mask", "real",
    "metrics", "fid_weights",
    "healthy_class", "rank_by", "strict", "out",
), help={
    "entry": "Registry entry every combination starts from.",
    "steps": "Scheduler steps.",
    "seed": "Seed of each image's own generator (the same in every combination).",
    "batch_size": "Images per batch.",
    "strict": "Refuse, before anything runs, any combination whose encoder the model was not trained with.",
    "region": "Induce only inside this region in every combination: a lung zone ('left upper', cut from --mask) or "
              "a mask image at the model's size (blended latent diffusion).",
    "calibration": "Each combination uses the model folder's calibration (dva calibrate) when it was made with its "
                   "recipe (auto), fails without one (require), or never uses it (off).",
})


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click_options(COMPARE_FLAGS)
def compare(inputs: tuple[str, ...], encoders: str | None, encoder_option: tuple[str, ...], priors: str | None,
            prior_option: tuple[str, ...], schedulers: str | None, strengths: str | None, guidance_scales: str | None,
            entry: str, registries: tuple[str, ...], mask: str | None, real: str | None, metrics: str | None,
            fid_weights: str | None, healthy_class: str | None, rank_by: str | None, strict: bool, out: str,
            **common: Any) -> int:
    """Run and evaluate every combination on INPUTS; write comparison.{csv,md,json}, a contact sheet and plots.

    Rerun into the same --out, the completed runs are reused and the tables come out the same."""
    import json
    import math

    from rich.console import Console

    from dva.cli.evaluate import _metric_list
    from dva.core.io import atomic_write_text
    from dva.core.manifest import versions
    from dva.core.modality import walk_for_any_modality
    from dva.core.plugins import get_catalogue
    from dva.datasets.layouts import open_dataset
    from dva.evaluate.compare import (check_masks_given, check_rank_by, comparison_table, grid, image_score_method,
                                      ranks, resolve_all, run_all)
    from dva.evaluate.evaluation import Settings
    from dva.evaluate.figures import contact_sheet_html, contact_sheet_png, measures_html, plots
    from dva.evaluate.tables import print_table, to_csv, to_markdown

    console = Console(stderr=True, soft_wrap=True)
    check_rank_by(rank_by, real)
    catalogue = get_catalogue()
    strength_values = _numbers(strengths, "--strength")
    encoder_names, options = component_options(encoders, encoder_option, prior_option, strength_values)
    combinations = grid(encoder_names, _names(priors, "--priors"), _names(schedulers, "--schedulers"),
                        strength_values, _numbers(guidance_scales, "--guidance-scale"))
    recipes = resolve_all(combinations, entry, registries, catalogue, merged_flags(RUN_SETTINGS, common), options)
    check_masks_given(recipes, catalogue, mask)
    if strict:
        from dva.core.runtime import require_trained_encoder

        for recipe in recipes:
            require_trained_encoder(recipe, catalogue)
    names = _metric_list(metrics)
    for name in names or ():
        catalogue.get("metric", name)
    options = {"fid": {"weights": fid_weights}} if fid_weights else {}
    dataset = open_dataset(real, "auto", catalogue) if real else None
    settings = Settings(names, options, healthy_class, None, False, common.get("device"))
    target = Path(out)

    def announce(index: int, combination: Any) -> None:
        console.print(f"[bold]{index + 1}/{len(combinations)}[/] {combination.label}", highlight=False)

    warned: set[str] = set()

    def loaded(index: int, runtime: Any) -> None:
        from rich.markup import escape

        warning = runtime.encoder_choice.warning if runtime.encoder_choice is not None else None
        if warning and warning not in warned:
            warned.add(warning)
            console.print(f"[bold red]WARNING:[/] [red]{escape(warning)}[/]", highlight=False)

    walked = walk_for_any_modality(list(inputs), catalogue, exclude=[target])  # once, for every combination
    outcomes = run_all(combinations, recipes, walked, target, catalogue, dataset, settings, mask=mask,
                       on_combination=announce, on_loaded=loaded)
    table = comparison_table(outcomes, rank_by)
    rank_of = ranks(outcomes, rank_by) if rank_by else {}
    atomic_write_text(target / "comparison.csv", to_csv([table]))
    atomic_write_text(target / "comparison.md", "# dva compare\n\n" + to_markdown([table]))
    document = {"versions": versions(), "entry": entry, "inputs": list(inputs), "real": real,
                **({"rank_by": rank_by} if rank_by else {}), "table": table.as_dict(),
                "combinations": [{**vars(o.combination), "run": str(o.run), "model": o.model, "encoder_used": o.encoder,
                                  "error": o.error, "images": o.images,
                                  "seconds_per_image": None if math.isnan(o.seconds_per_image) else o.seconds_per_image,
                                  "summary": o.summary,
                                  **({"image_score": image_score_method(o.evaluation)} if "image_auroc" in o.summary
                                     else {}),
                                  **({"rank": rank_of[i]} if rank_by else {})}
                                 for i, o in enumerate(outcomes)]}
    atomic_write_text(target / "comparison.json", json.dumps(document, indent=1, default=str) + "\n")
    contact_sheet_png(outcomes, target / "contact_sheet.png")
    contact_sheet_html(outcomes, target / "contact_sheet.html", measures_html(outcomes))
    figures = plots(outcomes, target / "plots")
    table.label_columns = table.columns.index("images")  # rank and the compared values name a combination
    print_table(Console(), table)
    console.print(f"Written to {target}/: comparison.csv, .md, .json, contact_sheet.png, contact_sheet.html"
                  + "".join(f", plots/{p.name}" for p in figures), highlight=False)
    failed = sum(o.error is not None for o in outcomes)
    return 1 if failed else 0
