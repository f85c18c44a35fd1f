"""``dva evaluate``: the thesis' tables from a run and its real dataset, and maps scored against lesions.

Tables (docs/method.md): 6.1, each abnormal class against its generated healthy set and against the real
healthy set, with their relative absolute difference; 6.2, the real healthy set against each class's
generated healthy set; 6.3, SSIM and MS-SSIM between each input and its counterfactual; 8.1, for an
induction run (healthy inputs, a disease prompt), the real disease set and the real healthy set
against the generated one. Beyond the thesis: localisation of the maps against ground-truth lesion
masks, and the null test (map energy in the lungs of inputs that were healthy already).

Every measure comes from a metric plugin; a set measure (FID, ...) fills the FID tables, a pair
measure (SSIM, ...) table 6.3, a map measure the localisation table. Set sizes are checked before
anything is computed, so a bad request fails in seconds with nothing written.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dva.core.errors import ConfigError, MetricUnavailable, unknown_name
from dva.datasets import LabelledDataset
from dva.evaluate.runs import INPUTS_LABEL, Pair, RunOutputs, pair_with_dataset, pair_with_inputs, read_output_gray
from dva.evaluate.tables import Table

DEFAULT_METRICS = ("fid", "ssim", "ms-ssim", "localisation")
HEALTHY_NAMES = ("normal", "healthy", "no finding")
PAIR_CHUNK = 64  # pairs scored together: batches the GPU, keeps memory flat in the set size

# progress(description, total) -> advance(n): the CLI shows rich bars; the default shows nothing.
Progress = Callable[[str, int], Callable[[int], None]]


def _quiet(description: str, total: int) -> Callable[[int], None]:
    return lambda n: None


@dataclass
class Settings:
    """What to measure and how; ``metrics`` None means the defaults that the data allow."""

    metrics: list[str] | None = None
    metric_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    healthy_class: str | None = None
    induced: str | None = None
    within_lungs: bool = False
    device: str | None = None
    cache_dir: str | None = None
    map: str = "attribution"  # which map to score: the raw "attribution", or a calibrated model's "calibrated"


@dataclass
class Evaluation:
    tables: list[Table]
    per_image: list[dict[str, Any]]
    notes: list[str]
    summary: dict[str, Any]


@dataclass(frozen=True)
class Measure:
    name: str
    scope: str
    implementation: Any


# -- classes, mode and measures ------------------------------------------------------------------


def healthy_class(dataset: LabelledDataset, given: str | None) -> str:
    """The dataset's healthy class: ``--healthy-class``, else the one named Normal/Healthy/No Finding."""
    classes = dataset.classes()
    if given is not None:
        if given not in classes:
            raise unknown_name("class", given, classes)
        return given
    found = [label for label in classes if label.strip().lower() in HEALTHY_NAMES]
    if len(found) != 1:
        raise ConfigError(
            f"Cannot tell which class of {dataset.root} is healthy (classes: {', '.join(classes)}); "
            "name it with --healthy-class."
        )
    return found[0]


def induced_class(pairs: list[Pair], healthy: str, dataset: LabelledDataset, given: str | None) -> str | None:
    """The disease an induction run added: ``--induced``, or the class its prompt names when every input
    was healthy and the prompt is not the healthy one; None for a counterfactual run."""
    classes = dataset.classes()
    if given is not None:
        if given not in classes:
            raise unknown_name("class", given, classes)
        return given
    if any(pair.sample.label != healthy for pair in pairs):
        return None
    prompts = {pair.image.prompt.lower() for pair in pairs}
    named = [label for label in classes if label != healthy and all(label.lower() in p for p in prompts)]
    if len(named) == 1:
        return named[0]
    if all(healthy.lower() in p or "normal" in p or "healthy" in p for p in prompts):
        return None
    raise ConfigError(
        f"Every input is {healthy} and the prompt ({', '.join(sorted(prompts))}) names no single class of the "
        f"dataset; say which disease the run induced with --induced (classes: {', '.join(classes)})."
    )


