"""``dva evaluate``: the thesis' tables from a run and its real dataset; ``dva evaluate fid A B`` for two folders."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from dva.core.errors import ConfigError


def parse_metric_options(pairs: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``METRIC.KEY=VALUE`` pairs (values read as TOML scalars) into {metric: {key: value}}."""
    from dva.cli.options import key_values

    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, dot, rest = pair.partition(".")
        if not dot or "=" not in rest:
            raise ConfigError(f"--metric-option {pair}: expected METRIC.KEY=VALUE, e.g. --metric-option fid.batch_size=100.")
        options.setdefault(name, {}).update(key_values((rest,), "--metric-option", "fid.batch_size=100"))
    return options


@contextlib.contextmanager
def rich_progress() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """A progress factory for :func:`dva.evaluate.evaluation.evaluate`: one rich bar per task."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)

    def start(description: str, total: int) -> Callable[[int], None]:
        task = progress.add_task(description, total=total)
        return lambda n: progress.advance(task, n)

    with progress:
        yield start


def _metric_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError("--metrics is empty; name at least one metric, e.g. --metrics fid,ssim.")
    return names


@click.group(invoke_without_command=True)
@click.option("--real", type=click.Path(), help="The real labelled dataset (COVID-19 Radiography, class folders, CSV).")
@click.option("--generated", multiple=True, type=click.Path(), help="A dva run folder made on that dataset; repeatable.")
@click.option("--metrics", help="Comma-separated metrics (default: fid, ssim, ms-ssim, and localisation where lesion masks exist).")
@click.option("--metric-option", "metric_option", multiple=True, metavar="METRIC.KEY=VALUE", help="A metric option, repeatable.")
@click.option("--fid-weights", type=click.Path(dir_okay=False), help="pytorch-fid Inception weights (state dict).")
@click.option("--layout", default="auto", show_default=True, help="Dataset layout (covid-radiography, class-folders, csv).")
@click.option("--healthy-class", help="The dataset's healthy class (default: the one named Normal, Healthy or No Finding).")
@click.option("--induced", help="For an induction run: the disease class it induced (default: the class its prompt names).")
@click.option("--within-lungs", is_flag=True, help="SSIM and MS-SSIM inside each image's lung mask.")
@click.option("--map", "map_name", type=click.Choice(["attribution", "calibrated"]), default="attribution",
              show_default=True, help="Which map to score: the raw one, or the calibrated one a calibrated model writes.")
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps (feature extraction).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Feature cache folder (default: $DVA_CACHE or ~/.cache/dva).")
@click.option("--out", type=click.Path(file_okay=False), help="Where the tables go (default: RUN/evaluation).")
@click.pass_context
def evaluate(ctx: click.Context, real: str | None, generated: tuple[str, ...], metrics: str | None,
             metric_option: tuple[str, ...], fid_weights: str | None, layout: str, healthy_class: str | None,
             induced: str | None, within_lungs: bool, map_name: str, device: str | None, cache_dir: str | None,
             out: str | None) -> int:
    """Tables 6.1, 6.2, 6.3 and 8.1 of the thesis, localisation of the maps, the null test and image-level
    scores (healthy against each abnormal class), for runs on a real dataset.

    Without --real, only SSIM and MS-SSIM between each input and its counterfactual. Writes tables.md,
    tables.csv, per_image.csv and evaluation.json into --out.
    """
    if ctx.invoked_subcommand is not None:
        return 0
    if not generated:
        raise ConfigError("dva evaluate needs --generated RUN (and --real DATASET for FID and localisation), "
                          "or: dva evaluate fid FOLDER_A FOLDER_B.")
    from rich.console import Console

    from dva.core.outputs import ensure_output_folder
    from dva.core.plugins import get_catalogue
    from dva.datasets.layouts import open_dataset
    from dva.evaluate.evaluation import Settings, evaluate as run_evaluation, write_evaluation
    from dva.evaluate.runs import read_run
    from dva.evaluate.tables import print_table

    catalogue = get_catalogue()
    options = parse_metric_options(metric_option)
    if fid_weights:
        options.setdefault("fid", {})["weights"] = fid_weights
    names = _metric_list(metrics)
    for name in names or ():
        catalogue.get("metric", name)
    settings = Settings(names, options, healthy_class, induced, within_lungs, device, cache_dir, map_name)
    runs = [read_run(folder) for folder in generated]
    dataset = open_dataset(real, layout, catalogue) if real else None
    target = Path(out) if out else Path(generated[0]) / "evaluation"
    ensure_output_folder(target, "--out" if out else "the evaluation folder")
    with rich_progress() as progress:
        result = run_evaluation(dataset, runs, settings, catalogue, progress)
    written = write_evaluation(target, result)
    console = Console(soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    for table in result.tables:
        print_table(console, table)
    console.print(f"Tables written to {target}/ ({', '.join(p.name for p in written)}).", highlight=False)
    return 0


@evaluate.command("fid")
@click.argument("first", type=click.Path())
@click.argument("second", type=click.Path())
@click.option("--fid-weights", type=click.Path(dir_okay=False), help="pytorch-fid Inception weights (state dict).")
@click.option("--batch-size", type=int, default=50, show_default=True, help="Images per Inception batch.")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader workers decoding images.")
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Feature cache folder.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the result as JSON here.")
def fid_command(first: str, second: str, fid_weights: str | None, batch_size: int, workers: int, device: str | None,
                cache_dir: str | None, json_path: str | None) -> int:
    """FID between two folders of images (read recursively), as pytorch-fid computes it."""
    import json

    from rich.console import Console

    from dva.core.io import atomic_write_text, collect_inputs
    from dva.metrics.measures import FidMeasure

    sets = []
    for folder in (first, second):
        files, missing = collect_inputs([folder])
        if missing:
            raise ConfigError(missing[0][1])
        sets.append(files)
    if min(len(files) for files in sets) < 2:
        raise ConfigError(
            f"FID needs at least 2 images per set (a covariance of one image is undefined); got "
            f"{len(sets[0])} in {first} and {len(sets[1])} in {second}."
        )
    measure = FidMeasure(weights=fid_weights, batch_size=batch_size, num_workers=workers, device=device,
                         cache_dir=cache_dir)
    with rich_progress() as progress:
        value = measure.distance(sets[0], sets[1], progress=progress("Inception features", sum(map(len, sets))))
    result = {"fid": value, "first": {"folder": first, "images": len(sets[0])},
              "second": {"folder": second, "images": len(sets[1])}}
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")
    Console(soft_wrap=True).print(f"FID {value:.4f}  ({first}: {len(sets[0])} images, {second}: {len(sets[1])} images)",
                                  highlight=False)
    return 0