def _build(spec: Any, options: dict[str, Any], runtime: dict[str, Any]) -> Any:
    """The measure, given the run-time settings (device, cache folder) its constructor accepts."""
    implementation = spec.resolve()
    accepted = inspect.signature(implementation).parameters
    extra = {key: value for key, value in runtime.items() if key in accepted and value is not None}
    return implementation(**spec.check_options(options, f"--metric-option {spec.name}"), **extra)


def build_measures(names: Iterable[str], settings: Settings, catalogue: Any, notes: list[str]) -> list[Measure]:
    """The requested measures; one whose weights are absent is left out with a note."""
    from dva.core.runtime import pick_device

    device = None if settings.device in (None, "auto") else str(pick_device(settings.device))
    runtime = {"device": device, "cache_dir": settings.cache_dir}
    measures = []
    for name in names:
        spec = catalogue.get("metric", name)
        try:
            measures.append(Measure(name, spec.scope, _build(spec, settings.metric_options.get(name, {}), runtime)))
        except MetricUnavailable as reason:
            notes.append(f"{name} skipped: {reason}")
    return measures


def _metric_names(settings: Settings, pairs: list[Pair], notes: list[str]) -> list[str]:
    has_lesions = any(pair.sample.lesion is not None for pair in pairs)
    if settings.metrics is None:
        if not has_lesions:
            notes.append("localisation skipped: the dataset has no ground-truth lesion masks for these images.")
        return [name for name in DEFAULT_METRICS if name != "localisation" or has_lesions]
    unknown_options = sorted(set(settings.metric_options) - set(settings.metrics))
    if unknown_options:
        raise ConfigError(f"--metric-option {unknown_options[0]}: that metric is not in --metrics.")
    return list(dict.fromkeys(settings.metrics))


# -- the set tables (6.1, 6.2, 8.1) --------------------------------------------------------------


@dataclass(frozen=True)
class ImageSet:
    label: str
    paths: tuple[Path, ...]

    @property
    def title(self) -> str:
        return f"{self.label} ({len(self.paths)})"


def _comparisons(pairs: list[Pair], dataset: LabelledDataset, healthy: str, induced: str | None,
                 ) -> dict[str, list[tuple[ImageSet, ImageSet]]]:
    """The set pairs each FID table compares, keyed by table."""
    real_healthy = ImageSet("Real Healthy", tuple(s.path for s in dataset.by_class(healthy)))
    if induced is not None:
        generated = ImageSet(f"Generated {induced}", tuple(p.image.counterfactual for p in pairs))
        real = ImageSet(f"Real {induced}", tuple(s.path for s in dataset.by_class(induced)))
        return {"8.1": [(real, generated), (real_healthy, generated)]}
    tables: dict[str, list[tuple[ImageSet, ImageSet]]] = {"6.1": [], "6.2": []}
    for label in _abnormal_classes(pairs, dataset, healthy):
        generated = ImageSet(
            f"Generated Healthy from {label}", tuple(p.image.counterfactual for p in pairs if p.sample.label == label)
        )
        real = ImageSet(label, tuple(s.path for s in dataset.by_class(label)))
        tables["6.1"] += [(real, generated), (real, real_healthy)]
        tables["6.2"].append((real_healthy, generated))
    return tables


def _abnormal_classes(pairs: list[Pair], dataset: LabelledDataset, healthy: str) -> list[str]:
    present = {pair.sample.label for pair in pairs}
    return [label for label in dataset.classes() if label in present and label != healthy]


def check_set_sizes(comparisons: dict[str, list[tuple[ImageSet, ImageSet]]]) -> None:
    for pairs in comparisons.values():
        for image_set in (s for pair in pairs for s in pair):
            if len(image_set.paths) < 2:
                raise ConfigError(
                    f"FID needs at least 2 images per set (a covariance of one image is undefined), but "
                    f"'{image_set.label}' has {len(image_set.paths)}; evaluate more images or leave fid out of --metrics."
                )


SET_TITLES = {
    "6.1": "Table 6.1: {metric}, each class against its generated healthy set and against real healthy",
    "6.2": "Table 6.2: {metric} as image quality, real healthy against generated healthy",
    "8.1": "Table 8.1: induction, {metric} of the real disease set and real healthy against the generated set",
}


def set_tables(measure: Measure, comparisons: dict[str, list[tuple[ImageSet, ImageSet]]],
               progress: Progress) -> list[Table]:
    accepts_progress = "progress" in inspect.signature(measure.implementation.distance).parameters
    column = measure.name.upper() if measure.name == "fid" else measure.name
    tables = []
    for key, pairs in comparisons.items():
        if not pairs:
            continue
        table = Table(key if measure.name == "fid" else f"{key}-{measure.name}",
                      SET_TITLES[key].format(metric=column), ["Set 1", "Set 2", column])
        for index, (first, second) in enumerate(pairs):
            kwargs = {}
            if accepts_progress:
                kwargs["progress"] = progress(f"{measure.name}: {first.label} vs {second.label}",
                                              len(first.paths) + len(second.paths))
            value = float(measure.implementation.distance(list(first.paths), list(second.paths), **kwargs))
            table.rows.append([first.title, second.title, value])
            if key == "6.1" and index % 2 == 1:
                table.rows.append(["", "relative absolute difference", abs(value - table.rows[-2][2])])
        tables.append(table)
    return tables


# -- pair and map measures (6.3, localisation, null test) ----------------------------------------


def _lung_mask_at_model_size(pair: Pair, size: int) -> np.ndarray | None:
    from dva.core.io import read_mask, to_model_input

    if pair.sample.mask is None:
        return None
    mask = read_mask(pair.sample.mask, pair.image.original_size).astype(np.float32)
    return to_model_input(mask, size, nearest=True)[0] > 0.5


def score_pairs(measures: list[Measure], pairs: list[Pair], within_lungs: bool, rows: dict[Path, dict],
                progress: Progress) -> None:
    """Each pair measure on every input (as the model saw it) and its counterfactual, into ``rows``."""
    advance = progress("similarity: input vs counterfactual", len(pairs))
    for start in range(0, len(pairs), PAIR_CHUNK):
        chunk = pairs[start : start + PAIR_CHUNK]
        images = []
        for pair in chunk:
            image = read_output_gray(pair.image.model_input)
            mask = _lung_mask_at_model_size(pair, image.shape[0]) if within_lungs else None
            images.append((image, read_output_gray(pair.image.model_counterfactual), mask))
        for measure in measures:
            implementation = measure.implementation
            scores = (implementation.score_batch(images) if hasattr(implementation, "score_batch")
                      else [implementation.score(*item) for item in images])
            for pair, values in zip(chunk, scores):
                rows[pair.image.folder].update(values)
        advance(len(chunk))


def score_maps(measures: list[Measure], pairs: list[Pair], rows: dict[Path, dict], progress: Progress,
               map_name: str = "attribution") -> None:
    """Each map measure on the maps of inputs with a lesion mask, the map energy in the lungs of all, and the
    map-derived image-level scores of all."""
    from dva.core.io import read_mask
    from dva.evaluate.image_level import map_scores
    from dva.metrics.localisation import binary_mask, energy

    advance = progress("localisation: maps vs lesions", len(pairs))
    for pair in pairs:
        attribution = pair.image.attribution(map_name)
        size = pair.image.original_size
        region = read_mask(pair.sample.mask, size) if pair.sample.mask is not None else None
        row = rows[pair.image.folder]
        row["lung_energy"] = energy(attribution, region)
        row.update(map_scores(attribution, None if region is None else binary_mask(region)))
        if pair.sample.lesion is not None:
            lesion = read_mask(pair.sample.lesion, size)
            for measure in measures:
                row.update(measure.implementation.score(attribution, lesion, region))
        advance(1)


def _mean(values: list[Any]) -> float:
    numbers = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(numbers)) if numbers else float("nan")


def class_means_table(key: str, title: str, columns: dict[str, str], pairs: list[Pair], rows: dict[Path, dict],
                      classes: list[str]) -> Table:
    """Per class: how many images have the columns' values, and each column's mean."""
    table = Table(key, title, ["class", "images", *columns.values()])
    for label in classes:
        scored = [rows[p.image.folder] for p in pairs if p.sample.label == label]
        scored = [row for row in scored if all(name in row for name in columns)]
        if scored:
            table.rows.append([label, len(scored), *(_mean([row[name] for row in scored]) for name in columns)])
    return table


def null_test_table(pairs: list[Pair], rows: dict[Path, dict], classes: list[str], healthy: str) -> Table:
    table = Table("null-test", "Null test: attribution energy (mean |map|) in the lungs, per input class",
                  ["class", "images", "energy", "relative to healthy"])
    ordered = [healthy, *(label for label in classes if label != healthy)]
    energies = {label: _mean([rows[p.image.folder]["lung_energy"] for p in pairs if p.sample.label == label])
                for label in ordered if any(p.sample.label == label for p in pairs)}
    reference = energies.get(healthy, float("nan"))
    for label, value in energies.items():
        count = sum(p.sample.label == label for p in pairs)
        table.rows.append([label, count, value, value / reference if reference > 0 else float("nan")])
    if healthy not in energies:
        table.notes.append(f"No {healthy} inputs in the run: run dva on healthy images too for the null test.")
    else:
        table.notes.append(f"A good map is quiet on {healthy} inputs: their energy should be far below the others'.")
    return table


# -- the whole evaluation -------------------------------------------------------------------------


def _without_dataset(names: list[str], specs: dict[str, Any], explicit: bool, notes: list[str]) -> list[str]:
    """Only pair measures can run without a real dataset: refuse the others if asked for, else note them."""
    needing = [name for name in names if specs[name].scope != "pairs"]
    if needing and explicit:
        raise ConfigError(f"{needing[0]} compares with real images; pass the real dataset with --real.")
    if needing:
        notes.append(f"{', '.join(needing)} skipped: they need the real dataset (--real).")
    return [name for name in names if name not in needing]


def evaluate(dataset: LabelledDataset | None, runs: list[RunOutputs], settings: Settings, catalogue: Any,
             progress: Progress = _quiet) -> Evaluation:
    """Pair the runs' images with the dataset, check every set, then compute the tables.

    Without a dataset only the pair measures (input against counterfactual) run, on all images as one class.
    """
    notes: list[str] = []
    images = [image for run in runs for image in run.images]
    if dataset is None:
        pairs = pair_with_inputs(images)
        healthy = induced = None
        names = _metric_names(Settings(settings.metrics or ["ssim", "ms-ssim"]), pairs, notes)
        specs = {name: catalogue.get("metric", name) for name in names}
        names = _without_dataset(names, specs, settings.metrics is not None, notes)
        specs = {name: specs[name] for name in names}
        classes = [INPUTS_LABEL]
        comparisons: dict[str, list[tuple[ImageSet, ImageSet]]] = {}
    else:
        pairs, strangers = pair_with_dataset(images, dataset)
        if strangers:
            notes.append(f"{len(strangers)} generated images come from no sample of the dataset and were left "
                         f"out (e.g. {strangers[0].input}).")
        healthy = healthy_class(dataset, settings.healthy_class)
        induced = induced_class(pairs, healthy, dataset, settings.induced)
        names = _metric_names(settings, pairs, notes)
        specs = {name: catalogue.get("metric", name) for name in names}
        comparisons = _comparisons(pairs, dataset, healthy, induced)
        classes = [label for label in dataset.classes() if any(p.sample.label == label for p in pairs)]
    if any(spec.scope == "sets" for spec in specs.values()):
        check_set_sizes(comparisons)
    if any(spec.scope == "maps" for spec in specs.values()) and not any(p.sample.lesion for p in pairs):
        raise ConfigError(
            f"localisation needs ground-truth lesion masks, and no evaluated image of {dataset.root} has one; "
            "add <Class>/lesions/ masks (dva phantoms writes them) or leave localisation out of --metrics."
        )
    measures = build_measures(names, settings, catalogue, notes)
    rows = {p.image.folder: {"input": str(p.sample.path), "class": p.sample.label, "output": str(p.image.folder),
                             **({} if p.image.score is None else {"score": p.image.score})}
            for p in pairs}
    tables: list[Table] = []
    for measure in (m for m in measures if m.scope == "sets"):
        tables += set_tables(measure, comparisons, progress)
    pair_measures = [m for m in measures if m.scope == "pairs"]
    if pair_measures:
        score_pairs(pair_measures, pairs, settings.within_lungs, rows, progress)
        columns = {"ssim": "SSIM", "ms_ssim": "MS-SSIM", "ms_ssim_scales": "MS-SSIM scales"}
        present = {key: title for key, title in columns.items() if any(key in row for row in rows.values())}
        others = {key: key for row in rows.values() for key in row
                  if key not in {*columns, "input", "class", "output", "score"}}
        where = "inside the lung masks" if settings.within_lungs else "whole image"
        tables.append(class_means_table("6.3", f"Table 6.3: input against counterfactual ({where})",
                                        {**present, **others}, pairs, rows, classes))
    map_measures = [m for m in measures if m.scope == "maps"]
    if map_measures:
        score_maps(map_measures, pairs, rows, progress, settings.map)
        columns = {name: name for m in map_measures for name in catalogue.get("metric", m.name).columns}
        tables.append(class_means_table("localisation", "Localisation of the maps against ground-truth lesions",
                                        columns, pairs, rows, classes))
        tables.append(null_test_table(pairs, rows, classes, healthy))
    image_level = None
    if healthy is not None and induced is None and (map_measures or any(p.image.score is not None for p in pairs)):
        from dva.evaluate.image_level import image_level_table

        methods = sorted({str(run.header["score_method"]) for run in runs if run.header.get("score_method")})
        by_class = {label: [rows[p.image.folder] for p in pairs if p.sample.label == label] for label in classes}
        table, image_level = image_level_table({k: v for k, v in by_class.items() if v}, healthy,
                                               ", ".join(methods) or None)
        if table.rows or table.notes:
            tables.append(table)
    summary = {
        "dataset": None if dataset is None else {"root": str(dataset.root), "layout": dataset.layout,
                                                 "classes": dataset.classes()},
        "runs": [{"folder": str(run.folder), "prompt": run.header.get("prompt"), "recipe": run.header.get("recipe"),
                  "completed": len(run.images), "failed": run.failed} for run in runs],
        "healthy_class": healthy, "induced": induced, "mode": "induction" if induced else "counterfactual",
        "metrics": [m.name for m in measures], "metric_options": settings.metric_options,
        "within_lungs": settings.within_lungs, "evaluated_images": len(pairs),
        **({} if settings.map == "attribution" else {"map": settings.map}),
        **({} if image_level is None else {"image_level": image_level}),
    }
    return Evaluation(tables, list(rows.values()), notes, summary)


def write_evaluation(out: str | Path, evaluation: Evaluation) -> list[Path]:
    """tables.md, tables.csv, per_image.csv and evaluation.json (with versions), each written atomically."""
    import json

    from dva.core.io import atomic_write_text
    from dva.core.manifest import versions
    from dva.evaluate.tables import rows_to_csv, to_csv, to_markdown

    out = Path(out)
    notes = "".join(f"- {note}\n" for note in evaluation.notes)
    document = {**evaluation.summary, "versions": versions(), "notes": evaluation.notes,
                "tables": [table.as_dict() for table in evaluation.tables]}
    files = {
        "tables.md": "# dva evaluate\n\n" + (notes + "\n" if notes else "") + to_markdown(evaluation.tables),
        "tables.csv": to_csv(evaluation.tables),
        "per_image.csv": rows_to_csv(evaluation.per_image),
        "evaluation.json": json.dumps(document, indent=1, default=str, allow_nan=False) + "\n",
    }
    for name, text in files.items():
        atomic_write_text(out / name, text)
    return [out / name for name in files]
